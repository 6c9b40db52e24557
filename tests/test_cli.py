import json
import re
from pathlib import Path

import pytest

from firepe.cli import main

TINY = ["--preset", "tiny", "--seq-len", "16", "--batch-size", "4", "--no-progress", "--val-tokens", "1024"]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_eval_plot_bias(tmp_path, text_corpus, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--out", run, "--position", "fire:mlp_layers=1", "--steps", "4",
                              "--corpus", text_corpus, *TINY], capsys)
    assert code == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["position_options"] == {"mlp_layers": 1, "init_L": 4.0, "bias_mode": "table"}
    code, out, err = run_cli(["eval", run, "--lengths", "16,32,64", "--no-progress"], capsys)
    assert code == 0, err
    assert re.search(r"^\s+64\s+\d+\.\d+", out, re.M)
    code, out, err = run_cli(["plot-bias", run, "--query", "20"], capsys)
    assert code == 0 and (run / "bias_q20.png").exists()
    # resume extends the budget
    code, out, err = run_cli(["train", "--out", run, "--resume", "--steps", "6", "--corpus", text_corpus, *TINY],
                             capsys)
    assert code == 0 and "step 6" in out


def test_compare_and_ablate(tmp_path, text_corpus, capsys):
    out_dir = tmp_path / "cmp"
    code, out, err = run_cli(["compare", "--out", out_dir, "--encodings", "nope,fire", "--steps", "3",
                              "--max-factor", "4", "--corpus", text_corpus, *TINY], capsys)
    assert code == 0, err
    table = (out_dir / "results.md").read_text()
    assert "| nope |" in table and "| fire |" in table and "64 (4x)" in table and "**" in table
    assert (out_dir / "perplexity.png").exists()
    summary = json.loads((out_dir / "results.json").read_text())
    assert [r["length"] for r in summary["runs"][0]["results"]] == [16, 32, 64]
    # a second call reuses the finished runs
    code, out, err = run_cli(["compare", "--out", out_dir, "--encodings", "nope,fire", "--steps", "3",
                              "--max-factor", "4", "--corpus", text_corpus, *TINY], capsys)
    assert "already trained" in out
    code, out, err = run_cli(["ablate", "--out", tmp_path / "abl", "--variants", "fire;lin=fire:mlp_layers=0",
                              "--steps", "2", "--max-factor", "2", "--corpus", text_corpus, *TINY], capsys)
    assert code == 0, err
    assert "| lin |" in (tmp_path / "abl" / "results.md").read_text()


def test_compare_with_seeds_gives_mean_std_and_paired_differences(tmp_path, text_corpus, capsys):
    out_dir = tmp_path / "cmp"
    code, out, err = run_cli(["compare", "--out", out_dir, "--encodings", "nope,fire", "--steps", "3", "--seeds", "2",
                              "--max-factor", "2", "--corpus", text_corpus, *TINY], capsys)
    assert code == 0, err
    summary = json.loads((out_dir / "results.json").read_text())
    assert summary["seeds"] == [0, 1] and (out_dir / "fire" / "seed-1" / "config.json").exists()
    assert json.loads((out_dir / "fire" / "seed-1" / "config.json").read_text())["train"]["seed"] == 1
    per = {(r["label"], r["seed"]): r["results"][0]["log_ppl"] for r in summary["runs"]}
    assert per[("fire", 0)] != per[("fire", 1)]  # the seed changes the run ...
    cell = summary["table"]["cells"]["fire"]["16"]
    assert cell["mean"] == pytest.approx((per[("fire", 0)] + per[("fire", 1)]) / 2)
    diff = summary["table"]["paired"]["nope"]["16"]
    want = [per[("fire", s)] - per[("nope", s)] for s in (0, 1)]
    assert diff["mean"] == pytest.approx(sum(want) / 2)
    assert diff["ref_ahead_in"] == sum(d < 0 for d in want)  # lower log perplexity is better
    table = (out_dir / "results.md").read_text()
    assert "±" in table and "Paired per-seed differences, fire minus" in table
    assert (out_dir / "results.csv").read_text().splitlines()[0] == "label,position,seed,length,log_ppl,ppl"
    code, out, err = run_cli(["compare", "--out", tmp_path / "x", "--seeds", "0,0", "--corpus", text_corpus, *TINY],
                             capsys)
    assert code == 2 and "twice" in err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,match", [
    (["train", "--out", "{tmp}/r", "--corpus", "{tmp}/missing"], "does not exist"),
    (["train", "--out", "{tmp}/r", "--seq-len", "1"], "at least 2 tokens"),
    (["train", "--out", "{tmp}/r", "--position", "fyre"], "unknown position encoding 'fyre'"),
    (["train", "--out", "{tmp}/r", "--position", "fire:width=3"], "unknown option"),
    (["eval", "{tmp}/nothing", "--lengths", "16"], "does not exist"),
    (["train", "--out", "{tmp}/r", "--resume"], "does not exist"),
])
def test_errors_are_one_line(tmp_path, capsys, args, match):
    code, out, err = run_cli([a.format(tmp=tmp_path) for a in args], capsys)
    assert code == 2
    assert err.startswith("firepe: error:") and err.count("\n") == 1, err
    assert re.search(match, err)


def test_empty_corpus_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["train", "--out", tmp_path / "r", "--corpus", tmp_path / "empty", *TINY], capsys)
    assert code == 2 and "no non-empty UTF-8 text" in err
    assert not (tmp_path / "r").exists() or not any(Path(tmp_path / "r").iterdir())


def test_generate_and_eval_chunked(tmp_path, text_corpus, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", "--out", run, "--position", "fire", "--steps", "3", "--corpus", text_corpus, *TINY],
                   capsys)[0] == 0
    code, out, err = run_cli(["generate", run, "--prompt", "def f", "--max-new-tokens", "12", "--temperature", "0"],
                             capsys)
    assert code == 0, err
    assert out.startswith("def f")
    code, out, err = run_cli(["eval", run, "--lengths", "16,64", "--attention", "chunked", "--no-progress"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["generate", run, "--prompt", ""], capsys)
    assert code == 2 and "prompt is empty" in err


def test_bench_speed_writes_table_json_and_plot(tmp_path, capsys):
    out_dir = tmp_path / "bench"
    code, out, err = run_cli(["bench-speed", "--lengths", "64", "--encodings", "nope,fire_appendix_e,fire",
                              "--scope", "both", "--heads", "2", "--head-dim", "8", "--preset", "tiny",
                              "--repeats", "1", "--out", out_dir], capsys)
    assert code == 0, err
    report = json.loads((out_dir / "bench.json").read_text())
    assert len(report["results"]) == 2 * 3
    assert all("error" not in r and r["train_s"] > 0 and r["forward_s"] > 0 for r in report["results"])
    assert "| 64 | fire |" in out and (out_dir / "bench.png").exists()
    assert report["settings"]["dtype"] == "fp32" and report["settings"]["tf32"] is False  # auto on CPU
    from firepe.devices import cpu_description

    assert report["cpu"] == cpu_description() and report["machine"].startswith(cpu_description())
    assert report["cpu"] in out  # the printed table names the CPU and its instruction set


def test_bench_speed_job_past_its_timeout_is_an_error_row(tmp_path, capsys, monkeypatch):
    import subprocess

    from firepe import bench

    def slow(cmd, **kw):
        assert kw["timeout"] == 7
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    monkeypatch.setattr(bench.subprocess, "run", slow)
    code, out, err = run_cli(["bench-speed", "--lengths", "64", "--encodings", "nope", "--scope", "layer",
                              "--job-timeout", "7", "--out", tmp_path / "b"], capsys)
    assert code == 2 and "timed out after 7 s" in err and err.count("\n") == 1


def test_model_flags_come_from_gptconfig_fields(tmp_path, text_corpus, capsys):
    """Every GPTConfig field with a flag reaches the saved config; on --resume a different value is refused."""
    from dataclasses import fields

    from firepe.cli import build_parser
    from firepe.config import GPTConfig

    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in fields(GPTConfig):
        flag = "--" + f.name.replace("_", "-") + " "
        if f.name != "position":  # --position is the hand-written spec flag (name and options)
            assert (flag in help_text) == (f.metadata.get("cli") is not False), flag
    assert "--untied" in help_text and "--preset" in help_text
    run = tmp_path / "r"
    code, out, err = run_cli(["train", "--out", run, "--position", "nope", "--steps", "2", "--d-ff", "48",
                              "--norm-eps", "0.001", "--n-layer", "1", "--corpus", text_corpus, *TINY], capsys)
    assert code == 0, err
    model = json.loads((run / "config.json").read_text())["model"]
    assert (model["d_ff"], model["norm_eps"], model["n_layer"], model["n_head"]) == (48, 0.001, 1, 4)  # n_head: tiny's
    code, out, err = run_cli(["train", "--out", run, "--resume", "--steps", "3", "--d-ff", "64",
                              "--corpus", text_corpus, *TINY], capsys)
    assert code == 2 and "--d-ff (run: d_ff=48)" in err
    code, out, err = run_cli(["train", "--out", tmp_path / "x", "--norm-eps", "0", "--corpus", text_corpus, *TINY],
                             capsys)
    assert code == 2 and "norm_eps must be a finite number > 0" in err and not (tmp_path / "x").exists()


def test_bench_speed_takes_encoding_specs_as_rows(tmp_path, capsys):
    out_dir = tmp_path / "bench"
    code, out, err = run_cli(["bench-speed", "--lengths", "32", "--encodings", "p_rope;longrope:factor=4",
                              "--scope", "layer", "--heads", "2", "--head-dim", "8", "--repeats", "1",
                              "--out", out_dir], capsys)
    assert code == 0, err
    rows = [r["row"] for r in json.loads((out_dir / "bench.json").read_text())["results"]]
    assert rows == ["p_rope", "longrope:factor=4"]
    code, _, err = run_cli(["bench-speed", "--encodings", "longrope", "--scope", "layer", "--lengths", "32",
                            "--out", tmp_path / "b2"], capsys)
    assert code == 2 and "needs option(s) factor" in err and "yarn:factor=4" in err
    assert not (tmp_path / "b2" / "bench.json").exists()
    code, _, err = run_cli(["bench-speed", "--encodings", "p_rope:fraction=2", "--out", tmp_path / "b3"], capsys)
    assert code == 2 and "p_rope fraction must be a number in [0, 1], got 2" in err


def test_p_rope_and_longrope_run_through_compare_synth_and_export(tmp_path, text_corpus, capsys):
    out_dir = tmp_path / "cmp"
    code, out, err = run_cli(["compare", "--out", out_dir, "--encodings", "p_rope:fraction=0.5;longrope:factor=4",
                              "--steps", "2", "--max-factor", "4", "--corpus", text_corpus, *TINY], capsys)
    assert code == 0, err
    table = (out_dir / "results.md").read_text()
    assert "| p_rope[fraction=0.5] |" in table and "| longrope[factor=4] |" in table
    saved = json.loads((out_dir / "longrope[factor=4]" / "config.json").read_text())["model"]
    assert saved["position_options"] == {"factor": 4, "original_max_position_embeddings": 16}  # the training length
    code, out, err = run_cli(["synth", "--out", tmp_path / "syn", "--encodings", "p_rope;longrope:factor=2",
                              "--steps", "2", "--batch-size", "4", "--no-progress", "--max-factor", "2",
                              "--examples", "8", "--task", "copy"], capsys)
    assert code == 0, err
    assert "| longrope[factor=2] |" in out
    code, _, err = run_cli(["compare", "--out", tmp_path / "bad", "--encodings", "longrope", "--steps", "2",
                            "--corpus", text_corpus, *TINY], capsys)
    assert code == 2 and "needs option(s) factor" in err and not (tmp_path / "bad").exists()


def test_fox_runs_through_train_compare_synth_bench_and_plot_bias(tmp_path, text_corpus, capsys):
    run = tmp_path / "fox"
    code, out, err = run_cli(["train", "--out", run, "--position", "fox", "--steps", "3", "--corpus", text_corpus,
                              *TINY], capsys)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["model"]["position"] == "fox"
    code, out, err = run_cli(["plot-bias", run, "--text", "the quick brown fox"], capsys)
    assert code == 0 and (run / "bias_q18.png").exists(), err  # 19 bytes: the last token is query 18
    code, out, err = run_cli(["plot-bias", run, "--text", "abc", "--query", "1", "--out", tmp_path / "b.png"], capsys)
    assert code == 0 and (tmp_path / "b.png").exists()
    for args, message in ((["plot-bias", run], "depends on the input; pass --text"),
                          (["plot-bias", run, "--text", "abc", "--query", "3"], "past the text's last token"),
                          (["plot-bias", run, "--text", ""], "--text is empty")):
        code, _, err = run_cli(args, capsys)
        assert code == 2 and err.startswith("firepe: error:") and message in err and err.count("\n") == 1, err
    fire = tmp_path / "fire"
    assert run_cli(["train", "--out", fire, "--steps", "1", "--corpus", text_corpus, *TINY], capsys)[0] == 0
    code, _, err = run_cli(["plot-bias", fire, "--text", "abc"], capsys)
    assert code == 2 and "--text applies to data-dependent biases" in err and not list(fire.glob("bias_q*.png"))
    compare_synth_and_bench(tmp_path, text_corpus, capsys, "fox")


def test_cope_runs_through_train_compare_synth_and_bench_and_refuses_what_it_cannot_do(tmp_path, text_corpus, capsys):
    run = tmp_path / "cope"
    code, out, err = run_cli(["train", "--out", run, "--position", "cope", "--steps", "2", "--corpus", text_corpus,
                              *TINY], capsys)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["model"]["position_options"] == {"npos_max": 16}
    code, _, err = run_cli(["plot-bias", run], capsys)
    assert code == 2 and "depends on the input; pass --text" in err
    code, _, err = run_cli(["plot-bias", run, "--text", "count the words", "--query", "9"], capsys)
    assert code == 0 and (run / "bias_q9.png").exists(), err
    code, _, err = run_cli(["eval", run, "--lengths", "16", "--attention", "chunked", "--no-progress"], capsys)
    assert code == 2 and "cope runs on a dense path of its own" in err and err.count("\n") == 1
    code, _, err = run_cli(["train", "--out", tmp_path / "bad", "--position", "cope", "--attention", "flex",
                            "--steps", "1", "--corpus", text_corpus, *TINY], capsys)
    assert code == 2 and "is refused for it" in err and not (tmp_path / "bad").exists()
    compare_synth_and_bench(tmp_path, text_corpus, capsys, "cope")


def compare_synth_and_bench(tmp_path, text_corpus, capsys, name):
    """``name`` beside NoPE in compare, alone in synth, and timed by bench-speed at both scopes."""
    code, out, err = run_cli(["compare", "--out", tmp_path / "cmp", "--encodings", f"{name};nope", "--steps", "2",
                              "--max-factor", "4", "--corpus", text_corpus, *TINY], capsys)
    assert code == 0 and f"| {name} |" in (tmp_path / "cmp" / "results.md").read_text(), err
    code, out, err = run_cli(["synth", "--out", tmp_path / "syn", "--encodings", name, "--steps", "2",
                              "--batch-size", "4", "--no-progress", "--max-factor", "2", "--examples", "8",
                              "--task", "copy"], capsys)
    assert code == 0 and f"| {name} |" in out, err
    code, out, err = run_cli(["bench-speed", "--lengths", "32", "--encodings", f"nope,{name}", "--scope", "both",
                              "--heads", "2", "--head-dim", "8", "--repeats", "1", "--n-layer", "1",
                              "--out", tmp_path / "bench"], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "bench" / "bench.json").read_text())["results"]
    assert sorted(r["row"] for r in results) == sorted(["nope", name] * 2)
    assert all("error" not in r and r["train_s"] > 0 for r in results), results
