"""Bad-input battery, part 1: ``train.py`` on broken configs, annotations, feature files, command
lines and resume checkpoints (tests/cli/bad_inputs_common.py says what each case asserts)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import train as train_cli
from bad_inputs_common import assert_one_line_error, bad_inputs_base, ws  # noqa: F401 (fixtures)

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


# ---------------------------------------------------------------- configs
@case
def config_missing(w):
    return w.train_argv()[:0] + [str(w.root / "nope.yaml"), *w.train_argv()[1:]], ["nope.yaml"]


@case
def config_yaml_syntax(w):
    w.config.write_text("dataset: [unclosed\n  x: 1\n")
    return w.train_argv(), ["cfg.yaml"]


@case
def config_top_level_list(w):
    w.config.write_text("- 1\n- 2\n")
    return w.train_argv(), ["cfg.yaml"]


@case
def config_not_utf8(w):
    w.config.write_bytes(w.config.read_bytes() + b"\n# caf\xe9\n")
    return w.train_argv(), ["cfg.yaml"]


@case
def config_key_typo(w):
    cfg = w.config_dict()
    cfg["opt"]["learning_rat"] = 0.1
    w.write_config(cfg)
    return w.train_argv(), ["did you mean 'opt.learning_rate'?", "cfg.yaml"]


@case
def config_wrong_type(w):
    cfg = w.config_dict()
    cfg["loader"]["batch_size"] = "abc"
    w.write_config(cfg)
    return w.train_argv(), ["'loader.batch_size'", "cfg.yaml"]


@case
def config_out_of_range(w):
    cfg = w.config_dict()
    cfg["dataset"]["trunc_thresh"] = 1.5
    w.write_config(cfg)
    return w.train_argv(), ["'dataset.trunc_thresh'"]


@case
def config_bad_choice(w):
    cfg = w.config_dict()
    cfg["opt"]["schedule_type"] = "linear"
    w.write_config(cfg)
    return w.train_argv(), ["opt.schedule_type", "linear"]


@case
def config_two_primary_modalities(w):
    cfg = w.config_dict()
    for m in cfg["dataset"]["modalities"]:
        m["primary"] = True
    w.write_config(cfg)
    return w.train_argv(), ["primary"]


@case
def config_modality_dim_differs_from_files(w):
    cfg = w.config_dict()
    cfg["dataset"]["modalities"][0]["dim"] = 9
    w.write_config(cfg)
    return w.train_argv(), ["audio"]


@case
def config_modality_folder_missing(w):
    cfg = w.config_dict()
    cfg["dataset"]["modalities"][1]["path"] = str(w.root / "no_such_feats")
    w.write_config(cfg)
    return w.train_argv(), ["no_such_feats"]


@case
def opt_without_equals(w):
    return w.train_argv("--opt", "opt.epochs"), ["opt.epochs"]


@case
def opt_unknown_key(w):
    return w.train_argv("--opt", "model.embd_dimm=3"), ["model.embd_dimm"]


# ---------------------------------------------------------------- annotations
@case
def annotations_missing(w):
    w.ann_path.unlink()
    return w.train_argv(), [w.ann_path.name]


@case
def annotations_empty(w):
    w.ann_path.write_text("")
    return w.train_argv(), [w.ann_path.name]


@case
def annotations_invalid_json(w):
    w.ann_path.write_text('{"video_0000": {"metadata": ')
    return w.train_argv(), [w.ann_path.name]


@case
def annotations_top_level_list(w):
    w.write_annotations([1, 2, 3])
    return w.train_argv(), [w.ann_path.name]


@case
def annotations_not_utf8(w):          # engineer A's case
    w.ann_path.write_bytes(w.ann_path.read_bytes().replace(b'"class_', b'"cl\xe9ss_', 1))
    return w.train_argv(), [w.ann_path.name]


@case
def annotations_duplicate_video_id(w):   # engineer A's case
    vid, other = w.video("train", 0), w.video("train", 1)
    text = w.ann_path.read_text()
    start = text.index(f'"{other}": ')
    w.ann_path.write_text(text[:start] + f'"{vid}": ' + text[start + len(f'"{other}": '):])
    return w.train_argv(), [vid]


@case
def annotations_conflicting_label_names(w):   # engineer A's case
    ann = w.annotations()
    vid = w.video("train", 2)
    ev = ann[vid]["sound_localisation"][0]
    ev["label"] = "odd_name"
    w.write_annotations(ann)
    return w.train_argv(), [vid, "odd_name", f"class_{ev['label_id']}"]


@case
def annotations_video_id_with_path_separator(w):   # engineer A's case
    ann = w.annotations()
    vid = w.video("train", 0)
    entry = ann.pop(vid)
    entry["metadata"]["video_id"] = "../../x"
    ann["../../x"] = entry
    w.write_annotations(ann)
    return w.train_argv(), ["../../x"]


@case
def annotations_label_out_of_range(w):
    ann = w.annotations()
    vid = w.video()
    ann[vid]["sound_localisation"][0]["label_id"] = 99
    w.write_annotations(ann)
    return w.train_argv(), [vid]


@case
def annotations_reversed_timestamps(w):
    ann = w.annotations()
    vid = w.video()
    ev = ann[vid]["sound_localisation"][0]
    ev["timestamps"] = ev["timestamps"][::-1]
    w.write_annotations(ann)
    return w.train_argv(), [vid]


@case
def annotations_negative_timestamp(w):
    ann = w.annotations()
    vid = w.video()
    ann[vid]["sound_localisation"][0]["timestamps"][0] = -5_000_000
    w.write_annotations(ann)
    return w.train_argv(), [vid]


@case
def annotations_unknown_split(w):
    ann = w.annotations()
    vid = w.video()
    ann[vid]["metadata"]["split"] = "training"
    w.write_annotations(ann)
    return w.train_argv(), [vid]


@case
def annotations_missing_task_key(w):
    ann = w.annotations()
    vid = w.video()
    del ann[vid]["sound_localisation"]
    w.write_annotations(ann)
    return w.train_argv(), [vid]


@case
def annotations_zero_frames(w):
    ann = w.annotations()
    vid = w.video()
    ann[vid]["metadata"]["num_frames"] = 0
    w.write_annotations(ann)
    return w.train_argv(), [vid]


# ---------------------------------------------------------------- feature files
@case
def feature_corrupt_npy(w):
    vid = w.video()
    w.feature("audio", vid).write_bytes(b"not a numpy file")
    return w.train_argv(), [vid]


@case
def feature_wrong_dim(w):
    vid = w.video()
    np.save(w.feature("video", vid), np.zeros((5, 7), np.float32))
    return w.train_argv(), [vid]


@case
def feature_missing(w):
    vid = w.video()
    w.feature("video", vid).unlink()
    return w.train_argv(), [vid]


@case
def feature_no_rows(w):
    vid = w.video()
    np.save(w.feature("audio", vid), np.zeros((0, 8), np.float32))
    return w.train_argv(), [vid]


@case
def feature_nan(w):
    vid = w.video()
    a = np.load(w.feature("audio", vid))
    a[2:4] = np.nan
    np.save(w.feature("audio", vid), a)
    # values are checked at the video's first read (epoch 1), after the new run folder holds its
    # config and log (no checkpoint): that folder goes outside the tree checked for changes
    return w.train_argv("--opt", f"output_folder={w.root.parent / 'first_read_runs'}"), \
        [vid, "audio", "non-finite values", "dataset.on_nonfinite: zero"]


@case
def feature_1d_array(w):
    vid = w.video()
    np.save(w.feature("video", vid), np.zeros(12, np.float32))
    return w.train_argv(), [vid]


# ---------------------------------------------------------------- command line
@case
def cli_threads_zero(w):
    return w.train_argv("--threads", "0"), ["--threads 0"]


@case
def cli_unknown_flag(w):
    return w.train_argv("--frobnicate"), ["--frobnicate"]


@case
def cli_bad_device(w):
    return w.train_argv("--device", "tpu"), ["tpu"]


@case
def cli_resume_auto_without_output(w):
    argv = w.train_argv("--resume", "auto")
    i = argv.index("--output")
    return argv[:i] + argv[i + 2:], ["--resume auto", "--output NAME"]


@case
def cli_resume_override_without_resume(w):
    return w.train_argv("--resume-override", "opt.epochs"), ["--resume-override"]


@case
def cli_resume_override_not_allowed(w):
    return w.train_argv("--resume", str(w.ckpt), "--resume-override", "model.embd_dim"), \
        ["model.embd_dim", "cannot change on resume"]


# ---------------------------------------------------------------- resume checkpoints
@case
def resume_missing_file(w):
    return w.train_argv("--resume", str(w.run / "epoch_009.pth.tar")), ["epoch_009.pth.tar"]


@case
def resume_garbage_file(w):
    (w.run / "junk.pth.tar").write_bytes(b"\x00garbage" * 10)
    return w.train_argv("--resume", str(w.run / "junk.pth.tar")), ["junk.pth.tar"]


@case
def resume_pickled_object(w):
    torch.save({"obj": torch.nn.Linear(2, 2)}, w.run / "obj.pth.tar")
    return w.train_argv("--resume", str(w.run / "obj.pth.tar")), ["obj.pth.tar", "refused"]


@case
def resume_without_rng_state(w):
    ck = torch.load(w.ckpt, weights_only=True)
    del ck["rng_state"]
    torch.save(ck, w.run / "norng.pth.tar")
    return w.train_argv("--resume", str(w.run / "norng.pth.tar")), ["norng.pth.tar", "rng_state"]


@case
def resume_other_width(w):
    return w.train_argv("--resume", str(w.ckpt), "--opt", "model.embd_dim=32"), \
        ["model.embd_dim: 16 vs 32"]


@case
def resume_changed_learning_rate(w):
    return w.train_argv("--resume", str(w.ckpt), "--opt", "opt.learning_rate=0.5"), \
        ["opt.learning_rate: 0.001 vs 0.5"]


@case
def resume_empty_run_folder(w):
    (w.root / "empty_run").mkdir()
    return w.train_argv("--resume", str(w.root / "empty_run")), ["empty_run", "no loadable"]


@pytest.mark.parametrize("name", list(CASES))
def test_train_bad_input(ws, capsys, name):  # noqa: F811 (fixture)
    argv, needles = CASES[name](ws)
    assert_one_line_error(capsys, train_cli.main, argv, needles, ws.root)
