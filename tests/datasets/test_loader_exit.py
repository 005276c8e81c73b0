"""A process that still holds a loader with persistent workers exits (libs/datasets/loader.py).

The workers ignore SIGTERM (a scheduler's SIGTERM goes to the whole process group; the main
process decides when to stop), so ``multiprocessing``'s exit handler, which stops daemonic
children with SIGTERM and waits for them, would wait forever without the loader's own exit
handler. Run in a subprocess: a hang is a timeout here, not a stuck test suite.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys
    from datagen import tiny_config_dict, write_tiny_dataset
    from libs.config.loader import resolve_config
    from libs.datasets import PerceptionDataset, make_loader
    data = write_tiny_dataset(sys.argv[1])
    cfg = resolve_config(tiny_config_dict(data), "test")
    dataset = PerceptionDataset.from_config(cfg, ["train"], is_training=True)
    loader = make_loader(dataset, batch_size=2, num_workers=2, is_training=True, seed=0,
                         max_seq_len=cfg.dataset.max_seq_len, max_div_factor=1)
    batches = iter(loader)
    next(batches)
    KEPT = (loader, batches)          # still alive when the interpreter exits
    print("done", flush=True)
""")


def test_exit_with_live_persistent_workers(tmp_path):
    script = tmp_path / "hold_loader.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "data")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done" in proc.stdout
    assert "Exception ignored" not in proc.stderr, proc.stderr[-2000:]
