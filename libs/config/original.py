"""Read the original project's YAML configs (OpenGVLab/perception_test_iccv2023, ActionFormer layout).

``is_original_config(raw)`` recognises the original layout; ``convert_original_config(raw, source)``
returns an equivalent raw mapping in OUR schema (``libs/config/schema.py``; pass it to
``resolve_config``) and human-readable notes on what was mapped, dropped or assumed.

Two dataset styles (docs/numerics.md s.11.2-11.3):
- ``perception`` (TSL): ``feat_folder`` (primary) + optional ``mm_feat_folder`` (video ``.pt``,
  endpoint-resampled to the primary's rows); ``input_dim`` is the concatenated width.
- ``perception_tal_mm`` (TAL): ``feat_folder_list`` video families (the first is primary, the others
  'centre'-resampled) + ``mm_feat_folder`` BEATs ``.npy`` stacked 2 rows per step; ``input_dim`` and
  ``model.embd_dim`` are lists (one entry per channel group), ``model.fused_embd`` the fused width.
Keys an original config omits take the ORIGINAL's defaults (docs/numerics.md s.11.1), so results match it. The time
grid is the original's ``stride`` arithmetic with ``fps = default_fps`` (docs/numerics.md s.2.1).
"""
from __future__ import annotations

import difflib
from typing import Any, Dict, List, Mapping, Optional, Tuple

from libs.config.schema import TASKS
from libs.config.original_layout import (DATASET_KEYS, DEFAULT_VIDEO_DIM, END_TOLERANCE,
                                         MODEL_COPIES, ORIGINAL_DEFAULTS, RENAMES, SIGNS_DATASET,
                                         SIGNS_TOP, TOP_KEYS, fmt, get_dotted, merge_defaults,
                                         modality_name, plain, probe_pt_dim, put_dotted)
from libs.config.spec import FLOAT_STR, SCHEMA
from libs.common.errors import UserError, format_problems

__all__ = ["is_original_config", "convert_original_config", "ORIGINAL_DEFAULTS", "RENAMES"]

def is_original_config(raw: Any) -> bool:
    """True if ``raw`` (a parsed YAML mapping) is in the original project's layout."""
    if not isinstance(raw, dict):
        return False
    ds = raw.get("dataset")
    ds = ds if isinstance(ds, dict) else {}
    if "modalities" in ds or "annotation_file" in ds:     # ours (perhaps with a stray key)
        return False
    return any(k in raw for k in SIGNS_TOP) or any(k in ds for k in SIGNS_DATASET)


def convert_original_config(raw: Mapping[str, Any], source: str) -> Tuple[dict, List[str]]:
    """Convert an original-layout config to a raw mapping in our schema, plus mapping notes.

    Raises :class:`UserError` for unknown keys (typos), missing required keys and values the
    original accepted but we cannot honour (e.g. ``backbone_type: convTransformerMM2``).
    """
    return _Converter(raw, source).run()


class _Converter:
    def __init__(self, raw: Mapping[str, Any], source: str) -> None:
        self.raw, self.source = raw, source
        self.notes: List[str] = []
        self.out: Dict[str, Any] = {}

    # ------------------------------------------------------------------ errors
    def _err(self, key: str, expected: str, got: Any = ..., what: str = "unsupported value for") \
            -> UserError:
        tail = "" if got is ... else f", got {fmt(got)}"
        return UserError(f"{what} original config key '{key}' ({self.source}): {expected}{tail}")

    def _given(self, dotted: str) -> bool:
        try:
            get_dotted(self.raw, dotted)
            return True
        except (KeyError, TypeError):
            return False

    def _require(self, dotted: str, doc: str) -> Any:
        value = get_dotted(self.o, dotted) if self._given(dotted) else None
        if value is None:
            raise self._err(dotted, doc, what="missing")
        return value

    def _int(self, dotted: str, value: Any, lo: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise self._err(dotted, f"expected an integer >= {lo}", value, what="wrong value for")
        return value

    def _int_list(self, dotted: str, value: Any, n: Optional[int], doc: str) -> List[int]:
        if not isinstance(value, (list, tuple)) or (n is not None and len(value) != n):
            count = "" if n is None else f"{n} "
            raise self._err(dotted, f"expected a list of {count}integers ({doc})", value,
                            what="wrong value for")
        return [self._int(f"{dotted}[{i}]", v) for i, v in enumerate(value)]

    # ------------------------------------------------------------------ steps
    def run(self) -> Tuple[dict, List[str]]:
        if not isinstance(self.raw, dict):
            raise UserError(f"wrong top level in config file ({self.source}): expected a mapping")
        self.dataset_name = self._dataset_name()
        self._check_keys()
        self.o = merge_defaults(ORIGINAL_DEFAULTS, self.raw)
        self._renames()
        self._dataset()
        self._model()
        self._test_cfg()
        self._our_only()
        return self.out, self.notes

    def _dataset_name(self) -> str:
        name = self.raw.get("dataset_name")
        if name is None:
            ds = self.raw.get("dataset")
            name = "perception_tal_mm" if isinstance(ds, dict) and "feat_folder_list" in ds \
                else "perception"
            self.notes.append(f"dataset_name not set (the original's default 'epic' does not apply "
                              f"here): '{name}' inferred from the dataset keys")
        if not isinstance(name, str) or name not in DATASET_KEYS:
            raise self._err("dataset_name", "expected 'perception' (TSL) or 'perception_tal_mm' (TAL)",
                            name)
        return name

    def _check_keys(self) -> None:
        sections = {"": TOP_KEYS, "dataset": DATASET_KEYS[self.dataset_name],
                    "model": tuple(ORIGINAL_DEFAULTS["model"]) + MODEL_COPIES}
        for sec in ("loader", "train_cfg", "test_cfg", "opt"):
            sections[sec] = tuple(ORIGINAL_DEFAULTS[sec])
        errs = []
        for sec, valid in sections.items():
            node = self.raw.get(sec) if sec else self.raw
            if node is None:
                continue
            if not isinstance(node, dict):
                raise self._err(sec, "expected a mapping of keys", node, what="wrong type for")
            pre = f"{sec}." if sec else ""
            for k in (k for k in node if k not in valid):
                near = difflib.get_close_matches(str(k), list(valid), n=1, cutoff=0.6)
                hint = f"did you mean '{pre}{near[0]}'?" if near else f"valid keys are {', '.join(valid)}"
                errs.append(f"unknown config key '{pre}{k}' ({self.source}, original layout): {hint}")
        if len(errs) == 1:
            raise UserError(errs[0])
        if errs:
            raise UserError(format_problems(errs, f"{len(errs)} config problems ({self.source})"))

    def _renames(self) -> None:
        defaulted = []
        for old, new in RENAMES.items():
            if old == "output_folder" and not self._given(old):
                continue            # the original had no default for it: ours applies
            value = plain(get_dotted(self.o, old))
            put_dotted(self.out, new, value)
            if not self._given(old) and value != _schema_default(new):
                defaulted.append(f"{new} {fmt(value)}")
        devices = self.o["devices"]
        n_dev = len(devices) if isinstance(devices, (list, tuple)) and devices else 1
        for key in ("opt.learning_rate", "loader.num_workers") if n_dev > 1 else ():
            value = get_dotted(self.out, key)
            if isinstance(value, str) and FLOAT_STR.match(value.strip()):
                value = float(value)          # PyYAML reads 1e-4 as a string
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                put_dotted(self.out, key, value * n_dev)
        if self._given("devices"):
            self.notes.append(f"devices {fmt(devices)} dropped: pick the device with --device" + (
                f"; learning_rate and num_workers multiplied by {n_dev} as the original did"
                if n_dev > 1 else ""))
        renamed = [f"{o} -> {n}" for o, n in RENAMES.items() if o != n and self._given(o)]
        if renamed:
            self.notes.append("renamed: " + ", ".join(renamed))
        if defaulted:
            self.notes.append("keys not in the file take the original's defaults: "
                              + ", ".join(defaulted))
        if self._given("train_cfg.head_empty_cls") and self.o["train_cfg"]["head_empty_cls"]:
            self.notes.append("train_cfg.head_empty_cls dropped: the original's train.py replaced it "
                              "with [] (no empty classes)")
        if self._given("dataset.file_prefix"):
            self.notes.append("dataset.file_prefix dropped: the original never used it")
        for k in MODEL_COPIES:
            if self._given(f"model.{k}"):
                self.notes.append(f"model.{k} dropped: the original overwrote it with the "
                                  f"{'dataset' if k in MODEL_COPIES[:3] else k} value")

    def _dataset(self) -> None:
        ds = self.o["dataset"]
        task = self._require("dataset.task", f"the task, one of {', '.join(TASKS)}")
        if task not in TASKS:
            raise self._err("dataset.task", f"expected one of {', '.join(TASKS)}", task)
        self.out["task"] = task
        self._require("dataset.json_file", "the annotation JSON")
        if ds["default_fps"] is None:
            raise self._err("dataset.default_fps", "expected the feature clock's frame rate (per-video "
                            "'fps' from the annotation file is not supported)", None)
        force = ds["force_upsampling"]
        if ds["downsample_rate"] != 1:
            if force:
                self.notes.append("dataset.downsample_rate dropped: unused with force_upsampling")
            else:
                raise self._err("dataset.downsample_rate", "expected 1 (feature downsampling is not "
                                "supported)", ds["downsample_rate"])
        modality = self._require("dataset.input_modality", "'multi', 'audio' or 'video'")
        single = ("audio", "video") if self.dataset_name == "perception" else ("video",)
        if modality != "multi" and modality not in single:
            raise self._err("dataset.input_modality", "expected " + " or ".join(
                repr(m) for m in ("multi",) + single), modality)
        if modality == "multi":
            self._require("dataset.mm_feat_folder", "the second feature folder for input_modality "
                                                    "multi")
        elif self._given("dataset.mm_feat_folder") and ds["mm_feat_folder"] is not None:
            self.notes.append(f"dataset.mm_feat_folder dropped: unused with input_modality "
                              f"{modality!r}")
        if self.dataset_name == "perception":
            mods = self._tsl_modalities(modality)
            stride, nframes = ds["feat_stride"], ds["num_frames"]
        else:
            mods, stride, nframes = self._tal_modalities(modality)
        if not (isinstance(stride, (int, float)) and stride > 0):
            raise self._err("dataset.feat_stride", "expected a number > 0 (the fixed-length-feature "
                            "grid is not supported)", stride)
        self.out["dataset"].update(modalities=mods, time_grid="stride", feat_stride=stride,
                                   num_frames=nframes)
        self.notes.append(f"time grid: time_grid 'stride' (the original's arithmetic), fps = "
                          f"default_fps {fmt(ds['default_fps'])}, feat_stride {stride}, num_frames "
                          f"{nframes}, force_upsampling {fmt(force)}")

    def _tsl_modalities(self, modality: str) -> List[dict]:
        ds = self.o["dataset"]
        folder = self._require("dataset.feat_folder", "the primary feature folder")
        ext = self._require("dataset.file_ext", "the primary feature extension (.npy)")
        if ext not in (".npy", ".pt"):
            raise self._err("dataset.file_ext", "expected '.npy' or '.pt'", ext)
        total = self._int("dataset.input_dim", ds["input_dim"])
        if modality != "multi":
            self.notes.append(f"modalities: {modality} ({folder}, {total}-d, primary)")
            return [{"name": modality, "path": folder, "ext": ext, "dim": total, "primary": True}]
        video_folder = ds["mm_feat_folder"]
        vdim = probe_pt_dim(video_folder)
        how = f"read from a file in {video_folder}"
        if vdim is None:
            vdim, how = DEFAULT_VIDEO_DIM, f"assumed (no readable .pt file in {video_folder})"
        if total <= vdim:
            raise self._err("dataset.input_dim", f"expected more than the video features' width "
                            f"{vdim} (audio + video channels)", total, what="wrong value for")
        self.notes.append(f"modalities: audio (feat_folder, {total - vdim}-d = input_dim {total} - "
                          f"video {vdim}, primary) then video (mm_feat_folder, .pt, {vdim}-d {how}, "
                          f"endpoint-resampled to the audio rows as the original's interp1d)")
        return [{"name": "audio", "path": folder, "ext": ext, "dim": total - vdim, "primary": True},
                {"name": "video", "path": video_folder, "ext": ".pt", "dim": vdim,
                 "resample": "endpoint"}]

    def _tal_modalities(self, modality: str) -> Tuple[List[dict], Any, Any]:
        ds = self.o["dataset"]
        folders = self._require("dataset.feat_folder_list", "the video feature folders")
        if not isinstance(folders, (list, tuple)) or not folders:
            raise self._err("dataset.feat_folder_list", "expected a non-empty list of folders",
                            folders, what="wrong value for")
        n = len(folders)
        lists = {}
        for key in ("file_ext_list", "feat_stride_list", "num_frames_list"):
            value = self._require(f"dataset.{key}", "one entry per dataset.feat_folder_list entry")
            if not isinstance(value, (list, tuple)) or len(value) != n:
                raise self._err(f"dataset.{key}", f"expected a list of {n} items (one per "
                                f"dataset.feat_folder_list entry)", value, what="wrong value for")
            lists[key] = list(value)
        for i, ext in enumerate(lists["file_ext_list"]):
            if ext not in (".npy", ".pt"):
                raise self._err(f"dataset.file_ext_list[{i}]", "expected '.npy' or '.pt'", ext)
        n_in = n + (2 if modality == "multi" else 0)
        dims = self._int_list("dataset.input_dim", ds["input_dim"], n_in,
                              "one per video family" + (", then the two stacked audio rows"
                                                        if modality == "multi" else ""))
        mods: List[dict] = []
        for i, folder in enumerate(folders):
            mods.append({"name": modality_name(folder, [m["name"] for m in mods]), "path": folder,
                         "ext": lists["file_ext_list"][i], "dim": dims[i], "primary": i == 0})
            if i:
                mods[-1]["resample"] = "centre"
        if modality == "multi":
            if dims[n] != dims[n + 1]:
                raise self._err("dataset.input_dim", "expected equal widths for the two stacked audio "
                                "rows (the last two entries)", ds["input_dim"], what="wrong value for")
            mods.append({"name": "audio" if "audio" not in [m["name"] for m in mods] else "audio_2",
                         "path": ds["mm_feat_folder"], "ext": ".npy", "dim": dims[n],
                         "rows_per_step": 2, "resample": "endpoint"})
        self.notes.append("modalities: " + ", ".join(
            f"{m['name']} ({m['dim']}-d" + (", primary" if m.get("primary") else
                                            f", x{m['rows_per_step']} rows" if "rows_per_step" in m
                                            else ", centre-resampled") + ")" for m in mods)
            + "; the first feat_folder_list family sets the grid (the original took the longest "
              "family, the same when lengths match); feat_stride/num_frames from its list entries")
        for key in ("feat_stride", "num_frames"):
            if self._given(f"dataset.{key}"):
                self.notes.append(f"dataset.{key} dropped: unused by perception_tal_mm")
        return mods, lists["feat_stride_list"][0], lists["num_frames_list"][0]

    def _model(self) -> None:
        m, model = self.o["model"], self.out["model"]
        arch = (self.o["model_name"], m["backbone_type"])
        tsl = self.dataset_name == "perception"
        if arch not in (("LocPointTransformer", "convTransformer"),
                        ("LocPointTransformerMM1", "convTransformerMM1")):
            key = "model.backbone_type" if arch[0] in ("LocPointTransformer",
                                                       "LocPointTransformerMM1") else "model_name"
            raise self._err(key, "expected model_name LocPointTransformer with backbone_type "
                            "convTransformer, or LocPointTransformerMM1 with convTransformerMM1",
                            get_dotted(self.o, key))
        if tsl != (arch[0] == "LocPointTransformer"):
            want = "LocPointTransformer" if tsl else "LocPointTransformerMM1"
            raise self._err("model_name", f"expected {want!r} with dataset_name "
                            f"{self.dataset_name!r}", arch[0])
        wins = m["n_mha_win_size"]
        if isinstance(wins, int) and not isinstance(wins, bool):   # one window for every level
            bb = m["backbone_arch"]
            ok = isinstance(bb, (list, tuple)) and len(bb) == 3 and isinstance(bb[2], int)
            model["n_mha_win_size"] = [wins] * (bb[2] + 1 if ok else 6)
        else:
            model["n_mha_win_size"] = plain(wins)
        if tsl:
            if m["fused_embd"] is not None:
                raise self._err("model.fused_embd", "expected null with LocPointTransformer (only "
                                "LocPointTransformerMM1 fuses)", m["fused_embd"])
            model.update(backbone="single_stream", embd_dim=m["embd_dim"])
        else:
            dims = self.out["dataset"]["modalities"]
            in_dims = [d["dim"] for d in dims for _ in range(d.get("rows_per_step", 1))]
            proj = self._int_list("model.embd_dim", m["embd_dim"], len(in_dims),
                                  "the projection width of each dataset.input_dim group")
            width = self._int("model.fused_embd", m["fused_embd"])
            model.update(backbone="fusion", embd_dim=width, proj_dims=proj)
            self.notes.append(f"model: backbone 'fusion' (convTransformerMM1); model.embd_dim "
                              f"{proj} -> model.proj_dims (one 1x1 projection per input group: "
                              f"video families, then each stacked audio row); model.fused_embd "
                              f"-> model.embd_dim {width}")

    def _test_cfg(self) -> None:
        t = self.o["test_cfg"]
        if t["nms_method"] not in ("soft", "hard"):
            raise self._err("test_cfg.nms_method", "expected 'soft' or 'hard'", t["nms_method"])
        nms = self.out["test_cfg"].setdefault("nms", {})
        nms["method"] = "gaussian" if t["nms_method"] == "soft" else "hard"
        self.notes.append(f"test_cfg.nms_method {fmt(t['nms_method'])} -> test_cfg.nms.method "
                          f"{fmt(nms['method'])}")
        if t["nms_method"] == "soft":
            if self._given("test_cfg.iou_threshold"):
                self.notes.append("test_cfg.iou_threshold dropped: unused by Gaussian soft-NMS")
        else:
            nms["iou_threshold"] = t["iou_threshold"]
        if t["multiclass_nms"] is False:
            nms["voting_thresh"] = t["voting_thresh"]
        elif self._given("test_cfg.voting_thresh"):
            self.notes.append("test_cfg.voting_thresh dropped: unused with multiclass_nms")

    def _our_only(self) -> None:
        put_dotted(self.out, "train.ema_warmup", True)
        put_dotted(self.out, "train.eval_freq", 0)
        put_dotted(self.out, "dataset.on_missing", "error")
        put_dotted(self.out, "dataset.end_tolerance", END_TOLERANCE)
        self.notes.append("set to match the original: train.eval_freq 0 (no validation while "
                          f"training), dataset.end_tolerance {END_TOLERANCE:g} s (event ends were "
                          "never checked)")
        self.notes.append("train.ema_warmup true, unlike the original's fixed EMA decay: the EMA "
                          "weights (what is evaluated and saved) follow the training from the first "
                          "updates instead of staying near the initial weights on short runs; the "
                          "raw weights are trained identically (docs/differences.md s.2.3); "
                          "--opt train.ema_warmup=false reproduces the original's EMA")
        self.notes.append("dataset.on_missing 'error': a missing or unreadable feature file is an "
                          "error (the original silently substituted another video or zero-filled)")


def _schema_default(dotted: str) -> Any:
    spec: Any = SCHEMA
    for part in dotted.split("."):
        spec = spec[part]
    return plain(spec.default)
