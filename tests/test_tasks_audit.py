"""Hostile-user audit of finetune / score / compare --task passkey: each test is a break found by the
audit (it failed before its fix)."""

import errno
import json
import shutil

import pytest

from firepe.cli import main
from firepe.tasks import read_jsonl

from .helpers import one_line_error as err_of
from .helpers import run_cli, task_base

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "tasks"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return task_base(tmp_path_factory.mktemp("audit"))


def write_rows(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


# -- task files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("line", ['{"id": "1", "input": "a", "output": NaN}',
                                  '{"id": "1", "input": "a", "output": ["b", Infinity]}',
                                  '{"id": NaN, "input": "a", "output": "b"}'])
def test_non_finite_json_numbers_are_not_text(tmp_path, line):
    # Python's json reads NaN / Infinity (json.dumps writes them for a missing pandas value); they
    # used to become the answer "nan"
    with pytest.raises(ValueError, match=r"line 1: field '(output|id)' is (nan|inf)"):
        read_jsonl(write_rows(tmp_path / "t.jsonl", [line]))


@pytest.mark.parametrize("output", ['""', '"   "', '["one", ""]'])
def test_empty_answers_are_refused(tmp_path, output):
    # an unlabeled split (output "") used to fine-tune on end-of-document alone and score 0 silently
    with pytest.raises(ValueError, match=r"line 2: example 'b' has an empty output"):
        read_jsonl(write_rows(tmp_path / "t.jsonl", ['{"id": "a", "input": "x", "output": "y"}',
                                                     f'{{"id": "b", "input": "x", "output": {output}}}']))


# -- flags that do not apply -----------------------------------------------------------------------

def test_task_files_with_several_tasks_refused(tmp_path, base, capsys):
    run, good = base
    mrpc = FIXTURES / "glue_mrpc.jsonl"
    # glue:stsb used to be read (and scored) from the MRPC rows
    err_of(capsys, ["score", run, "--task", "glue:mrpc,glue:stsb", "--task-files", mrpc, "--out", tmp_path / "s"],
           r"--task-files .* one task.*glue:mrpc, glue:stsb")
    err_of(capsys, ["finetune", run, "--task", "glue", "--task-files", mrpc, "--out", tmp_path / "f"],
           r"--task-files .* one task")
    assert not (tmp_path / "s").exists() and not (tmp_path / "f").exists()


#: settings that keep a command short if it is (wrongly) accepted
CHEAP = ["--preset", "tiny", "--steps", "1", "--batch-size", "2", "--seq-len", "96", "--encodings", "nope",
         "--max-factor", "1", "--corpus", "{corpus}", "--val-tokens", "512", "--no-progress"]
FT_CHEAP = ["--steps", "1", "--batch-size", "2", "--no-progress"]
PK_CHEAP = ["--examples", "1", "--lengths", "96", "--depths", "0"]


@pytest.mark.parametrize("argv,match", [
    (["score", "{run}", "--task", "jsonl:{good}", "--task-files", "{good}"], r"--task-files applies to scrolls:"),
    (["score", "{run}", "--task", "passkey", "--task-files", "{good}", *PK_CHEAP], r"--task-files applies to"),
    (["score", "{run}", "--task", "jsonl:{good}", "--examples", "3"], r"--examples applies to the passkey task"),
    (["score", "{run}", "--task", "jsonl:{good}", "--filler", "classic"], r"--filler applies to the passkey task"),
    (["score", "{run}", "--task", "jsonl:{good}", "--seed", "3"], r"--seed applies to the passkey task"),
    (["score", "{run}", "--task", "jsonl:{good}", "--split", "test"], r"--split applies to scrolls:"),
    (["score", "{run}", "--task", "passkey", "--limit", "2", *PK_CHEAP], r"--limit does not apply to the passkey"),
    (["score", "{run}", "--task", "passkey", "--metric", "f1", *PK_CHEAP], r"--metric does not apply to the passkey"),
    (["finetune", "{run}", "--task", "jsonl:{good}", "--filler", "classic", *FT_CHEAP], r"--filler applies to the"),
    (["finetune", "{run}", "--task", "jsonl:{good}", "--task-files", "{good}", *FT_CHEAP], r"--task-files applies"),
    (["finetune", "{run}", "--task", "passkey", "--limit", "2", *FT_CHEAP], r"--limit does not apply to the passkey"),
    (["finetune", "{run}", "--task", "passkey", "--split", "validation", *FT_CHEAP], r"--split applies to scrolls:"),
    (["compare", "--task-steps", "3", *CHEAP], r"--task-steps applies with --task passkey"),
    (["compare", "--depths", "0.5", *CHEAP], r"--depths applies with --task passkey"),
])
def test_flags_that_do_not_apply_are_refused(tmp_path, base, capsys, argv, match):
    run, good = base
    corpus = run.parent / "corpus"
    argv = [a.format(run=run, good=good, corpus=corpus) for a in argv] + ["--out", str(tmp_path / "o")]
    err_of(capsys, argv, match)
    assert not (tmp_path / "o").exists()


def test_score_empty_lengths_refused(tmp_path, base, capsys):
    run, good = base
    # "--lengths ''" used to mean the default length
    err_of(capsys, ["score", run, "--task", f"jsonl:{good}", "--lengths", "", "--out", tmp_path / "s"],
           "--lengths is empty")


def test_score_same_run_twice_refused(tmp_path, base, capsys):
    run, good = base
    err_of(capsys, ["score", run, f"{run}/.", "--task", f"jsonl:{good}", "--out", tmp_path / "s"],
           r"names the run .* twice")


def test_f1_binary_label_outside_the_references_refused(tmp_path, base, capsys):
    run, good = base
    # a typo of the positive label used to score 0 silently
    err_of(capsys, ["score", run, "--task", f"jsonl:{good}", "--metric", "f1_binary:zz", "--out", tmp_path / "s"],
           r"f1_binary:zz: no reference .* is 'zz'")


# -- files written -----------------------------------------------------------------------------------

def test_failed_plot_write_keeps_the_previous_plot(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from firepe.score import write_scores

    out = tmp_path / "sc"
    out.mkdir()
    (out / "score.png").write_bytes(b"old plot")
    res = {"task": "t", "metric": "f1", "split": None, "results": [
        {"run": "r", "label": "r", "task": "t", "metric": "f1", "length": 8, "depth": None, "score": 1.0,
         "scores": {"f1": 1.0}, "examples": 1, "tokens_per_s": 1.0, "truncated": 0}]}

    def full_disk(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"torn")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(ValueError, match=r"cannot write .*score\.png: No space left on device"):
        write_scores(out, res)
    assert (out / "score.png").read_bytes() == b"old plot"  # used to be replaced by the torn file
    assert sorted(p.name for p in out.iterdir()) == ["score.csv", "score.json", "score.md", "score.png"]


# -- fine-tuning run folders -------------------------------------------------------------------------

def finetune(run, good, out, *more):
    return run_cli(["finetune", run, "--task", f"jsonl:{good}", "--out", out, "--steps", "1", "--batch-size", "2",
                    "--no-progress", *more])


def finetuned_with_section(tmp_path, base, section):
    """A one-step fine-tuning run whose config.json ``finetune`` section is replaced by ``section``."""
    run, good = base
    ft = tmp_path / "ft"
    assert finetune(run, good, ft) == 0
    cfg = json.loads((ft / "config.json").read_text())
    cfg["finetune"] = section
    (ft / "config.json").write_text(json.dumps(cfg))
    return ft


@pytest.mark.parametrize("section", [{}, {"base_run": "/x", "base_step": 2}])
def test_resume_with_finetune_section_missing_its_task_refused(tmp_path, base, capsys, section):
    ft = finetuned_with_section(tmp_path, base, section)
    # used to resume on passkey, FinetuneConfig's default task
    err_of(capsys, ["finetune", "--resume", "--out", ft, "--steps", "2", "--no-progress"],
           r"\[finetune\]: the required key 'task' is missing")


@pytest.mark.parametrize("section,flags", [("garbage", ["--task", "passkey"]), ([1, 2], ["--limit", "3"]),
                                           ("garbage", ["{run}"])])
def test_resume_with_a_damaged_finetune_section_and_given_flags(tmp_path, base, capsys, section, flags):
    run, _ = base
    ft = finetuned_with_section(tmp_path, base, section)
    # used to end in AttributeError ('str' object has no attribute 'get') when an option was given
    err_of(capsys, ["finetune", "--resume", "--out", ft, *[f.format(run=run) for f in flags]],
           r"\[finetune\] must be a JSON object")


def test_resume_before_first_checkpoint_after_the_base_run_grew(tmp_path, base, capsys):
    run, good = base
    grown = tmp_path / "base"
    shutil.copytree(run, grown)
    ft = tmp_path / "ft"
    assert finetune(grown, good, ft) == 0
    shutil.rmtree(ft / "checkpoints")  # killed before its first checkpoint: nothing logged yet either
    (ft / "metrics.jsonl").write_text("")
    assert main(["train", "--resume", "--out", str(grown), "--steps", "3", "--no-progress"]) == 0
    assert (grown / "checkpoints" / "step-0000002").is_dir()  # the step fine-tuning started from is kept
    capsys.readouterr()
    # used to say the base run "no longer has its step-2 checkpoint"
    assert main(["finetune", "--resume", "--out", str(ft), "--no-progress"]) == 0, capsys.readouterr().err
    shutil.rmtree(grown / "checkpoints" / "step-0000002")
    shutil.rmtree(ft / "checkpoints")
    (ft / "metrics.jsonl").write_text("")
    err_of(capsys, ["finetune", "--resume", "--out", ft, "--no-progress"], "no longer has its step-2 checkpoint")


def test_resume_with_the_same_relative_task_path(tmp_path, base, capsys, monkeypatch):
    run, good = base
    monkeypatch.chdir(good.parent)
    ft = tmp_path / "ft"
    assert main(["finetune", str(run), "--task", f"jsonl:{good.name}", "--out", str(ft), "--steps", "1",
                 "--batch-size", "2", "--no-progress"]) == 0
    # the same relative path used to be a conflict with the absolute path saved in config.json
    assert main(["finetune", "--resume", "--out", str(ft), "--task", f"jsonl:{good.name}", "--steps", "2",
                 "--no-progress"]) == 0, capsys.readouterr().err
    other = good.parent / "other.jsonl"
    shutil.copy(good, other)
    err_of(capsys, ["finetune", "--resume", "--out", ft, "--task", "jsonl:other.jsonl", "--steps", "3"],
           r"--task jsonl:other\.jsonl \(run: jsonl:.*good\.jsonl\)")


def test_compare_refuses_runs_trained_longer_than_asked(tmp_path, base, capsys):
    corpus = base[0].parent / "corpus"
    out = tmp_path / "cmp"
    argv = ["compare", "--out", out, "--encodings", "nope", "--preset", "tiny", "--seq-len", "96", "--steps", "2",
            "--batch-size", "2", "--max-factor", "1", "--corpus", corpus, "--val-tokens", "512", "--no-progress",
            "--task", "passkey", "--task-examples", "1", "--depths", "0.5"]
    assert main([str(a) for a in [*argv, "--task-steps", "2"]]) == 0
    before = (out / "passkey" / "score.json").read_text()
    # both used to reuse the longer runs while results.json / the passkey table named the smaller budget
    err_of(capsys, [*argv, "--task-steps", "1"], r"passkey/nope is already at step 2.*--task-steps 1")
    argv[argv.index("--steps") + 1] = "1"
    err_of(capsys, [*argv, "--task-steps", "2"], r"cmp/nope is already at step 2.*--steps 1")
    assert (out / "passkey" / "score.json").read_text() == before
    argv[argv.index("--steps") + 1] = "2"
    cfg = json.loads((out / "passkey" / "nope" / "config.json").read_text())
    (out / "passkey" / "nope" / "config.json").write_text(json.dumps({**cfg, "finetune": "garbage"}))
    # used to end in AttributeError ('str' object has no attribute 'get')
    err_of(capsys, [*argv, "--task-steps", "2"], r"passkey/nope holds a fine-tuning run with other settings")
