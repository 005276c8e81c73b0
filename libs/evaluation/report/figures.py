"""Summary figures of the evaluation report, drawn from the JSON-ready report dict (the numbers a
figure shows are the ones written to report.json). Matplotlib's object API on the Agg canvas:
no pyplot state, no display. Values are fractions in the dict and percent on the axes.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from libs.common.io import atomic_path
from libs.evaluation.report.errors import ERROR_TYPES

DPI = 100
TP_COLOUR = "#2ca02c"
NOT_COUNTED_COLOUR = "#9e9e9e"
ERROR_COLOURS = {"double_detection": "#9467bd", "wrong_label": "#ff7f0e",
                 "localisation": "#1f9bd1", "confusion": "#e377c2", "background": "#d62728"}
ERROR_LABELS = {"double_detection": "double detection", "wrong_label": "wrong label",
                "localisation": "localisation", "confusion": "confusion",
                "background": "background"}


def new_figure(width_in: float, height_in: float) -> Figure:
    """A figure of ``width_in`` x ``height_in`` inches on its own Agg canvas."""
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str) -> str:
    """Write ``fig`` as PNG to ``path`` atomically; returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path, "report figure") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def figure_to_array(fig: Figure) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 RGB array (e.g. for TensorBoard's
    ``add_image(..., dataformats="HWC")``). The figure stays usable."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _class_name(report: Mapping[str, Any], cid: str) -> str:
    return str(report["per_class_ap"][cid]["name"])


def map_vs_tiou_figure(report: Mapping[str, Any]) -> Figure:
    """mAP (%) against the tIoU threshold (0.05:0.95), the challenge range 0.1:0.5 shaded."""
    curve = report["map_vs_tiou"]
    t = np.array([float(k) for k in curve])
    v = np.array(list(curve.values())) * 100
    fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    ax.axvspan(0.1, 0.5, color="#e8eef7", zorder=0, label="challenge thresholds")
    ax.plot(t, v, "o-", color="#1f4e9c", ms=4)
    for k, val in report["map_per_tiou"].items():
        ax.annotate(f"{val * 100:.1f}", (float(k), val * 100), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=7)
    ax.set(xlabel="tIoU threshold", ylabel="mAP (%)", xlim=(0, 1), ylim=(0, 100),
           title=f"mAP vs tIoU (average mAP 0.1:0.5 = {report['average_map'] * 100:.2f} %)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def per_class_ap_figure(report: Mapping[str, Any]) -> Figure:
    """Average AP (%) per class, sorted, each bar annotated with the class's event count."""
    rows = sorted(report["per_class_ap"].items(), key=lambda kv: kv[1]["average_ap"])
    n = len(rows)
    fig = new_figure(7.0, max(2.5, 0.6 + 0.26 * n))
    ax = fig.add_subplot()
    ap = np.array([r["average_ap"] for _, r in rows]) * 100
    y = np.arange(n)
    ax.barh(y, ap, color="#4c78a8")
    for yi, (_, r), a in zip(y, rows, ap):
        ax.text(min(a, 100) + 1, yi, f"{a:.1f}  (n={r['num_events']})", va="center", fontsize=7)
    ax.set_yticks(y, [r["name"] for _, r in rows], fontsize=8)
    ax.axvline(report["average_map"] * 100, color="#d62728", lw=1, ls="--",
               label=f"average mAP {report['average_map'] * 100:.1f} %")
    ax.set(xlim=(0, 118), xlabel="average AP over tIoU 0.1:0.5 (%)", ylim=(-0.7, n - 0.3),
           title="Per-class AP (n = ground-truth events)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def pr_curves_figure(report: Mapping[str, Any], ncols: Optional[int] = None) -> Figure:
    """Interpolated precision-recall curve of every class at ``pr_tiou``, small multiples in
    the per-class AP order (worst first); ``ncols`` default 4, 8 above 24 classes."""
    order = sorted(report["per_class_ap"], key=lambda c: report["per_class_ap"][c]["ap_at_pr_tiou"])
    n = max(len(order), 1)
    ncols = min(ncols or (4 if n <= 24 else 8), n)
    nrows = math.ceil(n / ncols)
    fig = new_figure(2.4 * ncols, 2.1 * nrows + 0.4)
    for i, cid in enumerate(order):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        curve = report["pr_curves"][cid]
        r, p = np.array(curve["recall"]), np.array(curve["precision"])
        if len(r):
            ax.step(np.r_[0.0, r], np.r_[p[0], p], where="pre", color="#1f4e9c")
            ax.fill_between(np.r_[0.0, r], np.r_[p[0], p], step="pre", alpha=0.15, color="#1f4e9c")
        ap = report["per_class_ap"][cid]["ap_at_pr_tiou"] * 100
        ax.set_title(f"{_class_name(report, cid)}: AP {ap:.1f}", fontsize=8)
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.tick_params(labelsize=6)
        if i % ncols == 0:
            ax.set_ylabel("precision", fontsize=7)
        if i >= n - ncols:
            ax.set_xlabel("recall", fontsize=7)
    fig.suptitle(f"Precision-recall at tIoU {report['pr_tiou']:.2f} (interpolated)", fontsize=10)
    fig.tight_layout()
    return fig


def error_figure(report: Mapping[str, Any]) -> Figure:
    """DETAD-style false-positive analysis: counts per type at the breakdown tIoU, the outcome
    profile of the top-kG predictions, and the average-mAP gain of removing each type."""
    ea, gain = report["error_analysis"], report["error_map_gain"]
    names = list(ERROR_TYPES)
    colours = [ERROR_COLOURS[e] for e in names]
    labels = [ERROR_LABELS[e] for e in names]
    fig = new_figure(13.0, 3.8)
    ax1, ax2, ax3 = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.1, 1.3, 1.0]})
    counts = np.array([report["errors"][e] for e in names])
    total = max(int(counts.sum()), 1)
    y = np.arange(len(names))[::-1]
    ax1.barh(y, counts, color=colours)
    for yi, c in zip(y, counts):
        ax1.text(c, yi, f" {c} ({c / total * 100:.0f} %)", va="center", fontsize=8)
    ax1.set_yticks(y, labels, fontsize=8)
    ax1.set_xlim(0, max(counts.max(initial=0), 1) * 1.35)
    ax1.set_title(f"False positives at tIoU {ea['tiou']:.2f} (top {ea['fp_window']:g}G): "
                  f"{int(counts.sum())}", fontsize=9)
    prof = ea["profile"]
    k = np.array(prof["k"])
    bottom = np.zeros(len(k))
    for key, colour, label in [("true_positive", TP_COLOUR, "true positive")] + list(
            zip(names, colours, labels)):
        vals = np.array(prof[key]) * 100
        ax2.bar(k, vals, bottom=bottom, color=colour, label=label, width=0.8)
        bottom += vals
    ax2.set(xlabel="top-kG predictions (G = events of the class)", ylabel="% of predictions",
            ylim=(0, 100), xticks=k)
    ax2.set_xticklabels([f"{x:g}G" for x in k], fontsize=7)
    ax2.set_title("Outcome of the top-kG predictions", fontsize=9)
    g = np.array([gain[e] for e in names]) * 100
    ax3.barh(y, g, color=colours)
    for yi, v in zip(y, g):
        ax3.text(max(v, 0), yi, f" {v:+.2f}", va="center", fontsize=8)
    ax3.set_yticks(y, labels, fontsize=8)
    ax3.set_xlim(min(g.min(initial=0), 0) * 1.2, max(g.max(initial=0), 0.1) * 1.4)
    ax3.set_xlabel("average-mAP gain (points)", fontsize=8)
    ax3.set_title(f"mAP gain if removed (window mAP {ea['window_average_map'] * 100:.2f} %)",
                  fontsize=9)
    handles, names_ = ax2.get_legend_handles_labels()
    fig.legend(handles, names_, fontsize=8, loc="lower center", ncol=len(names_), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def _bin_panel(ax, bins: Sequence[Dict[str, Any]], key: str, colour: str, title: str,
               xlabel: str, ylabel: str, tick) -> None:
    x = np.arange(len(bins))
    vals = np.array([np.nan if b[key] is None else b[key] * 100 for b in bins])
    ax.bar(x, np.nan_to_num(vals), color=colour)
    for xi, v, b in zip(x, vals, bins):
        text = "-" if np.isnan(v) else f"{v:.1f}"
        ax.text(xi, 0 if np.isnan(v) else v, f"{text}\nn={b['num_events']}", ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(x, [tick(b) for b in bins], fontsize=7)
    ax.set(ylim=(0, 118), title=title, xlabel=xlabel, ylabel=ylabel)
    ax.title.set_fontsize(9)


def _length_tick(b: Mapping[str, Any]) -> str:
    lo, hi = b["range_s"]
    return f"{b['name']}\n>{lo:g} s" if hi is None else f"{b['name']}\n{lo:g}-{hi:g} s"


def _count_tick(b: Mapping[str, Any]) -> str:
    lo, hi = b["range_events"]
    return f"{b['name']}\n{lo}+" if hi is None else f"{b['name']}\n{lo}-{hi}"


def sensitivity_figure(report: Mapping[str, Any]) -> Figure:
    """Average mAP and false-negative rate per event-length bin and per events-per-video bin
    (n = ground-truth events in the bin)."""
    s = report["sensitivity"]
    fig = new_figure(11.0, 6.4)
    axes = fig.subplots(2, 2)
    fn_t = f"{s['fn_tiou']:.2f}"
    _bin_panel(axes[0, 0], s["length"]["bins"], "average_map", "#4c78a8",
               "Average mAP by event length", "event length", "average mAP (%)", _length_tick)
    _bin_panel(axes[0, 1], s["length"]["bins"], "false_negative_rate", "#d62728",
               f"Missed events (tIoU {fn_t}) by event length", "event length", "missed (%)",
               _length_tick)
    _bin_panel(axes[1, 0], s["events_per_video"]["bins"], "average_map", "#4c78a8",
               "Average mAP by events per video", "events of the video", "average mAP (%)",
               _count_tick)
    _bin_panel(axes[1, 1], s["events_per_video"]["bins"], "false_negative_rate", "#d62728",
               f"Missed events (tIoU {fn_t}) by events per video", "events of the video",
               "missed (%)", _count_tick)
    fn = s["false_negatives"]
    fig.suptitle(f"Sensitivity and false negatives: {fn['missed']} of {fn['num_events']} events "
                 f"missed at tIoU {fn_t} ({fn['rate'] * 100:.1f} %)", fontsize=10)
    fig.tight_layout()
    return fig


SUMMARY_CAPTIONS = {     # name -> (title, caption; formatted with error_analysis keys, pr_tiou)
    "map_vs_tiou": ("mAP vs tIoU threshold",
                    "mAP at each tIoU threshold; the challenge averages 0.1:0.5 (shaded)."),
    "per_class_ap": ("Per-class AP", "Average AP over tIoU 0.1:0.5 per class, best on top; "
                                     "n = ground-truth events."),
    "pr_curves": ("Precision-recall curves",
                  "Interpolated precision-recall per class at tIoU {pr_tiou:.2f}."),
    "errors": ("False-positive analysis (DETAD)",
               "False positives among each class's top {fp_window:g}G predictions at tIoU "
               "{tiou:.2f} by type, the outcome profile of the top-kG predictions, and the "
               "average-mAP gain if a type were removed."),
    "sensitivity": ("Sensitivity and false negatives", "Average mAP and missed events per "
                    "event-length bin and per events-per-video bin."),
}


def summary_figures(report: Mapping[str, Any]) -> Dict[str, Figure]:
    """Every summary figure of a report dict (``build_report`` / report.json), by name (the
    PNG's base name): map_vs_tiou, per_class_ap, pr_curves, errors, sensitivity."""
    draw = {"map_vs_tiou": map_vs_tiou_figure, "per_class_ap": per_class_ap_figure,
            "pr_curves": pr_curves_figure, "errors": error_figure,
            "sensitivity": sensitivity_figure}
    return {name: fn(report) for name, fn in draw.items()}
