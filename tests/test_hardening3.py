"""Hardening, third round (issue 32): each case an outside audit found, as it must behave now.

``SY`` / ``CM`` are the audit's abbreviations: a tiny ``firepe synth`` and ``firepe compare``."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from firepe import cbuild, positions
from firepe.positions import fire_kernel
from tests.helpers import one_line_error, run_cli


def SY(out, encodings="nope,fox", *extra, seeds="1"):  # noqa: N802
    return ["synth", "--encodings", encodings, "--seeds", seeds, "--steps", "4", "--checkpoint-every", "2",
            "--batch-size", "4", "--examples", "8", "--max-factor", "2", "--threads", "1", "--no-progress",
            "--out", out, *extra]


def CM(out, corpus, encodings="nope", *extra):  # noqa: N802
    return ["compare", "--preset", "tiny", "--seq-len", "64", "--batch-size", "4", "--steps", "2",
            "--checkpoint-every", "1", "--corpus", corpus, "--threads", "1", "--no-progress", "--lengths", "64",
            "--val-tokens", "512", "--encodings", encodings, "--out", out, *extra]


# -- 1. links at every level of a sweep ------------------------------------------------------------


@pytest.mark.parametrize("command", ["synth", "compare"])
@pytest.mark.parametrize("level", ["label", "seed", "sweep"])
def test_a_linked_label_seed_or_sweep_folder_is_refused(tmp_path, text_corpus, capsys, command, level):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "tokenizer.json").write_text("mine")
    out = tmp_path / "out"
    if level == "sweep":
        out.symlink_to(outside, target_is_directory=True)
    elif level == "label":
        out.mkdir()
        (out / "nope").symlink_to(outside, target_is_directory=True)
    else:
        (out / "nope").mkdir(parents=True)
        (out / "nope" / "seed-0").symlink_to(outside, target_is_directory=True)
    n = "2" if level == "seed" else "1"
    argv = SY(out, "nope", seeds=n) if command == "synth" else CM(out, text_corpus, "nope", "--seeds", n)
    one_line_error(capsys, argv, "is a symbolic link")
    assert sorted(p.name for p in outside.iterdir()) == ["tokenizer.json"]
    assert (outside / "tokenizer.json").read_text() == "mine"


def test_linked_run_and_score_folders_are_refused(tmp_path, text_corpus, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "run").symlink_to(outside, target_is_directory=True)
    one_line_error(capsys, ["train", "--out", tmp_path / "run", "--corpus", text_corpus, "--preset", "tiny",
                            "--steps", "1", "--no-progress"], "is a symbolic link")
    (tmp_path / "score").symlink_to(outside, target_is_directory=True)
    one_line_error(capsys, ["score", tmp_path / "nothing", "--out", tmp_path / "score"], "is a symbolic link")
    assert not list(outside.iterdir())


# -- 2. damaged exports through transformers ------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    pytest.importorskip("firepe.hf", exc_type=ImportError)
    from tests.test_hf import export

    root = tmp_path_factory.mktemp("exports")
    out = {}
    for enc in ("fox", "cope"):
        (root / enc).mkdir()
        out[enc] = export(root / enc, enc, {})[1]
    return out


def _damage(src, dst, kind):
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    if kind == "nan":
        weights = load_file(dst / "model.safetensors")
        name = next(k for k in weights if "position" in k)
        weights[name] = weights[name].clone()
        weights[name].view(-1)[0] = float("nan")
        save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    elif kind == "no-position":
        del cfg["position"]
    elif kind == "as-nope":
        cfg.update(position="nope", position_options={})
    elif kind == "unknown-option":
        cfg["position_options"] = {"colour": 1}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("enc", ["fox", "cope"])
@pytest.mark.parametrize("kind,match", [("nan", "non-finite"), ("no-position", "has no 'position'"),
                                        ("as-nope", "do not match the declared encoding 'nope'"),
                                        ("unknown-option", "unknown option")])
def test_transformers_refuses_damaged_exports(exports, tmp_path, enc, kind, match):
    from transformers import AutoModelForCausalLM

    bad = _damage(exports[enc], tmp_path / "bad", kind)
    with pytest.raises(ValueError, match=match):
        AutoModelForCausalLM.from_pretrained(bad)
    model, info = AutoModelForCausalLM.from_pretrained(exports[enc], output_loading_info=True)  # the intact one
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))


# -- 3. stale passkey fine-tunes ----------------------------------------------------------------------


def test_compare_passkey_refuses_a_fine_tune_of_another_base(tmp_path, text_corpus, capsys):
    out = tmp_path / "cmp"
    task = ["--task", "passkey", "--task-steps", "2", "--task-examples", "1", "--depths", "0", "--seq-len", "96",
            "--lengths", "96"]
    argv = CM(out, text_corpus, "a=nope", *task)
    assert run_cli(argv) == 0
    more = [*argv[: argv.index("--steps") + 1], "4", *argv[argv.index("--steps") + 2:]]
    one_line_error(capsys, more, r"holds a fine-tune of .*a at step 2 \(nope \{\}\), not of .*a at step 4")
    assert json.loads((out / "a" / "config.json").read_text())["train"]["steps"] == 2  # refused before training
    shutil.rmtree(out / "a")  # the label now means another encoding
    other = CM(out, text_corpus, "a=alibi", *task)
    one_line_error(capsys, other, r"\(nope \{\}\), not of .*\(alibi")
    assert not (out / "a").exists()
    shutil.rmtree(out / "passkey" / "a")
    assert run_cli(other) == 0  # fine-tuned again once the stale fine-tune is gone


# -- 4. every spec checked before anything is written --------------------------------------------------


@pytest.mark.parametrize("spec,match", [
    ("fox:bias_init=nan", "bias_init must be a finite number"),
    ("fox:init_std=1e308", r"init_std must be in \[0, 10\]"),
    ("longrope:factor=8,long_factor=1/2", "long_factor must be a list of head_dim/2"),
    ("cope:npos_max=0", "npos_max must be an integer"),
    ("p_rope:fraction=2", "fraction must be a number in"),
    ("rope:base=-1", "base must be a finite positive number"),
])
def test_specs_are_built_before_anything_trains(tmp_path, text_corpus, capsys, spec, match):
    one_line_error(capsys, CM(tmp_path / "c", text_corpus, f"nope;{spec}"), match)
    assert not (tmp_path / "c").exists()
    one_line_error(capsys, SY(tmp_path / "s", f"nope;{spec}"), match)
    assert not (tmp_path / "s").exists()
    one_line_error(capsys, ["train", "--out", tmp_path / "t", "--position", spec, "--corpus", text_corpus,
                            "--preset", "tiny", "--steps", "1", "--no-progress"], match)
    assert not (tmp_path / "t").exists()


def test_bench_speed_checks_rows_and_writes_no_error_reports(tmp_path, capsys, monkeypatch):
    from firepe import bench

    base = ["bench-speed", "--scope", "layer", "--lengths", "16", "--heads", "2", "--head-dim", "8", "--repeats", "1",
            "--out", tmp_path / "b"]
    one_line_error(capsys, [*base, "--encodings", "cope", "--attention", "chunked"], "cope runs on a dense path")
    one_line_error(capsys, [*base, "--encodings", "fox:init_std=1e308"], r"init_std must be in")

    def failing(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "RuntimeError: worker died\n")

    monkeypatch.setattr(bench.subprocess, "run", failing)
    one_line_error(capsys, [*base, "--encodings", "nope,alibi"], r"every benchmark row failed \(first: RuntimeError")
    assert not (tmp_path / "b").exists()  # no bench.json/csv/png of error rows


def test_check_leaves_the_random_state_alone():
    torch.manual_seed(3)
    a = torch.rand(3)
    torch.manual_seed(3)
    positions.check("fire", 4, 16, {})
    positions.check("fox", 4, 16, {})
    assert torch.equal(torch.rand(3), a)


# -- 5. damaged kernel caches ------------------------------------------------------------------------

needs_cc = pytest.mark.skipif(cbuild.compiler() is None, reason="no C compiler")


@needs_cc
@pytest.mark.parametrize("damage", ["truncated", "fifo", "no-record"])
def test_a_damaged_kernel_cache_never_crashes_or_hangs(tmp_path, damage):
    cache = tmp_path / "cache"
    env = {**os.environ, "FIREPE_CACHE": str(cache)}
    code = ("import warnings, torch; warnings.simplefilter('always'); from firepe.positions import fire_kernel; "
            "print('available', fire_kernel.available())")
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "available True" in first.stdout, first.stderr
    lib = next(cache.glob("fire_table_*.so"))
    if damage == "truncated":
        data = lib.read_bytes()
        lib.write_bytes(data[: len(data) // 3])
    elif damage == "fifo":
        lib.unlink()
        os.mkfifo(lib)
    else:
        cbuild.record_path(lib).unlink()  # a cache from before records: built again
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    if damage == "no-record":
        assert "available True" in proc.stdout and cbuild.record_path(lib).exists()
    else:
        assert "available False" in proc.stdout
        assert "not the library firepe built" in proc.stderr or "not a regular file" in proc.stderr


@needs_cc
def test_a_read_only_kernel_cache_names_the_folder_it_cannot_build_in(tmp_path, monkeypatch):
    monkeypatch.setenv("FIREPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fire_kernel, "_LIB", [])
    (tmp_path / "cache").mkdir(mode=0o700)
    real = cbuild.tempfile.mkstemp

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(cbuild.tempfile, "mkstemp", read_only)
    with pytest.warns(UserWarning, match=r"could not build it into .*cache \(Read-only file system\)"):
        assert fire_kernel.build() is None
    monkeypatch.setattr(cbuild.tempfile, "mkstemp", real)


# -- 6. library errors are ValueErrors -------------------------------------------------------------------


def test_encoding_inputs_of_the_wrong_shape_or_value():
    with pytest.raises(ValueError, match=r"bias_init must be in \[-100, 100\]"):
        positions.build("fox", 4, 16, bias_init=1e39)
    fox = positions.build("fox", 4, 16)
    with pytest.raises(ValueError, match=r"fox log_forget takes the layer input \[B, T, 64\]"):
        fox.log_forget(torch.zeros(1, 5, 63))
    with pytest.raises(ValueError, match="log_forget"):
        fox.log_forget(torch.zeros(5, 64))
    cope = positions.build("cope", 4, 16)
    q, logits = torch.zeros(1, 4, 3, 16), torch.zeros(1, 4, 3, 3)
    assert cope.logit_bias(q, logits).shape == (1, 4, 3, 3)
    with pytest.raises(ValueError, match=r"queries \[B, H, Q, 16\]"):
        cope.logit_bias(torch.zeros(1, 4, 3, 15), logits)
    with pytest.raises(ValueError, match="masked logits"):
        cope.logit_bias(q, torch.zeros(1, 4, 2, 3))
    with pytest.raises(ValueError, match="NaN attention logits"):
        cope.logit_bias(q, torch.full((1, 4, 3, 3), float("nan")))


def test_train_with_an_overflowing_option_is_one_line(tmp_path, text_corpus, capsys):
    one_line_error(capsys, ["train", "--out", tmp_path / "t", "--position", "fox:bias_init=-1e308", "--corpus",
                            text_corpus, "--preset", "tiny", "--steps", "1", "--no-progress"], "bias_init must be in")
    assert not (tmp_path / "t").exists()


# -- 7. unbounded --text --------------------------------------------------------------------------------


@pytest.mark.parametrize("enc", ["fox", "cope"])
def test_plot_bias_text_is_bounded_before_the_model_runs(tmp_path, capsys, enc):
    from tests.test_hf import make_run

    run = make_run(tmp_path / "run", enc)
    one_line_error(capsys, ["plot-bias", run, "--text", "x" * 98_000], "plot-bias draws the bias of at most")
    one_line_error(capsys, ["plot-bias", run, "--text", "ab" * 1500], r"--text is 3,000 tokens")
    assert not list(run.glob("*.png"))


# -- 8. wording: a checkpoint pruned while it is read ------------------------------------------------------


def test_a_checkpoint_pruned_while_read_says_so(tmp_path, monkeypatch):
    import firepe.loading as loading
    from tests.test_hf import make_run

    run = make_run(tmp_path / "run", "nope")
    real = loading.read_state

    def pruned(ckpt):
        shutil.rmtree(ckpt)  # what the training process does between `latest` and the files
        return real(ckpt)

    monkeypatch.setattr(loading, "read_state", pruned)
    with pytest.raises(ValueError, match=r"was pruned while it was being read .* run the command again"):
        loading.load_run(run)
