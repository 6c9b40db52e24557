"""Symbolic links inside run, fine-tune and score folders are refused, never followed (issue 17, item 1).

A planted ``RUN/metrics.jsonl -> /elsewhere/file`` used to make ``train --resume`` append to (and its
truncation rewrite) a file outside the run. Every path firepe writes is checked: one line naming it,
exit 2, the link's target untouched.
"""

import shutil

import pytest

from firepe.cli import main
from tests.helpers import TINY, one_line_error

OUTSIDE = "precious data\n"


@pytest.fixture
def run(tmp_path, text_corpus):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "2", "--seq-len", "32", "--corpus", str(text_corpus),
                 "--checkpoint-every", "1", *TINY]) == 0
    return out


def _plant(path, target):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.symlink_to(target)


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.json", ".lock", "checkpoints/latest", "tracking.json"])
def test_resume_refuses_a_linked_file(run, tmp_path, capsys, name):
    outside = tmp_path / "outside.txt"
    outside.write_text(OUTSIDE)
    if name == "config.json":  # a copy outside, so reading it is not what fails
        outside.write_text((run / "config.json").read_text())
    before = outside.read_text()
    _plant(run / name, outside)
    one_line_error(capsys, ["train", "--out", run, "--resume", "--steps", "4", "--no-progress"],
                   f"{name.split('/')[-1]} is a symbolic link")
    assert outside.read_text() == before


@pytest.mark.parametrize("name", ["checkpoints", "tensorboard"])
def test_resume_refuses_a_linked_folder(run, tmp_path, capsys, name):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    if name == "checkpoints":
        shutil.copytree(run / "checkpoints", outside, dirs_exist_ok=True)
    _plant(run / name, outside)
    before = sorted(p.name for p in outside.iterdir())
    one_line_error(capsys, ["train", "--out", run, "--resume", "--steps", "4", "--no-progress",
                            "--log-to", "tensorboard"], f"{name} is a symbolic link")
    assert sorted(p.name for p in outside.iterdir()) == before


def test_a_linked_checkpoint_folder_is_refused(run, tmp_path, capsys):
    ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
    outside = tmp_path / "ckpt"
    shutil.copytree(ckpt, outside)
    _plant(ckpt, outside)
    one_line_error(capsys, ["train", "--out", run, "--resume", "--steps", "4", "--no-progress"],
                   f"{ckpt.name} is a symbolic link")


def test_eval_refuses_to_write_through_a_linked_eval_json(run, tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text(OUTSIDE)
    (run / "eval.json").symlink_to(outside)
    one_line_error(capsys, ["eval", run, "--lengths", "32", "--val-tokens", "256", "--no-progress"],
                   "eval.json is a symbolic link")
    assert outside.read_text() == OUTSIDE


@pytest.mark.parametrize("name", ["score.json", "score.png", "score.md"])
def test_score_refuses_a_linked_output(run, tmp_path, capsys, name):
    out = tmp_path / "sc"
    out.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text(OUTSIDE)
    (out / name).symlink_to(outside)
    one_line_error(capsys, ["score", run, "--lengths", "32", "--depths", "0", "--examples", "1", "--filler",
                            "classic", "--no-progress", "--out", out], f"{name} is a symbolic link")
    assert outside.read_text() == OUTSIDE


def test_a_linked_temporary_name_is_not_followed(tmp_path):
    import os

    from firepe.runs import write_text

    outside = tmp_path / "outside.txt"
    outside.write_text(OUTSIDE)
    target = tmp_path / "file.txt"
    (tmp_path / f".file.txt.tmp-{os.getpid()}").symlink_to(outside)  # a planted temporary of this process
    write_text(target, "new")
    assert target.read_text() == "new" and outside.read_text() == OUTSIDE and not target.is_symlink()


def test_resume_without_the_checkpoints_of_logged_steps_is_refused(run, capsys):
    metrics = (run / "metrics.jsonl").read_text()
    shutil.rmtree(run / "checkpoints")
    one_line_error(capsys, ["train", "--out", run, "--resume", "--steps", "4", "--no-progress"],
                   r"logs steps up to 2 but .*checkpoints holds no checkpoint.*start over with a new --out")
    assert (run / "metrics.jsonl").read_text() == metrics


def test_a_kill_between_the_first_checkpoints_metrics_row_and_its_file_resumes_from_zero(tmp_path, text_corpus):
    out = tmp_path / "r"  # the row of step 1 is written, then the kill comes before checkpoint 1 is
    assert main(["train", "--out", str(out), "--steps", "3", "--seq-len", "32", "--corpus", str(text_corpus),
                 "--checkpoint-every", "1", "--log-every", "1", *TINY]) == 0
    shutil.rmtree(out / "checkpoints")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text(lines[0] + "\n")
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert [__import__("json").loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_run_killed_before_its_first_checkpoint_resumes_from_zero(tmp_path, text_corpus, capsys):
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), "--steps", "3", "--seq-len", "32", "--corpus", str(text_corpus),
                 "--checkpoint-every", "100", "--log-every", "1", *TINY]) == 0
    shutil.rmtree(out / "checkpoints")  # as a kill at step 2 leaves it: step 1 and 2 logged, no checkpoint
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert [__import__("json").loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_two_scores_into_one_folder_are_refused_and_no_stale_plot_stays(run, tmp_path, capsys):
    from firepe.runs import RunFolder

    out = tmp_path / "sc"
    args = ["score", run, "--lengths", "96", "--depths", "0", "--examples", "1", "--filler", "classic",
            "--no-progress", "--out", out]
    assert main([str(a) for a in args]) == 0 and (out / "score.png").exists()
    other = RunFolder(out)
    other.lock()  # another score is writing there
    try:
        one_line_error(capsys, args, "in use by another firepe process")
    finally:
        other.unlock()
    assert main([str(a) for a in [*args, "--no-plot"]]) == 0
    assert not (out / "score.png").exists() and not list(out.glob("passkey_*.png"))  # no plot of the earlier score
    fresh = tmp_path / "refused"
    one_line_error(capsys, ["score", run, "--task", "jsonl:" + str(tmp_path / "missing.jsonl"), "--out", fresh,
                            "--no-progress"], "does not exist")
    assert not fresh.exists()  # a refused score leaves no folder
