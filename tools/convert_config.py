"""Convert an original-project config (OpenGVLab/perception_test_iccv2023) to this toolkit's schema.

    python tools/convert_config.py OLD.yaml [-o NEW.yaml] [--overwrite] [--opt KEY=VALUE ...]

Writes the fully resolved config (every key, as ``load_config`` returns it) with the mapping notes
as comments at the top; without ``-o`` it goes to stdout. ``train.py``/``eval.py`` also read
original configs directly; the converted file shows (and lets you edit) what they run.
An existing output file is replaced only with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.config import original as compat  # noqa: E402
from libs.config.loader import (add_config_args, config_to_yaml, read_yaml_file,  # noqa: E402
                                resolve_config)
from libs.common.errors import UserError, run_cli  # noqa: E402
from libs.common.io import atomic_write_text  # noqa: E402

logger = logging.getLogger("convert_config")


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="original-layout YAML config (e.g. perception_tsl_multi_train.yaml)")
    p.add_argument("-o", "--output", help="write the converted YAML here (default: stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    add_config_args(p)
    return p.parse_args(argv)


def read_original(path: str) -> dict:
    """Parse ``path`` as YAML (duplicate keys refused) and check it is in the original layout."""
    raw = read_yaml_file(path)
    if not compat.is_original_config(raw):
        raise UserError(f"not an original-project config ({path}): expected the original layout "
                        f"(dataset_name, dataset.json_file, ...); configs in this toolkit's layout "
                        f"need no conversion")
    return raw


def convert_text(path: str, opts: List[str] = ()) -> str:
    """The converted, fully resolved config of ``path`` as YAML text with the notes as comments."""
    raw, notes = compat.convert_original_config(read_original(path), path)
    cfg = resolve_config(raw, path, opts)
    head = [f"# Converted from {path} (original perception_test_iccv2023 layout) by "
            f"tools/convert_config.py.", "# Mapping notes:"]
    head += [f"#  - {n}" for n in notes]
    return "\n".join(head) + "\n" + config_to_yaml(cfg)


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = _parse(argv)
    if args.output and os.path.exists(args.output) and not args.overwrite:
        raise UserError(f"output file already exists ({args.output}): pass --overwrite to replace it")
    text = convert_text(args.config, args.opt)
    if not args.output:
        sys.stdout.write(text)
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    atomic_write_text(args.output, text, what="config")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
