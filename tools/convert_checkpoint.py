"""Convert an original ActionFormer / Perception Test checkpoint into this project's format.

    python tools/convert_checkpoint.py ORIG.pth.tar OUT.pth.tar --config CFG [--opt k=v ...]
        [--overwrite] [--trusted]

The model is built from CFG (our schema or an original-project config) and both weight sets of
ORIG (``state_dict`` and ``state_dict_ema``, DataParallel ``module.`` keys; docs/numerics.md
s.4.11) are mapped onto it strictly: every key used, every parameter filled, every shape equal.
OUT holds ``epoch``, ``state_dict``, ``state_dict_ema``, ``config`` and ``label_map`` and is
loaded by ``eval.py`` (it has no optimizer state, so ``train.py --resume`` cannot continue it).
OUT is written atomically and an existing OUT is kept unless ``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.config.loader import add_config_args, load_config  # noqa: E402
from libs.common.errors import UserError, run_cli  # noqa: E402
from libs.modeling import Detector  # noqa: E402
from libs.common.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402
from libs.interop.original_checkpoint import (convert_original_checkpoint,  # noqa: E402
                                    is_original_checkpoint)

log = logging.getLogger("convert_checkpoint")


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Convert an original checkpoint to this project's format.")
    p.add_argument("original", help="original checkpoint (*.pth.tar with module.* state dicts)")
    p.add_argument("out", help="converted checkpoint to write (*.pth.tar)")
    p.add_argument("--config", required=True, help="YAML config describing the checkpoint's model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--trusted", action="store_true",
                   help="ORIG is trusted: allow pickled Python objects besides tensors (only if the "
                        "safe load refuses the file)")
    add_config_args(p)
    return p.parse_args(argv)


def _strict_load(model: torch.nn.Module, state_dict: dict, where: str) -> None:
    """Final check through torch itself (strict=True); a failure here is a bug of the converter."""
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, (where, result)


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")
    args = _parse(argv)
    src, out = Path(args.original), Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"output checkpoint exists ({out}): pass --overwrite to replace it")
    if out.exists() and out.is_dir():
        raise UserError(f"output path is a folder ({out}): expected a file name such as "
                        "converted.pth.tar")
    if not out.parent.is_dir():
        raise UserError(f"output folder does not exist ({out.parent}): create it first")
    if src.resolve() == out.resolve():
        raise UserError(f"output is the input ({out}): choose another output file")
    cfg = load_config(args.config, args.opt or [])
    try:
        ckpt = load_checkpoint(src, weights_only=not args.trusted)
    except UserError as err:
        if args.trusted or "arbitrary Python objects" not in str(err):
            raise
        raise UserError(f"{err}; pass --trusted to load it anyway if you trust the file") from None
    if not is_original_checkpoint(ckpt):
        if "config" in ckpt or "ema" in ckpt:
            raise UserError(f"checkpoint is already in this project's format ({src}): eval.py "
                            "loads it directly")
        raise UserError(f"not an original checkpoint ({src}): expected a dict with a 'state_dict' "
                        f"whose keys all start with 'module.'; found keys "
                        f"{sorted(map(str, ckpt))[:10]}")
    model = Detector.from_config(cfg)
    n_model = sum(p.numel() for p in model.state_dict().values())
    log.info("model from %s: %d state-dict keys, %s parameters", args.config,
             len(model.state_dict()), f"{n_model:,}")
    converted = convert_original_checkpoint(ckpt, model, cfg, where=str(src))
    for key in ("state_dict", "state_dict_ema"):
        _strict_load(model, converted[key], f"{src}, {key}")
    n_keys = len(converted["state_dict"])
    n_params = sum(int(t.numel()) for t in converted["state_dict"].values())
    save_checkpoint(converted, out)
    log.info("wrote %s: epoch %d, %d keys, %s parameters in state_dict and state_dict_ema",
             out, converted["epoch"], n_keys, f"{n_params:,}")
    return 0


if __name__ == "__main__":
    run_cli(main)
