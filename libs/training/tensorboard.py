"""A TensorBoard writer that is safe everywhere: a no-op on non-main ranks or without tensorboard."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Union

log = logging.getLogger(__name__)


class TensorboardWriter:
    """``SummaryWriter`` wrapper: a no-op on non-main ranks, when ``log_dir`` is None or when
    tensorboard is not installed (then one WARNING says so).
    """

    def __init__(self, log_dir: Optional[Union[str, Path]], rank: int = 0, **kwargs: Any):
        self._writer = None
        if log_dir is None or rank != 0:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as err:  # ImportError, or a broken tensorboard/protobuf install
            log.warning("tensorboard unavailable (%s: %s); no TensorBoard logs will be written",
                        type(err).__name__, err)
            return
        self._writer = SummaryWriter(log_dir=str(log_dir), **kwargs)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), step)

    def add_image(self, tag: str, image: Any, step: int) -> None:
        """``image``: (H, W, 3) uint8 RGB."""
        if self._writer is not None:
            self._writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def log_validation(writer: TensorboardWriter, metrics: Any, label_names: Mapping[int, str],
                   epoch: int, timeline: Optional[Tuple[Any, Mapping[str, Any]]] = None,
                   prefix: str = "validation") -> None:
    """Validation of one epoch: average mAP, mAP per tIoU, average AP per class (named) and, with
    ``timeline = (video record, its detections)``, that video's timeline figure; tags under
    ``prefix`` (one task's metrics of a several-task run: ``validation_<task>``)."""
    if not writer.enabled:
        return
    writer.add_scalar(f"{prefix}/average_mAP", metrics.average_map, epoch)
    for t, m in zip(metrics.tiou_thresholds, metrics.map_per_tiou):
        writer.add_scalar(f"{prefix}/mAP@{t:.1f}", m, epoch)
    for j, cid in enumerate(metrics.class_ids):
        name = label_names.get(int(cid), str(int(cid)))
        writer.add_scalar(f"{prefix}_class_AP/{int(cid):02d} {name}", metrics.ap[:, j].mean(), epoch)
    if timeline is not None:
        from libs.evaluation.report import figure_to_array, timeline_figure   # matplotlib: lazy
        import matplotlib.pyplot as plt
        video, dets = timeline
        fig = timeline_figure(video, dets, label_names, title=f"{video.video_id}, epoch {epoch}")
        writer.add_image(f"{prefix}/timeline", figure_to_array(fig), epoch)
        plt.close(fig)
