"""BEATs configuration (the official ``cfg`` dict of a checkpoint), validated.

The official loader applies a checkpoint's ``cfg`` on top of the class defaults; a key it lacks
keeps its default and unknown keys are ignored. We do the same, but check every field's type and
value up front and report all problems in one :class:`UserError`. Fields are listed in
docs/feature_extraction.md ("Checkpoint format").
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping

from libs.common.errors import UserError, format_problems

logger = logging.getLogger(__name__)


@dataclass
class BEATsConfig:
    """Architecture settings. Defaults are the official ``BEATsConfig`` defaults (which differ from
    the released iter3+ model: always build from the checkpoint's ``cfg``)."""
    input_patch_size: int = -1            # patch side in fbank frames and mel bins (16)
    embed_dim: int = 512                  # patch-embedding channels
    conv_bias: bool = False               # patch conv has a bias
    encoder_layers: int = 12
    encoder_embed_dim: int = 768          # encoder width = output feature dim
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"           # FFN activation (only the exact erf GELU is supported)
    layer_wise_gradient_decay_ratio: float = 1.0   # training only
    layer_norm_first: bool = False        # pre-LN layers (not used by any BEATs release)
    deep_norm: bool = False               # residual scale alpha = (2 * layers) ** 0.25
    dropout: float = 0.1                  # training only (all dropouts are identity here)
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0        # training only: every layer runs at inference
    dropout_input: float = 0.0
    conv_pos: int = 128                   # positional conv kernel (tokens)
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320                # relative-position buckets (both directions together)
    max_distance: int = 1280              # tokens; the iter3+ release stores 800
    gru_rel_pos: bool = False             # gate the relative bias per query
    finetuned_model: bool = False         # checkpoint carries the AudioSet predictor (unused here)
    predictor_dropout: float = 0.1
    predictor_class: int = 527

    @property
    def deep_norm_alpha(self) -> float:
        """DeepNorm residual scale: ``(2 * encoder_layers) ** 0.25``, or 1 without deep_norm."""
        return math.pow(2 * self.encoder_layers, 0.25) if self.deep_norm else 1.0

    @property
    def freq_patches(self) -> int:
        """Frequency tokens per time step: ``128 // input_patch_size`` (8 for the release)."""
        return 128 // self.input_patch_size

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# The released BEATs_iter3_plus_AS2M.pt cfg (architecture and inference-relevant fields).
ITER3_PLUS_AS2M: Dict[str, Any] = dict(
    input_patch_size=16, embed_dim=512, conv_bias=False, encoder_layers=12, encoder_embed_dim=768,
    encoder_ffn_embed_dim=3072, encoder_attention_heads=12, activation_fn="gelu",
    layer_wise_gradient_decay_ratio=0.6, layer_norm_first=False, deep_norm=True, dropout=0.0,
    attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.05, dropout_input=0.0,
    conv_pos=128, conv_pos_groups=16, relative_position_embedding=True, num_buckets=320,
    max_distance=800, gru_rel_pos=True, finetuned_model=False, predictor_dropout=0.1,
    predictor_class=527)


def _type_ok(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def config_from_dict(raw: Mapping[str, Any], where: str) -> BEATsConfig:
    """Validate ``raw`` (a checkpoint's ``cfg``) and return the config; ``where`` names the file.

    Missing keys keep the official defaults, unknown keys are ignored (as the official loader
    does); wrong types and unsupported or inconsistent values raise one UserError listing them all.
    """
    fields = {f.name: f for f in dataclasses.fields(BEATsConfig)}
    kinds = {"int": int, "bool": bool, "float": float, "str": str}
    values: Dict[str, Any] = {}
    problems: List[str] = []
    for key, value in raw.items():
        if key not in fields:
            logger.debug("%s: ignoring cfg key %r", where, key)
            continue
        kind = kinds[str(fields[key].type)]
        if not _type_ok(value, kind):
            problems.append(f"cfg.{key} is {value!r}, expected {kind.__name__}")
            continue
        values[key] = float(value) if kind is float else value
    if problems:
        raise UserError(format_problems(problems, f"bad BEATs cfg ({where})"))
    cfg = BEATsConfig(**values)
    problems.extend(_value_problems(cfg))
    if problems:
        raise UserError(format_problems(problems, f"unsupported BEATs cfg ({where})"))
    return cfg


def _value_problems(cfg: BEATsConfig) -> List[str]:
    out: List[str] = []
    if not 1 <= cfg.input_patch_size <= 128:
        out.append(f"cfg.input_patch_size is {cfg.input_patch_size}, expected 1..128 (16 for BEATs)")
    for key in ("embed_dim", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
                "encoder_attention_heads", "conv_pos", "conv_pos_groups"):
        if getattr(cfg, key) < 1:
            out.append(f"cfg.{key} is {getattr(cfg, key)}, expected >= 1")
    if out:
        return out
    if cfg.encoder_embed_dim % cfg.encoder_attention_heads:
        out.append(f"cfg.encoder_embed_dim {cfg.encoder_embed_dim} is not a multiple of "
                   f"encoder_attention_heads {cfg.encoder_attention_heads}")
    if cfg.encoder_embed_dim % cfg.conv_pos_groups:
        out.append(f"cfg.encoder_embed_dim {cfg.encoder_embed_dim} is not a multiple of "
                   f"conv_pos_groups {cfg.conv_pos_groups}")
    if cfg.activation_fn != "gelu":
        out.append(f"cfg.activation_fn is {cfg.activation_fn!r}, expected 'gelu'")
    if cfg.layer_norm_first:
        out.append("cfg.layer_norm_first is True, expected False (no BEATs release uses pre-LN layers)")
    if cfg.relative_position_embedding:
        if cfg.num_buckets < 4 or cfg.num_buckets % 2:
            out.append(f"cfg.num_buckets is {cfg.num_buckets}, expected an even number >= 4")
        elif cfg.max_distance <= cfg.num_buckets // 4:
            out.append(f"cfg.max_distance is {cfg.max_distance}, expected > num_buckets / 4 "
                       f"= {cfg.num_buckets // 4}")
    if cfg.gru_rel_pos and not cfg.relative_position_embedding:
        out.append("cfg.gru_rel_pos is True without relative_position_embedding")
    return out
