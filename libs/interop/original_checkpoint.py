"""Load the original project's released checkpoints (docs/numerics.md s.4.11, s.10.1).

The original ``*.pth.tar`` files hold ``{'epoch', 'state_dict', 'state_dict_ema', 'optimizer',
'scheduler'}``; both state dicts come from an ``nn.DataParallel`` wrapper, so every key starts with
``module.``. Our module names equal the original names without that prefix, so the conversion
strips the prefix and checks, strictly, that every original
key is used, every model parameter is filled and every shape agrees. Any mismatch is one
:class:`UserError` naming the keys and shapes.

- :func:`is_original_checkpoint`: the original layout (``module.`` keys, none of our keys).
- :func:`convert_state_dict`: original state dict -> ours, checked against a model (which may live
  on the ``meta`` device: only names and shapes are read).
- :func:`convert_original_checkpoint`: a whole original checkpoint -> our checkpoint format
  (``state_dict``, ``state_dict_ema``, ``epoch``, ``config``, ``label_map``; no optimizer state).
- :func:`export_original_state_dict`: ours -> the original layout (round trip).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from libs.common.errors import UserError
from libs.config.schema import Config

log = logging.getLogger(__name__)

PREFIX = "module."   # our module names are the original's without it
# keys of our checkpoints that the original never writes
_OUR_KEYS = ("config", "ema", "global_step", "loss_normalizer", "rng_state", "label_map")
_SHOW = 5  # keys listed per kind of problem

# key prefix (ours) -> the config settings that decide its shape, for the error hint
_HINTS: Tuple[Tuple[str, str], ...] = (
    ("cls_head.cls_head.", "dataset.num_classes"),
    ("backbone.proj.", "dataset.modalities (dims, rows_per_step) and model.proj_dims"),
    ("backbone.embd.0.", "dataset.modalities dims (input channels) and model.embd_dim"),
    ("reg_head.scale.", "model.backbone_arch (number of pyramid levels)"),
)


def is_original_checkpoint(ckpt: Any) -> bool:
    """True for the original layout: a non-empty ``state_dict`` whose keys all start with
    ``module.`` and none of the keys only our checkpoints have (``config``, ``ema``, ...).
    """
    if not isinstance(ckpt, Mapping) or any(k in ckpt for k in _OUR_KEYS):
        return False
    sd = ckpt.get("state_dict")
    if not isinstance(sd, Mapping) or not sd:
        return False
    return all(isinstance(k, str) and k.startswith(PREFIX) for k in sd)


def _shape(t: Any) -> str:
    return "(" + ", ".join(str(int(s)) for s in t.shape) + ")"


def _listing(keys: List[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def _hint(keys: List[str]) -> str:
    found = []
    for key in keys:
        for prefix, setting in _HINTS:
            if key.startswith(prefix) and setting not in found:
                found.append(setting)
    if not found:
        found.append("model settings (backbone, embd_dim, n_head, backbone_arch, head_num_layers)")
    return "; check " + " / ".join(found)


def _strip(original_sd: Mapping[str, Any], where: str) -> "OrderedDict[str, Tuple[str, Any]]":
    """``{our name: (original name, tensor)}``; every key must carry the prefix, or none may."""
    keys = list(original_sd)
    bad = [repr(k) for k in keys if not isinstance(k, str)]
    if bad:
        raise UserError(f"state dict has non-string keys ({where}): {_listing(bad)}; expected "
                        "parameter names")
    prefixed = [k for k in keys if k.startswith(PREFIX)]
    if prefixed and len(prefixed) != len(keys):
        plain = [k for k in keys if not k.startswith(PREFIX)]
        raise UserError(f"state dict mixes keys with and without '{PREFIX}' ({where}): "
                        f"{len(plain)} keys lack it: {_listing(plain)}; expected every key of an "
                        f"nn.DataParallel checkpoint to start with '{PREFIX}'")
    out: "OrderedDict[str, Tuple[str, Any]]" = OrderedDict()
    not_tensor = []
    for key in keys:
        value = original_sd[key]
        if not isinstance(value, torch.Tensor):
            not_tensor.append(f"{key} ({type(value).__name__})")
            continue
        name = key[len(PREFIX):] if prefixed else key
        out[name] = (key, value)
    if not_tensor:
        raise UserError(f"state dict values are not tensors ({where}): {_listing(not_tensor)}; "
                        "expected one tensor per parameter")
    return out


def _original_name(ours: str) -> str:
    return PREFIX + ours


def convert_state_dict(original_sd: Mapping[str, Any], model: nn.Module, where: str) -> Dict[str, torch.Tensor]:
    """Map an original state dict onto ``model``'s names, strictly.

    Returns our state dict in the checkpoint's key order (tensors are not copied). Raises one
    :class:`UserError` listing the model keys the checkpoint lacks, the checkpoint keys the model
    does not have, and every shape mismatch (original name, checkpoint shape vs model shape).
    """
    if not isinstance(original_sd, Mapping):
        raise UserError(f"bad state dict ({where}): expected a mapping of parameter names to "
                        f"tensors, found {type(original_sd).__name__}")
    if not original_sd:
        raise UserError(f"empty state dict ({where}): expected the model's parameters")
    stripped = _strip(original_sd, where)
    expected = model.state_dict()
    missing = [_original_name(k) for k in expected if k not in stripped]
    unexpected = [orig for ours, (orig, _) in stripped.items() if ours not in expected]
    mismatched = [(ours, orig, t) for ours, (orig, t) in stripped.items()
                  if ours in expected and tuple(t.shape) != tuple(expected[ours].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (in the model, not in the checkpoint): "
                         f"{_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (in the checkpoint, not in the model): "
                         f"{_listing(unexpected)}")
        if mismatched:
            shown = [f"{orig} checkpoint {_shape(t)} vs model {_shape(expected[ours])}"
                     for ours, orig, t in mismatched]
            parts.append(f"{len(mismatched)} shape mismatches: {_listing(shown)}")
        ours_bad = [_strip_name(k) for k in missing + unexpected] + [m[0] for m in mismatched]
        raise UserError(f"checkpoint does not match the config's model ({where}): "
                        + "; ".join(parts) + _hint(ours_bad))
    return OrderedDict((ours, t) for ours, (_, t) in stripped.items())


def _strip_name(key: str) -> str:
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


def export_original_state_dict(our_sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our state dict -> the original layout (``module.`` + original names), same order."""
    return OrderedDict((_original_name(k), v) for k, v in our_sd.items())


def convert_original_checkpoint(ckpt: Mapping[str, Any], model: nn.Module, cfg: Optional[Config],
                                where: str) -> Dict[str, Any]:
    """An original checkpoint -> our checkpoint format, checked strictly against ``model``.

    Result keys: ``state_dict``, ``state_dict_ema`` (the original's EMA weights, or its raw weights
    with a logged note if it has none), ``epoch``, ``config`` (a copy of ``cfg``), ``label_map``
    (``{}``: the original stores no class names) and ``converted_from`` (``where``). Optimizer,
    scheduler and RNG states are not carried over, so the result evaluates but does not resume.
    """
    if not isinstance(ckpt, Mapping):
        raise UserError(f"bad checkpoint ({where}): expected a dict, found {type(ckpt).__name__}")
    if "state_dict" not in ckpt:
        raise UserError(f"checkpoint has no 'state_dict' ({where}): expected an original "
                        f"ActionFormer checkpoint (keys epoch, state_dict, state_dict_ema, ...); "
                        f"found keys {sorted(map(str, ckpt))[:10]}")
    state_dict = convert_state_dict(ckpt["state_dict"], model, f"{where}, state_dict")
    ema_sd = ckpt.get("state_dict_ema")
    if ema_sd is None:
        log.info("%s has no state_dict_ema; its raw weights serve as the EMA weights too", where)
        state_dict_ema = state_dict
    else:
        state_dict_ema = convert_state_dict(ema_sd, model, f"{where}, state_dict_ema")
    epoch = ckpt.get("epoch", 0)
    try:
        epoch = int(epoch)
    except (TypeError, ValueError):
        raise UserError(f"bad 'epoch' in checkpoint ({where}): expected an integer, found "
                        f"{epoch!r}") from None
    n_params = sum(int(t.numel()) for t in state_dict.values())
    log.info("converted original checkpoint %s (epoch %d): %d keys, %s parameters%s", where, epoch,
             len(state_dict), f"{n_params:,}", "" if ema_sd is None else ", EMA weights included")
    return {
        "epoch": epoch,
        "state_dict": state_dict,
        "state_dict_ema": state_dict_ema,
        "config": cfg.to_dict() if cfg is not None else None,
        "label_map": {},
        "converted_from": str(where),
    }
