"""The table of ``benchmarks/compare_reference.py``: medians of the interleaved runs, ratios
reference / ours (> 1: ours faster or smaller), the machine line and the profile breakdown."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from compare_common import ORDER

GB = 1e9
Row = Tuple[str, str, str, str]


def machine() -> str:
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    import torch
    return (f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB, torch {torch.__version__}, "
            f"{datetime.date.today().isoformat()}")


def _med(values: Sequence[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Report:
    def __init__(self, results: Dict[str, Dict[str, List[dict]]], sizes: Sequence[int],
                 valid: int, preds: int) -> None:
        self.r, self.sizes, self.valid, self.preds = results, list(sizes), valid, preds

    def runs(self, cell: str, variant: str) -> List[dict]:
        return self.r.get(cell, {}).get(variant, [])

    def s_it(self, cell: str, variant: str) -> Optional[float]:
        return _med([t for run in self.runs(cell, variant) for t in run["iter_times"]])

    def each(self, cell: str, variant: str, key: str) -> Optional[float]:
        return _med([run.get(key) for run in self.runs(cell, variant)])

    # ------------------------------------------------------------------------------ rows
    @staticmethod
    def _fmt(v: Optional[float], unit: str) -> str:
        if v is None:
            return "-"
        if unit == "GB":
            return f"{v / GB:.2f}"
        if unit == "%":
            return f"{100 * v:.2f}"
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"

    def _row(self, label: str, pairs: Sequence[Tuple[Optional[float], Optional[float]]],
             unit: str, ratio: bool = True) -> Row:
        ref = " / ".join(self._fmt(a, unit) for a, _ in pairs)
        ours = " / ".join(self._fmt(b, unit) for _, b in pairs)
        if unit in ("GB", "s"):
            ref, ours = f"{ref} {unit}", f"{ours} {unit}"
        rat = " / ".join(f"{a / b:.2f}" if a and b else "-" for a, b in pairs) if ratio else "-"
        return label, ref, ours, rat

    def rows(self) -> List[Row]:
        sz, n0 = self.sizes, self.sizes[0]
        sizes = " / ".join(f"{n:,}" for n in sz)
        out: List[Row] = []
        for w in (512, 128):
            c = f"train{w}_{n0}"
            out.append(self._row(f"train width {w}, s/iteration", [(self.s_it(c, "ref"),
                                                                   self.s_it(c, "ours"))], "s"))
        c = f"train512_{n0}"
        out.append(self._row("train width 512, peak PSS (all processes)",
                             [(self.each(c, "ref", "peak_pss_tree"),
                               self.each(c, "ours", "peak_pss_tree"))], "GB"))
        for key, what in (("peak_rss_main", "peak RSS (main process)"),
                          ("peak_pss_tree", "peak PSS (all processes)")):
            out.append(self._row(f"train width 128, {sizes} videos, {what}",
                                 [(self.each(f"train128_{n}", "ref", key),
                                   self.each(f"train128_{n}", "ours", key)) for n in sz], "GB"))
        out.append(self._row(f"launch -> first batch, {sizes} videos",
                             [(self.each(f"train128_{n}", "ref", "launch_to_first_batch"),
                               self.each(f"train128_{n}", "ours", "launch_to_first_batch"))
                              for n in sz], "s"))
        if any(self.each(f"train128_{n}", "ours", "cache_bytes") is not None for n in sz):
            out.append(self._row(f"ours: feature cache capacity (filled in epoch 1), {sizes} "
                                 "videos", [(None, self.each(f"train128_{n}", "ours", "cache_bytes"))
                                            for n in sz], "GB", ratio=False))
        inf = [(self.each("eval", "ref", "infer"), self.each("eval", "ours", "infer"))]
        tot = [(_sum(self.runs("eval", "ref")), _sum(self.runs("eval", "ours")))]
        out.append(self._row(f"valid inference + NMS, {self.valid:,} videos", inf, "s"))
        out.append(self._row(f"valid inference + NMS + metric, {self.valid:,} videos", tot, "s"))
        out.append(self._row(f"metric alone, {self.preds:,} predictions",
                             [(self.each("metric", "ref", "metric"),
                               self.each("metric", "ours", "metric"))], "s"))
        out.append(self._row("valid average mAP (%), same weights, each side's metric",
                             [(self.each("eval", "ref", "average_map"),
                               self.each("eval", "ours", "average_map"))], "%", ratio=False))
        if self.runs(f"train512_{n0}", "ours_bf16"):
            for w in (512, 128):
                c = f"train{w}_{n0}"
                out.append(self._row(f"train width {w}, s/iteration: ours bf16 vs reference fp32",
                                     [(self.s_it(c, "ref"), self.s_it(c, "ours_bf16"))], "s"))
        if self.runs("eval", "ours_bf16"):
            out.append(self._row(f"valid inference + NMS, {self.valid:,} videos: ours --amp bf16",
                                 [(self.each("eval", "ref", "infer"),
                                   self.each("eval", "ours_bf16", "infer"))], "s"))
            out.append(self._row(f"valid inference + NMS + metric, {self.valid:,} videos: ours "
                                 f"--amp bf16", [(_sum(self.runs("eval", "ref")),
                                                  _sum(self.runs("eval", "ours_bf16")))], "s"))
            out.append(self._row("valid average mAP (%): ours --amp bf16",
                                 [(self.each("eval", "ref", "average_map"),
                                   self.each("eval", "ours_bf16", "average_map"))], "%",
                                 ratio=False))
        return out

    def table(self, header: str) -> str:
        lines = [header, "", "| figure | reference | ours | ratio ref/ours |",
                 "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows()]
        return "\n".join(lines)

    def ratios(self) -> str:
        return "ratios (reference / ours; > 1: ours faster or smaller):\n" + "\n".join(
            f"  {label}: {ratio}" for label, _, _, ratio in self.rows() if ratio != "-")

    def floor(self) -> str:
        """The fp32 FLOP floor (``compare_floor.py``) beside the measured times: what the
        arithmetic both sides share allows at most on this CPU."""
        runs = self.runs("floor", "ours")
        if not runs:
            return ""
        f = runs[-1]
        rates, train = f["rates"], f["flops"]["train"]
        infer = {k: v / f["batch"] * self.valid for k, v in f["flops"]["infer"].items()}
        infer_floor = f["infer_floor_per_video"] * self.valid
        c = f"train512_{self.sizes[0]}"
        measured = [
            (f"train width 512, s/iteration (batch {f['batch']})", train, f["train_floor"],
             self.s_it(c, "ref"), self.s_it(c, "ours")),
            (f"valid inference + NMS, {self.valid:,} videos", infer, infer_floor,
             self.each("eval", "ref", "infer"), self.each("eval", "ours", "infer")),
            (f"valid inference + NMS + metric, {self.valid:,} videos", infer, infer_floor,
             _sum(self.runs("eval", "ref")), _sum(self.runs("eval", "ours")))]
        lines = [f"fp32 FLOP floor on this CPU (compare_floor.py: our model's FLOPs at the best "
                 f"rate measured for its kernels, conv {rates['conv']:.0f} GFLOP/s, matmul "
                 f"{rates['matmul']:.0f} GFLOP/s; the floor counts the model's convs and matmuls "
                 f"only, so 'ref / floor' bounds the ratio any implementation could reach):", "",
                 "| figure | GFLOP (conv + matmul) | floor | reference | ours | floor / ours | "
                 "ref / floor |", "|---|---|---|---|---|---|---|"]
        for label, flops, fl, ref, ours in measured:
            lines.append(
                f"| {label} | {(flops['conv'] + flops['matmul']) / 1e9:,.1f} "
                f"({flops['conv'] / 1e9:,.1f} + {flops['matmul'] / 1e9:,.1f}) | {fl:.2f} s | "
                f"{_secs(ref)} | {_secs(ours)} | "
                f"{f'{fl / ours:.0%}' if ours else '-'} | {f'{ref / fl:.2f}' if ref else '-'} |")
        return "\n".join(lines)

    def profile(self) -> str:
        runs = {side: self.runs("profile", side) for side in ("ref", "ours")}
        if not all(runs.values()):
            return ""
        prof = {side: runs[side][-1]["profile"] for side in runs}
        found = set(prof["ref"]["categories"]) | set(prof["ours"]["categories"])
        cats = [c for c in ORDER if c in found] + sorted(found - set(ORDER))
        lines = ["profile of a width-512 training iteration (torch.profiler, s/iteration; "
                 "backward charged to the forward op's category):", "",
                 "| part | reference | ours |", "|---|---|---|"]
        for c in cats:
            a, b = (prof[s]["categories"].get(c) for s in ("ref", "ours"))
            lines.append(f"| {c} | {self._fmt(a, '')} | {self._fmt(b, '')} |")
        lines.append(f"| iteration (profiled) | {prof['ref']['wall']:.3f} | {prof['ours']['wall']:.3f} |")
        for side in ("ref", "ours"):
            lines += ["", f"top ops by self CPU time, {side} (s/iteration): " + ", ".join(
                f"{k} {v:.3f}" for k, v in prof[side]["top_ops"][:8])]
        return "\n".join(lines)


def _secs(v: Optional[float]) -> str:
    return "-" if v is None else f"{Report._fmt(v, 's')} s"


def _sum(runs: List[dict]) -> Optional[float]:
    return _med([r["infer"] + r["metric"] for r in runs])


def header(threads: int, repeats: int, extra: str = "") -> str:
    return (f"Machine: {machine()}; {threads} thread(s) per process, 4 loader workers (the "
            f"original config), {repeats} interleaved run(s) per side, medians{extra}. The "
            f"machine is shared with other work: figures are noisy, ratios matter.")
