"""Two reports side by side: average mAP, per-class AP and the false-positive breakdown with its
mAP gains (``tools/make_report.py --compare A B``), as ``compare.json``, figures and a page.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from libs.common.errors import UserError
from libs.common.io import atomic_write_text
from libs.evaluation.report.errors import ERROR_TYPES
from libs.evaluation.report.figures import ERROR_LABELS, new_figure, save_png
from libs.evaluation.report.html import write_compare_index
from libs.evaluation.report.output import IMG, prepare_report_dir

logger = logging.getLogger(__name__)

COMPARE_FORMAT = "perception-report-compare/1"
_REQUIRED = ("task", "average_map", "map_per_tiou", "per_class_ap", "errors", "error_map_gain")
_COLOURS = ("#4c78a8", "#f58518")


def load_report(path: str) -> Tuple[Dict[str, Any], str]:
    """A report.json (a file, or a report folder holding one) -> ``(report dict, file path)``."""
    p = Path(path)
    file = p / "report.json" if p.is_dir() else p
    if not file.is_file():
        raise UserError(f"report not found ({file}): expected a report.json or a folder written "
                        "by tools/make_report.py")
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"unreadable report ({file}): {err}") from None
    missing = [k for k in _REQUIRED if not isinstance(report, dict) or k not in report]
    if missing:
        raise UserError(f"not a report ({file}): missing {', '.join(missing)}; expected the "
                        "report.json of tools/make_report.py")
    return report, str(file)


def _default_names(sources: Sequence[str]) -> List[str]:
    names = [Path(s).parent.name or Path(s).stem for s in sources]
    return names if names[0] != names[1] else ["A", "B"]


def comparison(a: Dict[str, Any], b: Dict[str, Any], names: Sequence[str],
               sources: Sequence[str]) -> Dict[str, Any]:
    """The compare.json dict: every compared value as ``[value of a, value of b]`` (None where a
    class is in one report only). Classes are ordered by the mean of their two average APs."""
    if a["task"] != b["task"]:
        raise UserError(f"reports of different tasks ({sources[0]}: {a['task']}, {sources[1]}: "
                        f"{b['task']}): expected two reports of the same task")
    if a.get("num_events") != b.get("num_events"):
        logger.warning("the reports count different ground-truth events (%s vs %s): are they of "
                       "the same split?", a.get("num_events"), b.get("num_events"))
    classes: Dict[str, Dict[str, Any]] = {}
    for cid in sorted(set(a["per_class_ap"]) | set(b["per_class_ap"]), key=int):
        ca, cb = a["per_class_ap"].get(cid), b["per_class_ap"].get(cid)
        known = ca or cb
        classes[cid] = {"name": known["name"], "num_events": known["num_events"],
                        "average_ap": [ca and ca["average_ap"], cb and cb["average_ap"]]}
    classes = dict(sorted(classes.items(), key=lambda kv: np.mean(
        [x for x in kv[1]["average_ap"] if x is not None])))
    keys = [k for k in a["map_per_tiou"] if k in b["map_per_tiou"]]
    return {"format": COMPARE_FORMAT, "names": list(names), "sources": list(sources),
            "task": a["task"], "average_map": [a["average_map"], b["average_map"]],
            "map_per_tiou": {k: [a["map_per_tiou"][k], b["map_per_tiou"][k]] for k in keys},
            "per_class_ap": classes,
            "errors": {e: [a["errors"][e], b["errors"][e]] for e in ERROR_TYPES},
            "error_map_gain": {e: [a["error_map_gain"][e], b["error_map_gain"][e]]
                               for e in ERROR_TYPES}}


def _grouped_barh(ax, labels: Sequence[str], pairs: Sequence[Sequence[Any]], names: Sequence[str],
                  scale: float, fmt: str) -> None:
    y = np.arange(len(labels))
    for k in range(2):
        vals = np.array([np.nan if p[k] is None else p[k] * scale for p in pairs], dtype=float)
        ax.barh(y + (0.2 if k == 0 else -0.2), np.nan_to_num(vals), height=0.4,
                color=_COLOURS[k], label=names[k])
        for yi, v in zip(y, vals):
            if not np.isnan(v):
                ax.text(max(v, 0), yi + (0.2 if k == 0 else -0.2), f" {v:{fmt}}", va="center",
                        fontsize=6)
    ax.set_yticks(y, labels, fontsize=7)
    ax.legend(fontsize=7, loc="lower right")


def per_class_compare_figure(comp: Dict[str, Any]) -> Figure:
    """Per-class average AP (%) of both models, grouped bars, classes in compare.json order."""
    rows = list(comp["per_class_ap"].values())
    fig = new_figure(7.5, max(3.0, 0.8 + 0.36 * len(rows)))
    ax = fig.add_subplot()
    _grouped_barh(ax, [f"{r['name']} (n={r['num_events']})" for r in rows],
                  [r["average_ap"] for r in rows], comp["names"], 100.0, ".1f")
    am = comp["average_map"]
    ax.set(xlim=(0, 118), xlabel="average AP over tIoU 0.1:0.5 (%)",
           title=f"Per-class AP: {comp['names'][0]} {am[0] * 100:.2f} % vs "
                 f"{comp['names'][1]} {am[1] * 100:.2f} % average mAP")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def errors_compare_figure(comp: Dict[str, Any]) -> Figure:
    """False positives per type and the average-mAP gain of removing each, both models."""
    labels = [ERROR_LABELS[e] for e in ERROR_TYPES][::-1]
    fig = new_figure(11.0, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    _grouped_barh(ax1, labels, [comp["errors"][e] for e in ERROR_TYPES][::-1], comp["names"],
                  1.0, ".0f")
    ax1.set_title("False positives by type", fontsize=9)
    ax1.set_xlim(0, max(max(v) for v in comp["errors"].values()) * 1.3 + 1)
    _grouped_barh(ax2, labels, [comp["error_map_gain"][e] for e in ERROR_TYPES][::-1],
                  comp["names"], 100.0, "+.2f")
    ax2.set_title("Average-mAP gain if removed (points)", fontsize=9)
    fig.tight_layout()
    return fig


def compare_reports(report_a: str, report_b: str, out_dir: str, *,
                    names: Optional[Sequence[str]] = None, overwrite: bool = False
                    ) -> Dict[str, Any]:
    """Compare two reports (report.json files or report folders) into ``out_dir``:
    ``compare.json``, ``img/compare_per_class_ap.png``, ``img/compare_errors.png`` and
    ``index.html``. ``names`` default to the reports' folder names. Returns compare.json."""
    (a, src_a), (b, src_b) = load_report(report_a), load_report(report_b)
    if names is not None and len(names) != 2:
        raise UserError(f"bad --names {list(names)}: expected two names, one per report")
    names = list(names) if names else _default_names([src_a, src_b])
    comp = comparison(a, b, names, [src_a, src_b])
    out = prepare_report_dir(out_dir, overwrite)
    figs = [("Per-class AP", "compare_per_class_ap.png", per_class_compare_figure),
            ("False positives and mAP gains", "compare_errors.png", errors_compare_figure)]
    html_figs = []
    for title, name, draw in figs:
        save_png(draw(comp), str(out / IMG / name))
        html_figs.append((title, f"{IMG}/{name}", ""))
    atomic_write_text(str(out / "compare.json"), json.dumps(comp, indent=1, allow_nan=False),
                      "comparison")
    write_compare_index(str(out), comp, html_figs)
    logger.info("comparison written to %s", os.path.join(out, "index.html"))
    return comp
