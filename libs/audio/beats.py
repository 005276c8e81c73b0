"""The BEATs audio encoder (inference only) and strict loading of the official checkpoint format.

Module and parameter names follow the official ``microsoft/unilm`` ``beats/`` code, so an official
``{'cfg': ..., 'model': state_dict}`` file loads with ``load_state_dict(strict=True)``. The forward
pass (docs/feature_extraction.md, "Model"): normalised fbank ``(B, F, 128)`` -> 16x16 patches ->
tokens flattened time-major (token ``8 t + f``) -> LayerNorm -> projection -> weight-normed
positional conv -> LayerNorm -> post-LN DeepNorm layers with gated relative position bias ->
``(B, 8 * (F // 16), 768)``.

Padding: :meth:`BEATs.forward` takes the valid number of time patches per row. Padded tokens are
zeroed before the positional conv (which then sees exactly the zeros of an unpadded run) and are
masked as attention keys, so every valid token equals the unpadded result up to float round-off.
"""
from __future__ import annotations

import logging
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from libs.common.errors import UserError, format_problems

from .beats_config import BEATsConfig, config_from_dict
from .fbank import NUM_MEL_BINS, beats_fbank

logger = logging.getLogger(__name__)

REL_BIAS_KEY = "encoder.layers.{}.self_attn.relative_attention_bias.weight"


def relative_position_bucket(rel: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional T5-style bucket of relative positions ``rel = key - query`` (tokens), int64.

    Keys after the query use buckets ``num_buckets/2 ..``; ``|rel| < num_buckets/4`` are exact,
    larger distances are log-spaced up to ``max_distance`` and clamped to the last bucket.
    """
    half = num_buckets // 2
    exact = half // 2
    base = (rel > 0).to(torch.long) * half
    n = rel.abs()
    scaled = torch.log(n.clamp(min=1).float() / exact) / math.log(max_distance / exact) * (half - exact)
    large = (exact + scaled.to(torch.long)).clamp(max=half - 1)
    return base + torch.where(n < exact, n, large)


class WeightNormConv1d(nn.Module):
    """Conv1d with the legacy ``weight_norm(dim=2)`` parametrisation (keys ``weight_g``, ``weight_v``):
    ``W[:, :, k] = g[k] * V[:, :, k] / ||V[:, :, k]||`` (one norm per kernel tap)."""

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        std = math.sqrt(4.0 / (kernel * channels))
        v = torch.randn(channels, channels // groups, kernel) * std
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))          # (1, 1, K)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T) -> (B, C, T + 1 - K % 2)`` (zero padding K // 2 on both sides)."""
        weight = torch._weight_norm(self.weight_v, self.weight_g, 2)
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drop the last time step after an even-kernel conv so the length stays T."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :-self.remove] if self.remove else x


class MultiheadAttention(nn.Module):
    """Self-attention with the (optionally gated) relative position bias of BEATs."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        dim, self.heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.head_dim = dim // self.heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.gru_rel_pos = cfg.gru_rel_pos
        if cfg.relative_position_embedding:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, self.heads)
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.heads, 1, 1))

    def forward(self, x: torch.Tensor, rel_bias: Optional[torch.Tensor],
                key_pad: Optional[torch.Tensor]) -> torch.Tensor:
        """``x (B, T, C)``, ungated ``rel_bias (H, T, T)`` or None, ``key_pad (B, T)`` bool (True =
        padded key) or None -> ``(B, T, C)``."""
        b, t, c = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)   # (B, H, T, d)
        k = self.k_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        bias: Optional[torch.Tensor] = None
        if rel_bias is not None:
            if self.gru_rel_pos:
                g = torch.sigmoid(self.grep_linear(q).view(b, self.heads, t, 2, 4).sum(-1))  # (B, H, T, 2)
                gate = g[..., :1] * (g[..., 1:] * self.grep_a - 1.0) + 2.0          # (B, H, T, 1)
                bias = gate * rel_bias                                               # (B, H, T, T)
            else:
                bias = rel_bias.unsqueeze(0).expand(b, -1, -1, -1)
        if key_pad is not None:
            neg = torch.zeros(b, 1, 1, t, dtype=x.dtype, device=x.device)
            neg = neg.masked_fill(key_pad[:, None, None, :], float("-inf"))          # (B, 1, 1, T)
            bias = neg if bias is None else bias + neg
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)              # (B, H, T, d)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c))


class EncoderLayer(nn.Module):
    """Post-LN transformer layer; both residuals are scaled by the DeepNorm alpha."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.alpha = cfg.deep_norm_alpha
        self.self_attn = MultiheadAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, rel_bias: Optional[torch.Tensor],
                key_pad: Optional[torch.Tensor]) -> torch.Tensor:
        """``(B, T, C) -> (B, T, C)``."""
        x = self.self_attn_layer_norm(self.alpha * x + self.self_attn(x, rel_bias, key_pad))
        h = self.fc2(F.gelu(self.fc1(x)))
        return self.final_layer_norm(self.alpha * x + h)


class Encoder(nn.Module):
    """Positional conv, input LayerNorm and the layers (names as in the official ``encoder``)."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.cfg = cfg
        self.pos_conv = nn.Sequential(WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups),
                                      SamePad(cfg.conv_pos), nn.GELU())
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(dim)
        if cfg.relative_position_embedding:
            # one table shared by every layer, as in the official code (the state dict lists it per layer)
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = self.layers[0].self_attn.relative_attention_bias

    def relative_bias(self, t: int, device: torch.device) -> torch.Tensor:
        """Ungated bias ``R[h, i, j] = E[bucket(j - i), h]``: ``(H, T, T)`` for ``t`` tokens."""
        pos = torch.arange(t, device=device)
        bucket = relative_position_bucket(pos[None, :] - pos[:, None], self.cfg.num_buckets,
                                          self.cfg.max_distance)                 # (T, T)
        table = self.layers[0].self_attn.relative_attention_bias
        return table(bucket).permute(2, 0, 1).contiguous()                       # (H, T, T)

    def embed_positions(self, x: torch.Tensor, pad: Optional[torch.Tensor]) -> torch.Tensor:
        """``x + pos_conv(x)`` then LayerNorm: ``(B, T, C) -> (B, T, C)``; padded tokens zeroed first."""
        if pad is not None:
            x = x.masked_fill(pad[..., None], 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        return self.layer_norm(x)

    def forward(self, x: torch.Tensor, pad: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, T, C)`` encoder input, ``pad (B, T)`` bool or None -> ``(B, T, C)`` features."""
        x = self.embed_positions(x, pad)
        rel = self.relative_bias(x.shape[1], x.device) if self.cfg.relative_position_embedding else None
        for layer in self.layers:
            x = layer(x, rel, pad)
        return x


class BEATs(nn.Module):
    """BEATs feature extractor. ``BEATs(cfg)`` has random weights; use :func:`load_beats`."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=p, stride=p, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
                                  if cfg.embed_dim != cfg.encoder_embed_dim else None)
        self.encoder = Encoder(cfg)
        if cfg.finetuned_model:  # loaded for strictness, never used: we return encoder features
            self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)

    @property
    def out_dim(self) -> int:
        """Feature channels (768 for the release)."""
        return self.cfg.encoder_embed_dim

    @property
    def frames_per_patch(self) -> int:
        """Fbank frames (10 ms each) per time step (16 = 160 ms)."""
        return self.cfg.input_patch_size

    @property
    def tokens_per_patch(self) -> int:
        """Output rows per time step: the frequency patches (8)."""
        return self.cfg.freq_patches

    def patch_embed(self, fbank: torch.Tensor) -> torch.Tensor:
        """Normalised fbank ``(B, F, 128) -> (B, embed_dim, F // p, 128 // p)`` (raw conv output)."""
        assert fbank.shape[-1] == NUM_MEL_BINS, fbank.shape
        return self.patch_embedding(fbank.unsqueeze(1))

    def embed(self, fbank: torch.Tensor) -> torch.Tensor:
        """``(B, F, 128) -> (B, T, encoder_embed_dim)`` encoder input, tokens time-major."""
        x = self.patch_embed(fbank)                                              # (B, E, T', Fp)
        x = self.layer_norm(x.flatten(2).transpose(1, 2))                        # (B, T' * Fp, E)
        return self.post_extract_proj(x) if self.post_extract_proj is not None else x

    def forward(self, fbank: torch.Tensor, num_patches: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Features of a normalised fbank batch.

        fbank: ``(B, F, 128)`` (BEATs-normalised log-mel, see ``fbank.beats_fbank``).
        num_patches: ``(B,)`` valid time patches per row (the rest is padding) or None (all valid).
        Returns ``(B, (128 // p) * (F // p), C)`` float; rows of padded time steps are zeros.
        """
        x = self.embed(fbank)
        pad = None
        if num_patches is not None:
            steps = torch.arange(fbank.shape[1] // self.frames_per_patch, device=fbank.device)
            pad = (steps[None, :] >= num_patches.to(fbank.device)[:, None])      # (B, T')
            pad = pad.repeat_interleave(self.tokens_per_patch, dim=1)            # (B, T)
            if not bool(pad.any()):
                pad = None
        x = self.encoder(x, pad)
        return x if pad is None else x.masked_fill(pad[..., None], 0.0)

    @torch.no_grad()
    def extract(self, audio: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` float audio in [-1, 1] at 16 kHz (N >= 2800) -> ``(B, T, C)`` features."""
        return self(beats_fbank(audio))


# -- checkpoints ---------------------------------------------------------------------------------
def _state_problems(model: BEATs, state: Mapping[str, Any]) -> List[str]:
    expected = model.state_dict()
    problems = [f"missing key {k}" for k in expected if k not in state]
    problems += [f"unexpected key {k}" for k in state if k not in expected]
    for key, ref in expected.items():
        val = state.get(key)
        if val is None:
            continue
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            problems.append(f"{key} is {type(val).__name__}, expected a float tensor")
        elif tuple(val.shape) != tuple(ref.shape):
            problems.append(f"{key} has shape {tuple(val.shape)}, expected {tuple(ref.shape)}")
    if not problems and model.cfg.relative_position_embedding:
        first = state[REL_BIAS_KEY.format(0)]
        for i in range(1, model.cfg.encoder_layers):
            if not torch.equal(state[REL_BIAS_KEY.format(i)], first):
                problems.append(f"{REL_BIAS_KEY.format(i)} differs from layer 0's (BEATs shares one table)")
    return problems


def beats_from_checkpoint(ckpt: Any, where: str) -> BEATs:
    """Build the model from an official checkpoint object ``{'cfg': dict, 'model': state_dict}``
    (other top-level keys are ignored), loading every weight strictly; eval mode, float32, CPU."""
    if not (isinstance(ckpt, Mapping) and isinstance(ckpt.get("cfg"), Mapping)
            and isinstance(ckpt.get("model"), Mapping)):
        found = f"keys {sorted(map(str, ckpt))[:6]}" if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise UserError(f"not a BEATs checkpoint ({where}): expected a dict with 'cfg' (dict) and "
                        f"'model' (state dict) like BEATs_iter3_plus_AS2M.pt, found {found}")
    cfg = config_from_dict(ckpt["cfg"], where)
    with torch.device("meta"):          # no random init: every tensor comes from the checkpoint
        model = BEATs(cfg)
    problems = _state_problems(model, ckpt["model"])
    if problems:
        raise UserError(format_problems(problems, f"BEATs weights do not match their cfg ({where})", 8))
    state = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in ckpt["model"].items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _load_error(err: BaseException) -> str:
    """One short line for a ``torch.load`` failure (its weights_only messages are paragraphs)."""
    text = " ".join(str(err).split())
    found = re.search(r"WeightsUnpickler error: (.*?)(?:\. |\.?$| Please| Check)", text)
    if found:
        return f"weights_only=True refuses it ({found.group(1).strip()})"
    return f"{type(err).__name__}: {text[:160]}"


def load_beats(path: str | os.PathLike, device: str | torch.device = "cpu") -> BEATs:
    """Load an official BEATs checkpoint file (``torch.load(weights_only=True)``) onto ``device``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found ({path}): expected the BEATs release file, e.g. "
                        "BEATs_iter3_plus_AS2M.pt (see docs/feature_extraction.md)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused, truncated zip, not a torch file
        raise UserError(f"cannot load checkpoint ({path}): {_load_error(err)}; expected a torch.save'd "
                        "{'cfg': ..., 'model': ...} dict of tensors and plain values") from None
    model = beats_from_checkpoint(ckpt, path)
    logger.info("loaded BEATs from %s: %d layers, width %d, %.1fM parameters", path,
                model.cfg.encoder_layers, model.out_dim,
                sum(p.numel() for p in model.parameters()) / 1e6)
    return model.to(device)


def random_checkpoint(cfg: Mapping[str, Any], seed: int = 0) -> Dict[str, Any]:
    """A checkpoint in the official layout with random weights (tests and benchmarks):
    ``{'cfg': dict(cfg), 'model': state_dict}``, every LayerNorm/bias perturbed off its init."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = BEATs(config_from_dict(cfg, "random checkpoint"))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or "layer_norm" in name or name.endswith("grep_a"):
                    p.add_(0.05 * torch.randn_like(p))
        state = {k: v.clone() for k, v in model.state_dict().items()}
    finally:
        torch.random.set_rng_state(gen_state)
    return {"cfg": dict(cfg), "model": state}

