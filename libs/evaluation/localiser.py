"""A trained checkpoint as a Python object that localises events in new videos (README:
"Predicting new videos").

    loc = Localiser.from_checkpoint("ckpt/run/best.pth.tar", device="cpu")
    det = loc.predict({"beats": beats_rows, "umt": umt_rows}, duration=12.4)
    for (start, end), score, name in zip(det.segments, det.scores, det.label_names): ...

The model and its input pipeline come from the config the checkpoint carries: the features of
each modality (named as in the checkpoint's ``dataset.modalities``) are assembled exactly as for
training and evaluation (``libs/datasets/perception.py: assemble_arrays``), and the detections are
those of ``libs/evaluation/predict.py: predict`` (decode, NMS, seconds clipped to the video).
``tools/predict.py`` runs the same on folders of feature files.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from libs.common.checkpoints import load_checkpoint
from libs.common.distributed import check_amp, resolve_device
from libs.common.errors import UserError
from libs.config.loader import resolve_config
from libs.config.schema import Config
from libs.config.tasks import TaskLayout, task_test_cfg
from libs.datasets.collate import collate_batch
from libs.datasets.features import nonfinite_rows
from libs.datasets.perception import assemble_arrays
from libs.evaluation.predict import predict
from libs.modeling.detector import Detector, checkpoint_config, load_weights

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor]


@dataclass
class VideoDetections:
    """Detections of one video, descending score: ``segments`` (N, 2) float32 seconds within
    ``[0, duration]``, ``scores`` (N,) float32, ``labels`` (N,) int64 class ids,
    ``label_names`` (N,) their names (the checkpoint's label map; ``str(id)`` if unnamed),
    ``tasks`` (N,) the task of each detection (a unified model: each task's detections in task
    order, ``labels`` the class ids of that task)."""
    segments: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    label_names: List[str]
    tasks: List[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Localiser:
    """A trained detector with the data settings of its training config (read-only)."""

    def __init__(self, model: Detector, cfg: Config, label_names: Mapping[int, str],
                 device: torch.device, source: str, epoch: int = 0, amp: str = "none") -> None:
        check_amp(amp, device, "Localiser amp")
        self.model = model.to(device).eval()
        self.epoch = int(epoch)
        self.amp = amp
        self.cfg = cfg
        self.label_names: Dict[int, str] = {int(k): str(v) for k, v in label_names.items()}
        self.device = device
        self.source = source

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], *, weights: str = "ema",
                        device: Optional[str] = None, amp: str = "none") -> "Localiser":
        """The model of a checkpoint written by train.py (or tools/convert_checkpoint.py).
        ``weights``: ``'ema'`` (as eval.py) or ``'raw'``; ``device``: ``'cpu'``, ``'cuda'`` or
        None (CUDA when available); ``amp``: the forward pass's autocast ('none', 'bf16',
        'fp16'), as ``eval.py --amp``."""
        ckpt = load_checkpoint(path)
        cfg = checkpoint_config(ckpt, path)
        model = Detector.from_config(cfg)
        load_weights(model, ckpt, path, weights)
        names = ckpt.get("label_map") or {}
        if not isinstance(names, Mapping):
            names = {}
        loc = cls(model, cfg, names, torch.device(resolve_device(device)), str(path),
                  int(ckpt.get("epoch", 0)), amp)
        logger.info("localiser: %s (epoch %d, %s weights), modalities %s", path, loc.epoch,
                    weights, ", ".join(loc.modalities))
        return loc

    @property
    def modalities(self) -> List[str]:
        """The modality names the model expects, in the checkpoint's order."""
        return [m.name for m in self.cfg.dataset.modalities]

    def with_options(self, opts: Sequence[str], source: str) -> None:
        """Apply ``--opt KEY=VALUE`` overrides (e.g. ``test_cfg.nms.max_seg_num=100``) to the
        checkpoint's config; the model section must stay as trained."""
        if not opts:
            return
        raw = self.cfg.to_dict()
        raw.pop("derived", None)
        cfg = resolve_config(raw, source, opts)
        if cfg.model != self.cfg.model or cfg.derived != self.cfg.derived:
            raise UserError(f"--opt changes the model ({source}): expected only data and "
                            f"post-processing keys, the architecture comes from the checkpoint")
        self.cfg = cfg

    def config_for_folders(self, folders: Mapping[str, str], exts: Mapping[str, str]) -> Config:
        """The checkpoint's config with each modality's ``path`` (and ``ext``) replaced:
        ``folders`` / ``exts`` map every modality name to a feature folder (or .h5 file) and its
        extension (``.npy``, ``.pt``, ``.h5``)."""
        raw = self.cfg.to_dict()
        raw.pop("derived", None)
        for mod in raw["dataset"]["modalities"]:
            mod["path"], mod["ext"] = str(folders[mod["name"]]), exts[mod["name"]]
        return resolve_config(raw, f"{self.source}, stored config")

    def name_of(self, label: int, local: int) -> str:
        """The name of joint class id ``label``; ``str(local)`` (the task's own class id, as in
        :attr:`VideoDetections.labels`) if the label map has none."""
        return self.label_names.get(int(label), str(int(local)))

    def _arrays(self, features: Mapping[str, ArrayLike]) -> List[np.ndarray]:
        """The modality arrays in config order, checked: every name present, 2-D with the
        modality's width, at least one row; NaN/inf as ``dataset.on_nonfinite`` says."""
        names = self.modalities
        unknown = [k for k in features if k not in names]
        missing = [k for k in names if k not in features]
        if unknown or missing:
            raise UserError(f"features {sorted(features)} (Localiser.predict): expected exactly the "
                            f"modalities {names} of {self.source}")
        out = []
        for mod in self.cfg.dataset.modalities:
            x = features[mod.name]
            x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            if x.ndim != 2 or x.shape[1] != mod.dim or x.shape[0] < 1:
                raise UserError(f"bad feature shape (modality '{mod.name}'): {tuple(x.shape)}, "
                                f"expected (T >= 1, {mod.dim})")
            x = np.ascontiguousarray(x, dtype=np.float32)
            bad = nonfinite_rows(x)
            if bad:
                if self.cfg.dataset.on_nonfinite == "error":
                    raise UserError(f"non-finite values (modality '{mod.name}'): {bad} of "
                                    f"{x.shape[0]} rows hold NaN or inf; expected finite features "
                                    f"(dataset.on_nonfinite: zero replaces them)")
                x = np.where(np.isfinite(x), x, np.float32(0.0))
            out.append(x)
        return out

    @torch.no_grad()
    def predict(self, features: Mapping[str, ArrayLike], duration: float,
                video_id: str = "video") -> VideoDetections:
        """Detections of one video: ``features`` maps each modality name to its ``(T_m, dim_m)``
        rows (numpy or torch), ``duration`` is the video length in seconds."""
        if not (isinstance(duration, (int, float)) and np.isfinite(duration) and duration > 0):
            raise UserError(f"video duration {duration!r} (Localiser.predict): expected seconds > 0")
        feats, grid = assemble_arrays(self._arrays(features), self.cfg.dataset, float(duration))
        item: Dict[str, Any] = {"video_id": str(video_id), "feats": feats,
                                "segments": torch.zeros((0, 2)), "labels": torch.zeros(0, dtype=torch.long),
                                "duration": float(duration), "grid": grid}
        batch = collate_batch([item], max_seq_len=self.cfg.dataset.max_seq_len,
                              max_div_factor=self.model.max_div_factor, is_training=False)
        layout = TaskLayout.from_config(self.cfg)
        det = predict(self.model, [batch], [task_test_cfg(self.cfg, t) for t in layout.tasks],
                      self.device, amp=self.amp, show_progress=False)[0]
        labels = det["labels"].numpy().astype(np.int64)                  # joint label space
        task_idx = layout.task_of(labels)
        local = labels - np.asarray(layout.offsets)[task_idx]
        return VideoDetections(segments=det["segments"].numpy().astype(np.float32),
                               scores=det["scores"].numpy().astype(np.float32),
                               labels=local,
                               label_names=[self.name_of(c, k) for c, k in zip(labels, local)],
                               tasks=[layout.tasks[i] for i in task_idx])
