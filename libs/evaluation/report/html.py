"""The report's ``index.html``: one self-contained page (inline CSS, no script, no network) with
the mAP table on top and the figures below, linked by relative paths inside the report folder.
"""
from __future__ import annotations

import html
import os
from typing import Any, Mapping, Sequence, Tuple

from libs.common.io import atomic_write_text
from libs.evaluation.report.errors import ERROR_TYPES

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .7em;
text-align:right}th{background:#f2f4f8}td.l,th.l{text-align:left}img{max-width:100%;
border:1px solid #eee}h2{margin-top:1.6em;border-bottom:1px solid #ddd}.cap{color:#555;
font-size:.9em;margin:.2em 0 1em}.neg{color:#b00}.pos{color:#070}"""

FigureLink = Tuple[str, str, str]      # (title, path relative to the report folder, caption)


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{float(x) * 100:.2f}"


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            f"<h1>{_e(title)}</h1>\n{body}\n</body></html>\n")


def _figure(fig: FigureLink) -> str:
    title, path, caption = fig
    return (f"<h2>{_e(title)}</h2>\n<a href=\"{_e(path)}\"><img src=\"{_e(path)}\" "
            f"alt=\"{_e(title)}\"></a>\n<p class=\"cap\">{_e(caption)}</p>")


def map_table(report: Mapping[str, Any]) -> str:
    """The mAP table: one column per challenge threshold, then the average (percent)."""
    keys = list(report["map_per_tiou"])
    head = "".join(f"<th>tIoU {_e(k)}</th>" for k in keys) + "<th>average mAP</th>"
    row = "".join(f"<td>{_pct(report['map_per_tiou'][k])}</td>" for k in keys)
    return (f"<table><tr>{head}</tr><tr>{row}<td><b>{_pct(report['average_map'])}</b></td></tr>"
            "</table>")


def write_index(out_dir: str, report: Mapping[str, Any], figures: Sequence[FigureLink],
                timelines: Sequence[FigureLink]) -> str:
    """Write ``out_dir/index.html`` for ``report`` (the report.json dict); returns its path."""
    info = report.get("meta", {})
    facts = [("task", report["task"])] + [(k, v) for k, v in info.items()] + [
        ("videos", report["num_videos"]), ("ground-truth events", report["num_events"]),
        ("predictions", report["num_predictions"]),
        ("ignored predictions (class without ground truth)", report["ignored_predictions"])]
    rows = "".join(f"<tr><th class=\"l\">{_e(k)}</th><td class=\"l\">{_e(v)}</td></tr>"
                   for k, v in facts)
    errors = report["errors"]
    gain = report["error_map_gain"]
    err_rows = "".join(f"<tr><td class=\"l\">{_e(e.replace('_', ' '))}</td><td>{errors[e]}</td>"
                       f"<td>{gain[e] * 100:+.2f}</td></tr>" for e in ERROR_TYPES)
    body = [f"<table>{rows}</table>", "<h2>mAP (%)</h2>", map_table(report),
            "<table><tr><th class=\"l\">false-positive type "
            f"(tIoU {report['error_analysis']['tiou']:.2f})</th><th>count</th>"
            f"<th>average-mAP gain if removed (points)</th></tr>{err_rows}</table>",
            "<p class=\"cap\">How to read this page: docs/report.md. All numbers: "
            "<a href=\"report.json\">report.json</a>.</p>"]
    body += [_figure(f) for f in figures]
    if timelines:
        body.append("<h2>Timelines</h2>")
        body += [f"<h3>{_e(t)}</h3>\n<p class=\"cap\">{_e(c)}</p>\n<a href=\"{_e(p)}\">"
                 f"<img src=\"{_e(p)}\" alt=\"{_e(t)}\"></a>" for t, p, c in timelines]
    path = os.path.join(out_dir, "index.html")
    atomic_write_text(path, _page(f"Evaluation report: {report['task']}", "\n".join(body)),
                      "report page")
    return path


def write_compare_index(out_dir: str, comparison: Mapping[str, Any], figures: Sequence[FigureLink]
                        ) -> str:
    """Write ``out_dir/index.html`` for a two-model comparison (compare.json dict)."""
    a, b = comparison["names"]
    head = (f"<tr><th class=\"l\"></th><th>{_e(a)}</th><th>{_e(b)}</th>"
            f"<th>{_e(b)} - {_e(a)}</th></tr>")

    def row(label: str, va: Any, vb: Any, scale: float = 100.0, fmt: str = ".2f") -> str:
        cell = lambda v: "-" if v is None else f"{v * scale:{fmt}}"  # noqa: E731
        d = None if va is None or vb is None else (vb - va) * scale
        cls = "" if not d else "pos" if d > 0 else "neg"
        diff = "-" if d is None else f"{d:+{fmt}}"
        return (f"<tr><td class=\"l\">{_e(label)}</td><td>{cell(va)}</td><td>{cell(vb)}</td>"
                f"<td class=\"{cls}\">{diff}</td></tr>")

    maps = row("average mAP (%)", *comparison["average_map"])
    maps += "".join(row(f"mAP tIoU {k} (%)", *v) for k, v in comparison["map_per_tiou"].items())
    classes = "".join(row(f"{c['name']} (n={c['num_events']})", *c["average_ap"])
                      for c in comparison["per_class_ap"].values())
    errs = "".join(row(e.replace("_", " "), *comparison["errors"][e], scale=1.0, fmt=".0f")
                   for e in ERROR_TYPES)
    gains = "".join(row(e.replace("_", " "), *comparison["error_map_gain"][e])
                    for e in ERROR_TYPES)
    body = [f"<p>{_e(a)}: {_e(comparison['sources'][0])}<br>{_e(b)}: "
            f"{_e(comparison['sources'][1])}</p>",
            f"<h2>mAP</h2><table>{head}{maps}</table>",
            f"<h2>Per-class average AP (%)</h2><table>{head}{classes}</table>",
            f"<h2>False positives by type</h2><table>{head}{errs}</table>",
            f"<h2>Average-mAP gain if removed (points)</h2><table>{head}{gains}</table>",
            "<p class=\"cap\">All numbers: <a href=\"compare.json\">compare.json</a>.</p>"]
    body += [_figure(f) for f in figures]
    path = os.path.join(out_dir, "index.html")
    atomic_write_text(path, _page(f"Comparison: {a} vs {b}", "\n".join(body)), "report page")
    return path
