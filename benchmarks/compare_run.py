"""Running the measurement workers of ``benchmarks/compare_reference.py``: installing the reference
once, starting a worker in a fresh process, and sampling its memory.

The reference is PyPI ``actionformer==1.5.0`` (a fork of the original ActionFormer with the same
algorithm and its C++ NMS). It is installed under ``benchmarks/.ref/site`` (never into the
project's ``.venv``; git ignores ``benchmarks/.ref/``): ``pip download --no-deps`` of its sdist,
then ``pip install --no-deps --target``, which builds its C++ NMS (``nms_1d_cpu``) against the
project's torch. Both steps run without build isolation, so pip never fetches the torch that the
sdist's build requirements name. Its metric needs pandas and joblib, which go to the same folder
(pinned, ``--no-deps``). The reference then runs as ``.venv/bin/python`` with
``PYTHONPATH=benchmarks/.ref/site``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
REF = HERE / ".ref"
SITE = REF / "site"
REFERENCE = "actionformer==1.5.0"
REF_METRIC_DEPS = ("pandas==2.3.3", "joblib==1.5.2", "python-dateutil==2.9.0.post0", "six==1.17.0",
                   "pytz==2025.2", "tzdata==2025.2")
CHECK = ("import actionformer, pandas, joblib; from actionformer.utils.nms import HAS_CPP_NMS; "
         "assert actionformer.__version__ == '1.5.0' and HAS_CPP_NMS, 'C++ NMS not built'")


def ref_env(threads: int, ref: bool) -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    if ref:
        env["PYTHONPATH"] = str(SITE)
    return env


def ensure_reference(log=print) -> None:
    """Install the reference under ``benchmarks/.ref/site`` unless it imports already."""
    probe = [sys.executable, "-c", CHECK]
    if SITE.exists() and subprocess.run(probe, env=ref_env(1, True), cwd="/",
                                        capture_output=True).returncode == 0:
        return
    log(f"installing the reference ({REFERENCE}, C++ NMS built against this torch) into {SITE} ...")
    REF.mkdir(parents=True, exist_ok=True)
    dl = REF / "dl"
    pip = [sys.executable, "-m", "pip"]
    # --no-build-isolation: the sdist's build requirements name torch; use the project's own
    steps = [pip + ["download", REFERENCE, "--no-deps", "--no-build-isolation", "-d", str(dl)]]
    with open(REF / "install.log", "w") as out:
        for cmd in steps:
            subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT)
        sdist = sorted(dl.glob("actionformer-1.5.0*"))
        if not sdist:
            raise SystemExit(f"no {REFERENCE} archive in {dl} (see {REF / 'install.log'})")
        for cmd in (pip + ["install", "--no-deps", "--no-build-isolation", "--upgrade", "--target",
                           str(SITE), str(sdist[-1])],
                    pip + ["install", "--no-deps", "--upgrade", "--target", str(SITE),
                           *REF_METRIC_DEPS]):
            subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT,
                           env=dict(os.environ, MAX_JOBS="2"))
    check = subprocess.run(probe, env=ref_env(1, True), cwd="/", capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"the reference does not import after installing it: "
                         f"{check.stderr.strip().splitlines()[-1:]}")
    log("  installed")


# ------------------------------------------------------------------------------------ memory
def _tree(pid: int) -> List[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _rss_pss(pid: int) -> tuple:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


class MemorySampler(threading.Thread):
    """Every ``period`` s: RSS and PSS summed over a process and its children (loader workers);
    keeps the peaks (``peak_rss_tree``, ``peak_pss_tree``)."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peak_rss_tree = self.peak_pss_tree = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            rss = pss = 0
            for p in _tree(self.pid):
                r, s = _rss_pss(p)
                rss, pss = rss + r, pss + s
            self.peak_rss_tree = max(self.peak_rss_tree, rss)
            self.peak_pss_tree = max(self.peak_pss_tree, pss)
            self.done.wait(self.period)


# ------------------------------------------------------------------------------------ workers
def run_worker(side: str, job: Dict[str, Any], work: Path, *, threads: int,
               timeout: Optional[float] = None, memory: bool = True) -> Dict[str, Any]:
    """Run one job in a fresh ``compare_{ours,ref}_worker.py`` process; returns its result plus
    ``launch_to_first_batch`` (train jobs), ``peak_rss_tree``/``peak_pss_tree`` (sampled every
    0.5 s unless ``memory`` is false: reading ``smaps_rollup`` of GB-sized processes costs CPU)
    and ``wall``."""
    work.mkdir(parents=True, exist_ok=True)
    tag = f"{side}_{job['kind']}_{job.get('name', 'x')}"
    job = dict(job, threads=threads, result=str(work / f"{tag}.result.json"))
    job_file = work / f"{tag}.job.json"
    job_file.write_text(json.dumps(job))
    script = HERE / ("compare_ref_worker.py" if side == "ref" else "compare_ours_worker.py")
    log_path = work / f"{tag}.log"
    Path(job["result"]).unlink(missing_ok=True)
    with open(log_path, "w") as log:
        launch = time.time()
        proc = subprocess.Popen([sys.executable, str(script), str(job_file)], cwd=str(work),
                                env=ref_env(threads, side == "ref"), stdout=log,
                                stderr=subprocess.STDOUT)
        sampler = MemorySampler(proc.pid)
        if memory:
            sampler.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        sampler.done.set()
        if memory:
            sampler.join()
    wall = time.time() - launch
    if rc != 0 or not Path(job["result"]).exists():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        raise SystemExit(f"{side} {job['kind']} worker failed (exit {rc}); {log_path}:\n  "
                         + "\n  ".join(tail))
    res = json.loads(Path(job["result"]).read_text())
    res.update(peak_rss_tree=sampler.peak_rss_tree, peak_pss_tree=sampler.peak_pss_tree, wall=wall,
               log=str(log_path))
    if res.get("first_batch_time"):
        res["launch_to_first_batch"] = res["first_batch_time"] - launch
    return res
