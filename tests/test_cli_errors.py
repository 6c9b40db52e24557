"""The error contract from outside: every bad value is one line ``firepe: error: ...`` and exit 2,
and nothing is written for a refused command."""

import json
import re

import pytest

from firepe.cli import main

from .helpers import one_line_error

TINY = ["--preset", "tiny", "--seq-len", "16", "--batch-size", "4", "--no-progress", "--val-tokens", "512"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus"
    corpus.mkdir()
    for k in range(40):
        (corpus / f"f{k:02d}.py").write_text(f"def f(x):\n    return x * {k}\n" * 40)
    run = root / "run"
    assert main(["train", "--out", str(run), "--position", "fire", "--steps", "4", "--checkpoint-every", "2",
                 "--corpus", str(corpus), *TINY]) == 0
    return run, corpus


TRAIN_CASES = [
    (["--micro-batch-size", "-2"], "micro_batch_size must be an integer >= 1, got -2"),
    (["--micro-batch-size", "0"], "micro_batch_size must be an integer >= 1, got 0"),
    (["--min-lr-ratio", "-1"], r"min_lr_ratio must be a finite number in \[0, 1\]"),
    (["--warmup-steps", "-3"], "warmup_steps must be an integer >= 0"),
    (["--checkpoint-every", "-1"], "checkpoint_every must be an integer >= 1"),
    (["--checkpoint-every", "0"], "checkpoint_every must be an integer >= 1"),
    (["--weight-decay", "-1"], "weight_decay must be a finite number >= 0"),
    (["--max-train-tokens", "-100"], "max_train_tokens"),
    (["--bpe-vocab-size", "0"], "bpe_vocab_size"),
    (["--bpe-vocab-size", "-5"], "bpe_vocab_size"),
    (["--steps", "abc"], "argument --steps: expected an integer, got 'abc'"),
    (["--lr", "nan"], "argument --lr: expected a finite number"),
    (["--lr", "0"], "lr must be a finite number > 0"),
    (["--grad-clip", "-1"], "grad_clip must be"),
    (["--threads", "-1"], "threads must be an integer >= 1"),
    (["--keep-checkpoints", "0"], "keep_checkpoints must be an integer >= 1"),
    (["--device", "gpu0"], "unknown device 'gpu0'"),
    (["--device", "tpu"], "unknown device 'tpu'|not supported"),
    (["--device", "mps"], "'mps' is not supported"),
    (["--device", "cuda"], "no usable CUDA"),
    (["--corpus", ","], "corpus"),
    (["--position", "fire:threshold=maybe"], "threshold"),
    (["--position", "kerple_log:init_r1=abc"], "init_r1"),
    (["--position", "fire:mlp_layers=2.5"], "mlp_layers"),
    (["--position", "longrope"], "needs option.*factor"),
    (["--position", "longrope:factor=nan"], "factor must be a finite positive number, got nan"),
    (["--position", "longrope:factor=4,long_factor=1/2"], r"long_factor must be a list of head_dim/2 = 8 numbers"),
    (["--position", "longrope:factor=4,long_factor=1/x/3"], "must be a list written a/b/c"),
    (["--position", "longrope:factor=4,factors=both"], "factors must be one of auto, short, long"),
    (["--position", "p_rope:fraction=-1"], r"p_rope fraction must be a number in \[0, 1\], got -1"),
    (["--position", "fox:bias_init=nan"], "fox bias_init must be a finite number, got nan"),
    (["--position", "fox:init_std=-1"], "fox init_std must be >= 0"),
    (["--position", "fox:gate=3"], "gate"),
    (["--position", "cope:npos_max=1"], r"cope npos_max must be an integer in \[2, 1048576\], got 1"),
    (["--position", "cope:npos_max=2.5"], "npos_max"),
    (["--position", "cope", "--attention", "chunked"], "cope runs on a dense path of its own"),
    (["--position", "p_rope:fraction="], "fraction='' .* must be a number"),
    (["--dropout", "1.5"], "dropout"),
    (["--n-head", "0"], "n_head"),
]


@pytest.mark.parametrize("extra,match", TRAIN_CASES, ids=[" ".join(c[0]) for c in TRAIN_CASES])
def test_bad_train_values(tmp_path, capsys, text_corpus, extra, match):
    one_line_error(capsys, ["train", "--out", tmp_path / "r", "--corpus", text_corpus, *TINY, *extra], match)
    assert not (tmp_path / "r" / "config.json").exists()


def test_bad_out(tmp_path, capsys, text_corpus):
    one_line_error(capsys, ["train", "--out", "", "--corpus", text_corpus, *TINY], "--out is empty")
    (tmp_path / "f").write_text("keep me")
    one_line_error(capsys, ["train", "--out", tmp_path / "f", "--corpus", text_corpus, *TINY], "existing file")
    assert (tmp_path / "f").read_text() == "keep me"


def test_boolean_options_are_parsed_not_truthy(tmp_path, capsys, text_corpus):
    assert main(["train", "--out", str(tmp_path / "r"), "--position", "fire:threshold=false,log_transform=no",
                 "--steps", "1", "--corpus", str(text_corpus), *TINY]) == 0
    opts = json.loads((tmp_path / "r" / "config.json").read_text())["model"]["position_options"]
    assert opts["threshold"] is False and opts["log_transform"] is False


def test_resume_rules(trained, capsys, tmp_path):
    run, corpus = trained
    err = one_line_error(capsys, ["train", "--out", run, "--resume", "--lr", "0.5", "--position", "rope"],
                         "these options differ and cannot change")
    assert "--lr 0.5" in err and "--position rope" in err
    # the same values as the run are fine; --steps=6 and an abbreviation are seen as given and stored
    assert main(["train", "--out", str(run), "--resume", "--steps=6", "--corpus", str(corpus), *TINY]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 6
    assert main(["train", "--out", str(run), "--resume", "--ste", "7", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    out, _ = capsys.readouterr()
    assert "to step 7" in out
    one_line_error(capsys, ["train", "--out", tmp_path / "none", "--resume"], "does not exist")


@pytest.mark.parametrize("argv,match", [
    (["eval", "{run}", "--lengths", "16", "--val-tokens", "0"], "--val-tokens must be >= 1"),
    (["eval", "{run}", "--lengths", "16", "--val-tokens", "-100"], "--val-tokens must be >= 1"),
    (["eval", "{run}", "--lengths", "16", "--batch-tokens", "0"], "--batch-tokens must be >= 1"),
    (["eval", "{run}", "--lengths", "16", "--device", "cuda"], "no usable CUDA"),
    (["eval", "{run}", "--lengths", "x"], "comma-separated integers"),
    (["generate", "{run}", "--prompt", "a", "--max-new-tokens", "-5"], "--max-new-tokens must be >= 0"),
    (["generate", "{run}", "--prompt", "a", "--temperature", "nan"], "expected a finite number"),
    (["generate", "{run}", "--prompt", "a", "--temperature", "1e-45"], "temperature"),
    (["generate", "{run}", "--prompt", "a", "--top-k", "0"], "--top-k must be >= 1"),
    (["generate", "{run}", "--prompt", "a", "--device", "gpu0"], "unknown device"),
    (["plot-bias", "{run}", "--query", "-5"], "--query must be a position"),
    (["plot-bias", "{run}", "--query", "100000000000"], "--query must be a position"),
    (["plot-bias", "{run}", "--query", "1e11"], "expected an integer"),
    (["compare", "--encodings", "", "--out", "{tmp}/c"], "empty entry"),
    (["compare", "--encodings", "nope,,fire", "--out", "{tmp}/c"], "empty entry"),
    (["compare", "--max-factor", "0", "--out", "{tmp}/c"], "--max-factor must be >= 1"),
    (["compare", "--out", ""], "--out is empty"),
    (["ablate", "--variants", "", "--out", "{tmp}/c"], "empty entry"),
    (["bench-speed", "--encodings", "bogus", "--out", "{tmp}/b"], "unknown benchmark row 'bogus'"),
    (["bench-speed", "--repeats", "0", "--out", "{tmp}/b"], "--repeats must be >= 1"),
    (["bench-speed", "--heads", "0", "--out", "{tmp}/b"], "--heads must be >= 1"),
    (["bench-speed", "--device", "cuda", "--out", "{tmp}/b"], "no usable CUDA"),
    (["bench-speed", "--preset", "huge", "--out", "{tmp}/b"], "unknown model preset"),
])
def test_bad_values_of_other_commands(trained, tmp_path, capsys, argv, match):
    run, _ = trained
    one_line_error(capsys, [a.format(run=run, tmp=tmp_path) for a in argv], match)
    assert not (tmp_path / "c").exists() and not (tmp_path / "b").exists()


def test_eval_on_a_read_only_run_prints_the_table_first(trained, capsys, monkeypatch):
    from firepe import runs

    run, _ = trained

    def refuse(path, text):
        raise runs.RunWriteError(f"cannot write {path}: Read-only file system.")

    monkeypatch.setattr(runs, "write_text", refuse)
    monkeypatch.setattr("firepe.evaluate.write_text", refuse)
    monkeypatch.setattr("firepe.evaluate.write_json", lambda p, d: refuse(p, ""))
    code = main(["eval", str(run), "--lengths", "16,32", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2 and re.search(r"^\s+32\s+\d+\.\d+", out, re.M)
    assert err.startswith("firepe: error: cannot write") and "Read-only" in err


def test_compare_refuses_a_label_folder_holding_other_settings(tmp_path, capsys, text_corpus):
    args = ["compare", "--out", tmp_path / "c", "--encodings", "nope", "--steps", "1", "--lengths", "16",
            "--corpus", text_corpus, *TINY]
    assert main([str(a) for a in args]) == 0
    before = (tmp_path / "c" / "nope" / "config.json").read_text()
    one_line_error(capsys, [*args, "--lr", "0.5"], r"holds a run with other settings: train.lr")
    assert (tmp_path / "c" / "nope" / "config.json").read_text() == before


def test_compare_refuses_before_training_anything(tmp_path, capsys, text_corpus):
    base = ["compare", "--out", tmp_path / "c", "--steps", "1", "--lengths", "16", "--corpus", text_corpus, *TINY]
    assert main([str(a) for a in [*base, "--encodings", "alibi"]]) == 0
    one_line_error(capsys, [*base, "--encodings", "nope,alibi", "--lr", "0.5"], "alibi holds a run with other")
    assert not (tmp_path / "c" / "nope").exists()


def test_resume_from_another_directory_reads_the_same_corpus(tmp_path, capsys, text_corpus, monkeypatch):
    monkeypatch.chdir(text_corpus.parent)
    run = tmp_path / "r"
    assert main(["train", "--out", str(run), "--position", "alibi", "--steps", "2", "--corpus", "corpus", *TINY]) == 0
    saved = json.loads((run / "config.json").read_text())["data"]["corpus"]
    assert saved == str(text_corpus.resolve())
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "corpus").mkdir(parents=True)
    (elsewhere / "corpus" / "other.txt").write_text("something else entirely\n" * 500)
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--no-progress"]) == 0
    one_line_error(capsys, ["train", "--out", run, "--resume", "--corpus", "corpus"], "--corpus corpus")


def test_resume_below_the_current_step_changes_nothing(trained, capsys):
    run, _ = trained
    before = (run / "config.json").read_text()
    one_line_error(capsys, ["train", "--out", run, "--resume", "--steps", "1"], "already at step .*--steps must be")
    assert (run / "config.json").read_text() == before


def test_allocation_failure_is_one_line(tmp_path, capsys, text_corpus):
    one_line_error(capsys, ["train", "--out", tmp_path / "r", "--corpus", text_corpus, *TINY,
                            "--position", "fire:mlp_width=99999999999"], "out of memory")


def test_plot_bias_out_must_be_a_png(trained, capsys, tmp_path):
    run, _ = trained
    one_line_error(capsys, ["plot-bias", run, "--out", tmp_path / "noext"], "must be a PNG file path")
    one_line_error(capsys, ["plot-bias", run, "--out", run], "must be a PNG file path")
    assert not (tmp_path / "noext.png").exists()


def test_compare_with_duplicate_labels_creates_nothing(tmp_path, capsys, text_corpus):
    one_line_error(capsys, ["compare", "--out", tmp_path / "c", "--encodings", "a=fire,a=alibi",
                            "--corpus", text_corpus, *TINY], "duplicate labels")
    assert not (tmp_path / "c").exists()
