"""Cross-field checks of a type-checked config and the derived values, each computed once at load.

The checks are constraints between keys that one key's type/range cannot express (one primary
modality, window/level counts, divisibility of ``dataset.max_seq_len``, ...); each problem is one
message naming the key and the file. :func:`compute_derived` gives the ``derived`` section.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from libs.config.spec import SCHEMA, show_value


def level_div_factors(strides: Sequence[int], windows: Sequence[int]) -> List[int]:
    """Per pyramid level, the multiple its input length must be: ``s * (w // 2) * 2`` for a local
    attention window ``w > 1``, else ``s`` (global attention), with ``s`` the level's stride."""
    return [s * (w // 2) * 2 if w > 1 else s for s, w in zip(strides, windows)]


def _level_factors(model_cfg: Mapping[str, Any]) -> List[int]:
    strides = [model_cfg["scale_factor"] ** lvl for lvl in range(model_cfg["backbone_arch"][2] + 1)]
    return level_div_factors(strides, model_cfg["n_mha_win_size"])


def input_groups(modalities: Sequence[Mapping[str, Any]], backbone: str,
                 proj_dims: Optional[Sequence[int]]) -> Tuple[List[int], Optional[List[int]]]:
    """``(input channel groups, projection width per group or None)`` of the backbone.

    ``single_stream``: one group per modality (``dim * rows_per_step`` channels), no projection.
    ``fusion``: one group per stacked row (``rows_per_step`` groups of ``dim`` channels per
    modality, the original TAL layout: BEATs 768 x 2 -> 768, 768) unless ``proj_dims`` has one entry
    per modality (and another count of row groups), then one group per modality. With
    ``proj_dims`` null each group keeps its width.
    """
    modal = [m["dim"] * m["rows_per_step"] for m in modalities]
    if backbone != "fusion":
        return modal, None
    rows = [m["dim"] for m in modalities for _ in range(m["rows_per_step"])]
    if proj_dims is None:
        return rows, list(rows)
    if len(proj_dims) == len(rows):
        return rows, list(proj_dims)
    return modal, list(proj_dims)


def task_list(task: Any) -> List[str]:
    """``task`` (one name or a list of names) as a list."""
    return [task] if isinstance(task, str) else list(task)


def compute_derived(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``derived`` section of a checked config (see ``libs.config.schema.Derived``)."""
    mods, model = cfg["dataset"]["modalities"], cfg["model"]
    dims = [m["dim"] * m["rows_per_step"] for m in mods]
    groups, proj = input_groups(mods, model["backbone"], model["proj_dims"])
    tasks = task_list(cfg["task"])
    n = cfg["dataset"]["num_classes"]
    counts = [n[t] for t in tasks] if isinstance(n, dict) else [n]
    offsets = [sum(counts[:i]) for i in range(len(counts))]
    return {"input_dims": dims, "input_dim": sum(dims), "input_groups": groups,
            "group_proj_dims": proj, "max_div_factor": max(_level_factors(model)),
            "tasks": tasks, "task_num_classes": counts, "class_offsets": offsets,
            "num_classes": sum(counts)}


def _task_key_problems(cfg: Mapping[str, Any], err) -> None:
    """Per-task keys against the task list (see the schema's per-task convention)."""
    tasks = task_list(cfg["task"])
    if len(set(tasks)) < len(tasks):
        err("task", f"expected each task once, got {show_value(tasks)}")
    ds = cfg["dataset"]
    per_task = [("dataset.num_classes", ds["num_classes"]),
                ("train_cfg.task_loss_weight", cfg["train_cfg"]["task_loss_weight"]),
                ("train_cfg.cls_prior_prob", cfg["train_cfg"]["cls_prior_prob"]),
                ("test_cfg.per_task", cfg["test_cfg"]["per_task"] or {})]
    for name, value in per_task:
        if not isinstance(value, dict):
            continue
        missing = [t for t in tasks if t not in value]
        extra = [t for t in value if t not in tasks]
        if extra:
            err(name, f"{show_value(extra)} not listed in 'task' ({show_value(tasks)}): expected "
                f"keys among the listed tasks")
        if missing and name != "test_cfg.per_task":
            err(name, f"no value for task(s) {show_value(missing)}: expected one number, or a "
                f"mapping naming every task of 'task'")
    if isinstance(ds["num_classes"], dict) and len(tasks) == 1:
        err("dataset.num_classes", f"expected an int with one task ({show_value(tasks[0])}), got "
            f"{show_value(ds['num_classes'])}")
    elif not isinstance(ds["num_classes"], dict) and len(tasks) > 1:
        err("dataset.num_classes", f"expected a mapping {{task: count}} for the tasks "
            f"{show_value(tasks)}, got {show_value(ds['num_classes'])}")
    test = cfg["test_cfg"]
    if len(tasks) > 1 and test["ext_score_file"] is not None:
        err("test_cfg.ext_score_file", "external class scores work with one task: expected null "
            f"with the tasks {show_value(tasks)}")
    if len(tasks) > 1 and cfg["train"]["accum_steps"] > 1:
        err("train.accum_steps", f"expected 1 with several tasks (each task's loss normaliser "
            f"would need its own gradient correction), got {cfg['train']['accum_steps']}")
    if cfg["model"]["modality_dropout"] > 0 and len(ds["modalities"]) < 2:
        err("model.modality_dropout", f"needs 2 or more modalities: expected 0 with one "
            f"modality, got {cfg['model']['modality_dropout']}")


def check_cross_fields(cfg: dict, source: str) -> List[str]:
    """Checks between keys of a type-checked config; also fills modality ``ext``/``primary``."""
    errs: List[str] = []

    def err(key: str, expected: str, what: str = "config key") -> None:
        errs.append(f"{what} '{key}' ({source}): {expected}")

    ds, model = cfg["dataset"], cfg["model"]
    mods = ds["modalities"]
    seen = set()
    for i, m in enumerate(mods):
        if m["name"] in seen:
            err(f"dataset.modalities[{i}].name",
                f"expected unique modality names, got {show_value(m['name'])} twice")
        seen.add(m["name"])
        is_h5 = m["path"].lower().endswith(".h5")
        if m["ext"] is None:
            m["ext"] = ".h5" if is_h5 else ".npy"
        elif (m["ext"] == ".h5") != is_h5:
            err(f"dataset.modalities[{i}].ext", "expected '.h5' exactly when the path ends in "
                f".h5, got ext {show_value(m['ext'])} with path {show_value(m['path'])}")
    if len(mods) == 1 and not mods[0]["primary"]:
        mods[0]["primary"] = True
    primaries = [m["name"] for m in mods if m["primary"]]
    if len(primaries) != 1:
        err("dataset.modalities", f"exactly one modality must have primary: true, got "
            f"{len(primaries)}" + (f" ({', '.join(primaries)})" if primaries else ""))
    for i, m in enumerate(mods):
        if m["primary"] and m["rows_per_step"] != 1:
            err(f"dataset.modalities[{i}].rows_per_step",
                f"the primary modality must use 1, got {m['rows_per_step']}")
    if ds["time_grid"] == "stride" and ds["fps"] is None:
        err("dataset.fps", f"required with dataset.time_grid 'stride': "
            f"{SCHEMA['dataset']['fps'].doc}", what="missing config key")
    crop = ds["crop_ratio"]
    if crop is not None and not 0 < crop[0] <= crop[1]:
        err("dataset.crop_ratio", f"expected [lo, hi] with 0 < lo <= hi, got {show_value(crop)}")

    n_levels = model["backbone_arch"][2] + 1
    wins, start = model["n_mha_win_size"], model["fpn_start_level"]
    ranges = model["regression_range"]
    if len(wins) != n_levels:
        err("model.n_mha_win_size", f"expected {n_levels} items (1 + model.backbone_arch[2]), got "
            f"{len(wins)}", what="wrong length for config key")
    if start >= n_levels:
        errs.append(f"config key 'model.fpn_start_level' out of range ({source}): expected value "
                    f"<= {n_levels - 1} (model.backbone_arch[2]), got {start}")
    elif len(ranges) != n_levels - start:
        err("model.regression_range", f"expected {n_levels - start} items (1 + "
            f"model.backbone_arch[2] - model.fpn_start_level), got {len(ranges)}",
            what="wrong length for config key")
    for i, pair in enumerate(ranges):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
        if not (len(pair) == 2 and numbers and pair[0] < pair[1]):
            err(f"model.regression_range[{i}]",
                f"expected a pair [lo, hi] of numbers with lo < hi, got {show_value(pair)}")
    for k in ("embd_dim", "fpn_dim", "head_dim"):
        if model[k] is not None and model[k] % model["n_head"]:
            err(f"model.{k}", f"expected a multiple of model.n_head ({model['n_head']}), "
                f"got {model[k]}")
    for k in ("embd_kernel_size", "head_kernel_size"):
        if model[k] % 2 == 0:
            err(f"model.{k}", f"expected an odd kernel size, got {model[k]}")
    proj = model["proj_dims"]
    if proj is not None and model["backbone"] != "fusion":
        err("model.proj_dims", f"only allowed with model.backbone 'fusion', got backbone "
            f"{show_value(model['backbone'])}")
    elif proj is not None and len(proj) not in (len(mods), sum(m["rows_per_step"] for m in mods)):
        groups = sum(m["rows_per_step"] for m in mods)
        err("model.proj_dims", f"expected {len(mods)} items (one per modality) or {groups} (one per "
            f"stacked row group), got {len(proj)}", what="wrong length for config key")
    if model["neck"] == "identity" and model["fpn_dim"] not in (None, model["embd_dim"]):
        err("model.fpn_dim", f"the identity neck keeps the backbone width: expected null or "
            f"{model['embd_dim']} (model.embd_dim), got {model['fpn_dim']}")
    if cfg["train"]["accum_steps"] > 1 and cfg["train_cfg"]["loss_weight"] <= 0:
        err("train.accum_steps", f"expected 1 with train_cfg.loss_weight <= 0 (the balanced "
            f"regression weight depends on the whole batch), got {cfg['train']['accum_steps']}; "
            f"set train_cfg.loss_weight > 0 or accumulate nothing")
    _task_key_problems(cfg, err)
    n = ds["num_classes"]
    total = sum(n.values()) if isinstance(n, dict) else n
    bad_empty = [c for c in cfg["train_cfg"]["head_empty_cls"] if c >= total]
    if bad_empty:
        err("train_cfg.head_empty_cls", f"expected class ids below dataset.num_classes "
            f"({total}{' in all' if isinstance(n, dict) else ''}), got {bad_empty}")
    if len(wins) == n_levels:
        factors = _level_factors(model)
        bad = [f for f in [max(factors)] + factors if ds["max_seq_len"] % f]
        if bad:
            what = "the model's max_div_factor" if bad[0] == max(factors) else \
                "the stride x window factor of a pyramid level"
            err("dataset.max_seq_len", f"expected a multiple of {bad[0]} ({what}), "
                f"got {ds['max_seq_len']}")
    return errs
