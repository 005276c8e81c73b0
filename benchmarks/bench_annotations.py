"""Cost of reading annotation files strictly (libs/common/jsonfile.py) against plain json.loads.

    python benchmarks/bench_annotations.py [--videos 5000] [--events 20] [--repeats 5]

Writes a synthetic Perception Test annotation file (both localisation lists, ``--events`` events
each per video) and times, median of ``--repeats``: ``json.loads`` of the text, the strict
parse (UTF-8 decode + ``object_pairs_hook`` duplicate detection), and the whole
``load_annotations`` (parse + validation). Prints one line per measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.datasets.annotations import load_annotations  # noqa: E402
from libs.common.jsonfile import read_json_checked  # noqa: E402


def synthetic(videos: int, events: int) -> dict:
    def ev(i: int) -> dict:
        return {"id": i, "label": f"class_{i % 12}", "label_id": i % 12,
                "timestamps": [i * 100_000, i * 100_000 + 50_000], "frame_ids": [i, i + 1],
                "parent_objects": [], "is_visible": True}
    return {f"video_{k:05d}": {"metadata": {"video_id": f"video_{k:05d}", "split": "train",
                                            "num_frames": 900, "frame_rate": 30.0,
                                            "resolution": [1080, 1920]},
                               "sound_localisation": [ev(i) for i in range(events)],
                               "action_localisation": [ev(i) for i in range(events)],
                               "object_tracking": [], "mc_question": []}
            for k in range(videos)}


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=5000)
    p.add_argument("--events", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ann.json")
        text = json.dumps(synthetic(args.videos, args.events))
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        mib = len(text.encode()) / 2 ** 20
        plain = median_time(lambda: json.loads(text), args.repeats)
        strict = median_time(lambda: read_json_checked(path, "annotation file", "x"), args.repeats)
        full = median_time(lambda: load_annotations(path, "sound_localisation", 12), args.repeats)
    print(f"file: {args.videos} videos x 2 lists x {args.events} events, {mib:.1f} MiB; "
          f"median of {args.repeats}")
    print(f"json.loads(text)              {plain * 1e3:8.1f} ms")
    print(f"read_json_checked(path)       {strict * 1e3:8.1f} ms  ({strict / plain:.2f}x json.loads)")
    print(f"load_annotations(path)        {full * 1e3:8.1f} ms  ({full / plain:.2f}x json.loads)")


if __name__ == "__main__":
    main()
