"""Bad-input battery, part 2: ``eval.py`` (checkpoints, output paths checked before predicting,
arguments) and the submission tools (tests/cli/bad_inputs_common.py says what each case
asserts)."""
from __future__ import annotations

import json

import pytest
import torch

import eval as eval_cli
from bad_inputs_common import assert_one_line_error, bad_inputs_base, ws  # noqa: F401 (fixtures)
from tools import check_submission, fuse_results, pack_features, score_submission

TASK = "sound_localisation"
CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def _ckpt(w):
    return torch.load(w.ckpt, weights_only=True)


def _valid_out(w, *more):
    return w.eval_argv("--split", "valid", "--out", str(w.root / "new.json"), *more)


# ---------------------------------------------------------------- eval.py: checkpoints
@case
def eval_folder_without_checkpoints(w):
    (w.root / "empty_run").mkdir()
    return eval_cli.main, w.eval_argv(ckpt=w.root / "empty_run"), ["empty_run", "no checkpoints"]


@case
def eval_epoch_not_in_folder(w):
    return eval_cli.main, w.eval_argv("-epoch", "7"), ["epoch 7", "available epochs: 1"]


@case
def eval_checkpoint_not_a_dict(w):
    torch.save([1, 2], w.run / "list.pth.tar")
    return eval_cli.main, w.eval_argv(ckpt=w.run / "list.pth.tar"), ["list.pth.tar", "expected a dict"]


@case
def eval_checkpoint_without_config(w):
    ck = _ckpt(w)
    del ck["config"]
    torch.save(ck, w.run / "noconf.pth.tar")
    return eval_cli.main, w.eval_argv(ckpt=w.run / "noconf.pth.tar"), ["noconf.pth.tar"]


@case
def eval_checkpoint_weights_do_not_fit(w):
    ck = _ckpt(w)
    key = next(k for k, v in ck["state_dict_ema"].items() if v.dim() == 3)
    ck["state_dict_ema"][key] = ck["state_dict_ema"][key][:, :-1]
    torch.save(ck, w.run / "shape.pth.tar")
    return eval_cli.main, w.eval_argv(ckpt=w.run / "shape.pth.tar"), ["shape.pth.tar",
                                                                      "does not match the model"]


@case
def eval_checkpoint_truncated(w):
    data = w.ckpt.read_bytes()
    (w.run / "cut.pth.tar").write_bytes(data[: len(data) // 2])
    return eval_cli.main, w.eval_argv(ckpt=w.run / "cut.pth.tar"), ["cut.pth.tar", "cannot read"]


@case
def eval_config_disagrees_with_architecture(w):
    cfg = w.config_dict()
    cfg["model"]["embd_dim"] = 32
    w.write_config(cfg)
    return eval_cli.main, w.eval_argv(), ["model.embd_dim", "disagrees with the checkpoint"]


# ---------------------------------------------------------------- eval.py: outputs and arguments
@case
def eval_out_under_a_file(w):
    (w.root / "afile").write_text("x")
    return eval_cli.main, w.eval_argv("--out", str(w.root / "afile" / "r.json")), \
        ["afile/r.json", "is a file, not a folder"]


@case
def eval_save_raw_under_a_file(w):
    (w.root / "afile").write_text("x")
    return eval_cli.main, _valid_out(w, "--save-raw", str(w.root / "afile" / "raw")), \
        ["afile/raw", "is a file"]


@case
def eval_report_under_a_file(w):
    (w.root / "afile").write_text("x")
    return eval_cli.main, _valid_out(w, "--report", str(w.root / "afile" / "rep")), \
        ["afile/rep", "is a file"]


@case
def eval_result_exists(w):
    return eval_cli.main, w.eval_argv("--out", str(w.out / "valid.json")), ["valid.json", "--overwrite"]


@case
def eval_topk_zero(w):
    return eval_cli.main, _valid_out(w, "-t", "0"), ["-t/--topk (0)"]


@case
def eval_unlabelled_split_without_saveonly(w):
    return eval_cli.main, w.eval_argv("--split", "test", "--out", str(w.root / "t.json")), \
        ["split test", "--saveonly"]


@case
def eval_report_with_saveonly(w):
    return eval_cli.main, _valid_out(w, "--saveonly", "--report", str(w.root / "rep")), \
        ["--report with --saveonly"]


@case
def eval_threads_zero(w):
    return eval_cli.main, _valid_out(w, "--threads", "0"), ["--threads 0"]


# ---------------------------------------------------------------- submissions
def _score(w, sub, *more, split="valid"):
    return [str(w.ann_path), str(sub), "--task", TASK, "--split", split, *more]


def _edit_submission(w, name, fn):
    sub = json.loads((w.out / name).read_text())
    fn(sub)
    path = w.root / f"edited_{name}"
    path.write_text(json.dumps(sub))
    return path


@case
def submission_missing(w):
    return score_submission.main, _score(w, w.root / "none.json"), ["none.json"]


@case
def submission_not_json(w):
    (w.root / "bad.json").write_text("{'single': quotes}")
    return score_submission.main, _score(w, w.root / "bad.json"), ["bad.json"]


@case
def submission_top_level_list(w):
    (w.root / "list.json").write_text("[]")
    return score_submission.main, _score(w, w.root / "list.json"), ["list.json"]


@case
def submission_label_outside_num_classes(w):   # engineer A's case
    vid = w.video("valid", 0)

    def relabel(sub):
        sub[vid][TASK][0]["label"] = 99
    path = _edit_submission(w, "valid.json", relabel)
    return score_submission.main, _score(w, path, "--num-classes", "3"), [vid, "99"]


@case
def submission_bad_num_classes_option(w):
    return score_submission.main, _score(w, w.out / "valid.json", "--num-classes", "0"), \
        ["--num-classes (0)"]


@case
def submission_json_under_a_file(w):
    (w.root / "afile").write_text("x")
    return score_submission.main, _score(w, w.out / "valid.json", "--json",
                                         str(w.root / "afile" / "m.json")), ["afile"]


@case
def check_missing_video(w):
    vid = w.video("test", 0)
    path = _edit_submission(w, "test.json", lambda sub: sub.pop(vid))
    return check_submission.main, _score(w, path, split="test"), [vid]


@case
def check_reversed_timestamps(w):
    vid = w.video("test", 0)

    def reverse(sub):
        d = sub[vid][TASK][0]
        d["timestamps"] = [d["timestamps"][1] + 1.0, d["timestamps"][0]]
    path = _edit_submission(w, "test.json", reverse)
    return check_submission.main, _score(w, path, split="test"), [vid]


@case
def check_non_finite_score(w):
    vid = w.video("test", 0)
    sub = json.loads((w.out / "test.json").read_text())
    sub[vid][TASK][0]["score"] = float("nan")
    path = w.root / "nan.json"
    path.write_text(json.dumps(sub))           # json writes NaN, as a careless tool would
    return check_submission.main, _score(w, path, split="test"), [vid]


@case
def check_missing_task_key(w):
    vid = w.video("test", 0)
    path = _edit_submission(w, "test.json", lambda sub: sub[vid].pop(TASK))
    return check_submission.main, _score(w, path, split="test"), [vid, TASK]


# ---------------------------------------------------------------- other tools
@case
def fuse_raw_folder_without_meta(w):
    (w.root / "raw").mkdir()
    return fuse_results.main, [str(w.root / "raw"), "--out", str(w.root / "f.json")], ["raw"]


@case
def pack_features_missing_folder(w):
    return pack_features.main, [str(w.root / "nofeats"), str(w.root / "x.h5")], ["nofeats"]


@pytest.mark.parametrize("name", list(CASES))
def test_eval_and_tools_bad_input(ws, capsys, name):  # noqa: F811 (fixture)
    main, argv, needles = CASES[name](ws)
    assert_one_line_error(capsys, main, argv, needles, ws.root)
