"""finetune / score / compare --task from the command line: happy paths and the error contract."""

import json

import pytest

from .helpers import one_line_error as err_of
from .helpers import run_cli, task_base


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return task_base(tmp_path_factory.mktemp("clitasks"))


def test_finetune_then_score_then_resume(tmp_path, base, capsys):
    run, good = base
    ft = tmp_path / "ft"
    assert run_cli(["finetune", run, "--task", f"jsonl:{good}", "--out", ft, "--steps", "2", "--batch-size", "2",
                    "--no-progress", "--lr", "1e-4"]) == 0
    out = capsys.readouterr().out
    assert "task jsonl:" in out and "fine-tuned" in out
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["train"]["seq_len"] == 96 and cfg["model"]["dropout"] == 0.1 and cfg["train"]["lr"] == 1e-4
    assert run_cli(["finetune", "--resume", "--out", ft, "--steps", "3", "--no-progress"]) == 0
    err_of(capsys, ["finetune", "--resume", "--out", ft, "--lr", "0.5"], r"--lr 0\.5 \(run: 0\.0001\)")
    err_of(capsys, ["finetune", "--resume", "--out", run], "pretraining run")
    sc = tmp_path / "sc"
    assert run_cli(["score", ft, run, "--task", f"jsonl:{good}", "--lengths", "32,96", "--out", sc,
                    "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "| run | 32 | 96 |" in out and "tokens/s" in out
    res = json.loads((sc / "score.json").read_text())
    assert {r["label"] for r in res["results"]} == {"ft", "base"} and len(res["results"]) == 4
    assert (sc / "score.png").exists()


@pytest.mark.parametrize("rows,match", [
    ([{"id": "1", "input": "x"}], r"line 1 has no 'output' field"),
    ([], "holds no examples"),
    ([{"id": "1", "input": "x", "output": "y" * 200}], r"does not fit length 96.*answer is longer"),
])
def test_finetune_bad_task_files(tmp_path, base, capsys, rows, match):
    run, _ = base
    f = tmp_path / "bad.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    err_of(capsys, ["finetune", run, "--task", f"jsonl:{f}", "--out", tmp_path / "o", "--no-progress"], match)
    assert not (tmp_path / "o").exists() or not (tmp_path / "o" / "config.json").exists()


@pytest.mark.parametrize("argv,match", [
    (["--task", "squad"], r"unknown task 'squad'; valid: passkey, jsonl:PATH"),
    (["--task", ""], "--task is empty"),
    (["--steps", "0"], "steps must be an integer >= 1"),
    (["--lr", "nan"], "expected a finite number"),
    (["--dropout", "1.5"], r"dropout must be a number in \[0, 1\)"),
    (["--limit", "-1"], "limit must be a positive integer"),
    (["--position-options", "init_L=9"], "stored in the checkpoint"),
    (["--position-options", "factor=2"], "unknown option"),
    (["--filler", "x"], "invalid choice"),
])
def test_finetune_bad_flags(tmp_path, base, capsys, argv, match):
    run, _ = base
    err_of(capsys, ["finetune", run, "--out", tmp_path / "o", "--no-progress", *argv], match)
    assert not (tmp_path / "o" / "config.json").exists()


def test_finetune_run_that_is_not_a_run(tmp_path, capsys):
    err_of(capsys, ["finetune", tmp_path, "--out", tmp_path / "o"], "not a firepe run folder")
    err_of(capsys, ["finetune", tmp_path / "missing", "--out", tmp_path / "o"], "does not exist")
    err_of(capsys, ["finetune", "--out", tmp_path / "o"], "needs RUN")


@pytest.mark.parametrize("argv,match", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--lengths", "0"], "at least 2 tokens"),
    (["--depths", "2"], r"in \[0, 1\]"),
    (["--examples", "0"], "--examples must be >= 1"),
    (["--metric", "bleu"], "unknown metric"),
    (["--out", ""], "--out is empty"),
])
def test_score_bad_flags(tmp_path, base, capsys, argv, match):
    run, _ = base
    err_of(capsys, ["score", run, "--out", tmp_path / "sc", *argv], match)
    assert not (tmp_path / "sc").exists()


def test_score_not_a_run_and_missing_datasets(tmp_path, base, capsys, monkeypatch):
    run, _ = base
    err_of(capsys, ["score", tmp_path, "--out", tmp_path / "sc"], "not a firepe run folder")
    import builtins

    real = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("No module named 'datasets'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    err_of(capsys, ["score", run, "--task", "glue:cola", "--out", tmp_path / "sc"], r"pip install 'firepe\[tasks\]'")
    assert not (tmp_path / "sc").exists()


def test_compare_passkey_task_flags(tmp_path, capsys):
    err_of(capsys, ["compare", "--task", "glue", "--out", tmp_path / "c"], "invalid choice")
    err_of(capsys, ["compare", "--task", "passkey", "--task-steps", "0", "--out", tmp_path / "c"],
           "--task-steps must be >= 1")
    err_of(capsys, ["compare", "--task", "passkey", "--depths", "x", "--out", tmp_path / "c"], "depths")
    assert not (tmp_path / "c").exists()


def test_compare_then_passkey_end_to_end_and_reuse(tmp_path, base, capsys):
    corpus = base[0].parent / "corpus"
    out = tmp_path / "cmp"
    argv = ["compare", "--out", out, "--encodings", "nope,alibi", "--preset", "tiny", "--seq-len", "96",
            "--steps", "2", "--batch-size", "2", "--max-factor", "2", "--corpus", corpus, "--val-tokens", "512",
            "--no-progress", "--task", "passkey", "--task-steps", "2", "--task-examples", "1", "--depths", "0,1"]
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "fine-tuned to step 2" in printed and "tokens/s" in printed
    res = json.loads((out / "passkey" / "score.json").read_text())
    assert {(r["label"], r["length"], r["depth"]) for r in res["results"]} == {
        (lab, n, d) for lab in ("nope", "alibi") for n in (96, 192) for d in (0.0, 1.0)}
    for name in ("score.md", "score.png", "passkey_nope.png", "passkey_alibi.png"):
        assert (out / "passkey" / name).exists()
    ft_cfg = json.loads((out / "passkey" / "alibi" / "config.json").read_text())
    assert ft_cfg["finetune"]["base_run"] == str((out / "alibi").resolve()) and ft_cfg["train"]["steps"] == 2
    assert run_cli(argv) == 0  # finished runs are reused, nothing retrained
    assert "passkey fine-tuning done, reusing" in capsys.readouterr().out
    err_of(capsys, [*argv[:-6], "--task-steps", "2", "--task-lr", "0.5", "--task-examples", "1"],
           "holds a fine-tuning run with other settings")


def test_compare_passkey_seeds(tmp_path, base, capsys):
    corpus = base[0].parent / "corpus"
    out = tmp_path / "cmp"
    argv = ["compare", "--out", out, "--encodings", "nope,fire", "--preset", "tiny", "--seq-len", "96",
            "--steps", "2", "--batch-size", "2", "--max-factor", "2", "--corpus", corpus, "--val-tokens", "512",
            "--no-progress", "--task", "passkey", "--task-steps", "2", "--task-examples", "2", "--depths", "0,1",
            "--seeds", "2"]
    assert run_cli(argv) == 0
    capsys.readouterr()
    folder = out / "passkey"
    for lab in ("nope", "fire"):
        for seed in (0, 1):
            cfg = json.loads((folder / lab / f"seed-{seed}" / "config.json").read_text())
            assert cfg["train"]["seed"] == seed  # each seed fine-tunes the run of that seed, with that seed
            assert cfg["finetune"]["base_run"] == str((out / lab / f"seed-{seed}").resolve())
    res = json.loads((folder / "score.json").read_text())
    assert res["seeds"] == [0, 1]
    assert {(r["label"], r["seed"], r["length"], r["depth"]) for r in res["results"]} == {
        (lab, s, n, d) for lab in ("nope", "fire") for s in (0, 1) for n in (96, 192) for d in (0.0, 1.0)}
    # the table, recomputed here: per seed the mean over depths, then mean and paired differences over seeds
    acc = {}
    for r in res["results"]:
        acc.setdefault((r["label"], r["seed"], r["length"]), []).append(r["score"])
    acc = {k: sum(v) / len(v) for k, v in acc.items()}
    cell = res["table"]["cells"]["nope"]["192"]
    assert cell["per_seed"] == [acc["nope", 0, 192], acc["nope", 1, 192]]
    assert cell["mean"] == pytest.approx((acc["nope", 0, 192] + acc["nope", 1, 192]) / 2)
    diff = [acc["fire", s, 96] - acc["nope", s, 96] for s in (0, 1)]
    assert res["table"]["paired"]["nope"]["96"]["mean"] == pytest.approx(sum(diff) / 2)
    assert res["table"]["paired"]["nope"]["96"]["ref_ahead_in"] == sum(d > 0 for d in diff)  # higher is better
    md = (folder / "score.md").read_text()
    assert "±" in md and "Paired per-seed differences, fire minus" in md
    assert (folder / "score.csv").read_text().splitlines()[0].startswith("run,label,seed,task")
    for name in ("score.png", "passkey_nope.png", "passkey_fire.png"):
        assert (folder / name).exists()
    assert run_cli(argv) == 0 and "passkey fine-tuning done, reusing" in capsys.readouterr().out


def test_finetune_position_switch_flags(tmp_path, base, capsys):
    run, good = base
    err_of(capsys, ["finetune", run, "--task", f"jsonl:{good}", "--out", tmp_path / "o", "--position", "alibi"],
           "changing 'fire' to 'alibi' would change values stored in the checkpoint")
    err_of(capsys, ["finetune", run, "--task", f"jsonl:{good}", "--out", tmp_path / "o", "--position", "fire",
                    "--position-options", "bias_mode=exact"], "not also in --position-options")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value,match", [("", "unknown position encoding ''"), ("nosuch", "unknown position encoding"),
                                         ("rope_pi:factor=nan", "finite positive number"),
                                         ("rope_pi:factor=x", "must be a number")])
def test_finetune_bad_position_values(tmp_path, base, capsys, value, match):
    run, good = base
    err_of(capsys, ["finetune", run, "--task", f"jsonl:{good}", "--out", tmp_path / "o", "--position", value], match)
    assert not (tmp_path / "o").exists()


def test_compare_passkey_with_the_later_encodings(tmp_path, base, capsys):
    # fox (data bias), cope (context), p_rope and longrope (rotary) through pretraining, fine-tuning and scoring
    corpus = base[0].parent / "corpus"
    out = tmp_path / "cmp"
    argv = ["compare", "--out", out, "--encodings", "fox;cope;p_rope;longrope:factor=2", "--preset", "tiny",
            "--seq-len", "96", "--steps", "2", "--batch-size", "2", "--max-factor", "2", "--corpus", corpus,
            "--val-tokens", "512", "--no-progress", "--task", "passkey", "--task-steps", "2", "--task-examples", "1",
            "--depths", "0,1"]
    assert run_cli(argv) == 0, capsys.readouterr().err
    res = json.loads((out / "passkey" / "score.json").read_text())
    labels = {"fox", "cope", "p_rope", "longrope[factor=2]"}
    assert {(r["label"], r["length"], r["depth"]) for r in res["results"]} == {
        (lab, n, d) for lab in labels for n in (96, 192) for d in (0.0, 1.0)}
