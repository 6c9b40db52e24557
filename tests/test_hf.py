"""``firepe export`` and the transformers integration: parity with firepe, generation, round trips, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("firepe.hf", exc_type=ImportError)  # a missing or too old transformers: skipped, with the reason

from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: E402

import firepe.hf  # noqa: E402,F401  (registers the Auto classes)
from firepe.checkpoint import save_checkpoint  # noqa: E402
from firepe.config import (
    DataConfig,  # noqa: E402
    GPTConfig,  # noqa: E402
    TrainConfig,  # noqa: E402
)
from firepe.data import BPETokenizer, ByteTokenizer  # noqa: E402
from firepe.loading import load_run  # noqa: E402
from firepe.model import GPT  # noqa: E402
from firepe.runs import RunFolder  # noqa: E402
from firepe.train import build_optimizer  # noqa: E402
from tests.helpers import one_line_error, run_cli  # noqa: E402
from tests.test_model import ALL  # noqa: E402

SEQ = 16
TEXT = ("def add(a, b):\n    return a + b\n\nimport os\nprint(os.getcwd())\n"
        "# caf\u00e9 \u00fcber \u6f22\u5b57 \U0001f600\n") * 40


def make_run(folder: Path, position="fire", opts=None, tokenizer="byte", seed=0) -> Path:
    """A run folder with one checkpoint of a tiny model whose weights (position ones included) are random."""
    folder.mkdir(parents=True)
    corpus = folder.parent / "corpus.txt"
    corpus.write_text(TEXT)
    vocab = 257
    if tokenizer == "bpe":
        tok = BPETokenizer.train([TEXT], 300)
        tok.save(folder / "tokenizer.json")
        vocab = tok.vocab_size
    model_cfg = GPTConfig(vocab_size=vocab, n_layer=2, n_head=2, d_model=32, position=position,
                          position_options=opts or {})
    torch.manual_seed(seed)
    model = GPT(model_cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    RunFolder(folder).write_config(model_cfg, TrainConfig(seq_len=SEQ), DataConfig(corpus=str(corpus),
                                                                                  tokenizer=tokenizer))
    save_checkpoint(folder, 1, model, build_optimizer(model, TrainConfig()), {"loss": 1.0})
    return folder


def export(tmp_path, position="fire", opts=None, tokenizer="byte"):
    run = make_run(tmp_path / "run", position, opts, tokenizer)
    out = tmp_path / "exported"
    assert run_cli(["export", run, "--out", out]) == 0
    return run, out


@pytest.mark.parametrize("name,opts", ALL)
def test_every_encoding_exports_with_identical_logits_at_1x_and_8x(tmp_path, name, opts):
    run, out = export(tmp_path, name, opts)
    ref, _ = load_run(run)
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert type(hf).__name__ == "FirePEForCausalLM" and hf.dtype == torch.float32
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "firepe" and cfg["position"] == name and cfg["position_options"] == opts
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_firepe.FirePEForCausalLM"
    assert cfg["max_position_embeddings"] == SEQ
    g = torch.Generator().manual_seed(1)
    for length in (SEQ, 8 * SEQ):
        ids = torch.randint(0, 257, (2, length), generator=g)
        with torch.no_grad():
            a = hf(ids).logits
            b, _ = ref(ids)
        assert (a - b).abs().max().item() <= 1e-5, (name, length)


@pytest.mark.parametrize("name,opts", [("fire", {}), ("rope", {}), ("t5", {})])
def test_greedy_generate_matches_firepe_generate(tmp_path, capsys, name, opts):
    run, out = export(tmp_path, name, opts)
    hf = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    prompt = "import os\nprint("
    ids = tok(prompt, return_tensors="pt")
    n = 3 * SEQ
    gen = hf.generate(**ids, do_sample=False, max_new_tokens=n, min_new_tokens=n)
    capsys.readouterr()
    assert run_cli(["generate", out, "--prompt", prompt, "--temperature", 0, "--max-new-tokens", n]) == 0
    ours = capsys.readouterr().out.rstrip("\n")
    assert tok.decode(gen[0], skip_special_tokens=True) == ours
    assert run_cli(["generate", run, "--prompt", prompt, "--temperature", 0, "--max-new-tokens", n]) == 0
    assert capsys.readouterr().out.rstrip("\n") == ours
    # a left-padded batch: each row generates what it generates alone
    tok.padding_side = "left"
    prompts = ["a", prompt, "x = 1\n"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    together = hf.generate(**batch, do_sample=False, max_new_tokens=8, min_new_tokens=8)[:, -8:]
    for row, p in zip(together, prompts):
        alone = hf.generate(**tok(p, return_tensors="pt"), do_sample=False, max_new_tokens=8, min_new_tokens=8)
        assert row.tolist() == alone[0, -8:].tolist()


def test_save_pretrained_round_trip_and_pipeline(tmp_path):
    _, out = export(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    again = tmp_path / "again"
    hf.save_pretrained(again)
    tok.save_pretrained(again)
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in out.iterdir())
    assert (again / "modeling_firepe.py").read_text() == (out / "modeling_firepe.py").read_text()
    assert "from firepe.hf import" in (again / "modeling_firepe.py").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(again)
    ids = torch.randint(0, 257, (1, 40))
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, reloaded(ids).logits)
    text = pipeline("text-generation", model=reloaded, tokenizer=tok)("import ", max_new_tokens=5,
                                                                       do_sample=False)[0]["generated_text"]
    ids = tok("import ", return_tensors="pt")
    assert text == tok.decode(reloaded.generate(**ids, do_sample=False, max_new_tokens=5)[0], skip_special_tokens=True)


def test_labels_give_the_shifted_next_token_loss(tmp_path):
    run, out = export(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(out)
    ref, _ = load_run(run)
    ids = torch.randint(0, 256, (2, 12))
    labels = ids.clone()
    labels[0, 5] = -100
    with torch.no_grad():
        loss = hf(ids, labels=labels).loss
        targets = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], 1)
        _, expected = ref(ids, targets)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("text", ["", "hello", "caf\u00e9 \U0001f600 \u6f22", "a<|endoftext|>b", "\x00\x01\n\t  x"])
def test_byte_tokenizer_ids_are_firepe_ids(tmp_path, text):
    tok = firepe.hf.byte_tokenizer()
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert ids == ByteTokenizer().encode(text)
    assert tok.decode(ids) == text
    assert tok.eos_token_id == tok.pad_token_id == 256 and len(tok) == 257


def test_bpe_run_exports_its_tokenizer(tmp_path):
    run, out = export(tmp_path, tokenizer="bpe")
    tok = AutoTokenizer.from_pretrained(out)
    ours = BPETokenizer.load(run / "tokenizer.json")
    for text in ["import os\nprint(os.getcwd())", TEXT[:200], "a<|endoftext|>b"]:
        assert tok(text)["input_ids"] == ours.encode(text)
    assert tok.eos_token_id == ours.eos_id
    hf = AutoModelForCausalLM.from_pretrained(out)
    ref, _ = load_run(run)
    ids = torch.tensor([ours.encode(TEXT[:300])])
    with torch.no_grad():
        assert (hf(ids).logits - ref(ids)[0]).abs().max() <= 1e-5


def test_eval_and_plot_bias_take_an_exported_folder(tmp_path, capsys):
    run, out = export(tmp_path, "fire")
    capsys.readouterr()
    args = ["--lengths", "16,32", "--val-tokens", 512, "--no-progress"]
    assert run_cli(["eval", run, *args, "--out", tmp_path / "a"]) == 0
    assert run_cli(["eval", out, *args, "--out", tmp_path / "b"]) == 0
    a, b = (json.loads((tmp_path / f"{x}.json").read_text())["results"] for x in "ab")
    assert a == b
    assert run_cli(["plot-bias", out, "--query", 20, "--out", tmp_path / "bias.png"]) == 0
    assert (tmp_path / "bias.png").stat().st_size > 0


def test_remote_code_loads_in_a_fresh_process(tmp_path):
    """What a user without ``import firepe.hf`` runs: ``trust_remote_code=True`` imports modeling_firepe.py."""
    run, out = export(tmp_path, "kerple_log")
    ids = torch.randint(0, 257, (1, 3 * SEQ))
    ref, _ = load_run(run)
    with torch.no_grad():
        expected = ref(ids)[0]
    torch.save({"ids": ids, "expected": expected}, tmp_path / "io.pt")
    code = ("import sys, torch\nfrom transformers import AutoModelForCausalLM\n"
            "assert 'firepe.hf' not in sys.modules\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
            f"d = torch.load({str(tmp_path / 'io.pt')!r})\n"
            "with torch.no_grad():\n    print((m(d['ids']).logits - d['expected']).abs().max().item())\n")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert float(res.stdout.strip().splitlines()[-1]) <= 1e-5


# -- bad input ---------------------------------------------------------------------------------------


def test_export_refuses_what_it_cannot_export(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    one_line_error(capsys, ["export", tmp_path / "missing", "--out", tmp_path / "x"], "does not exist")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["export", tmp_path / "empty", "--out", tmp_path / "x"], "config.json")
    (tmp_path / "taken").mkdir()
    one_line_error(capsys, ["export", run, "--out", tmp_path / "taken"], "already exists")
    assert list((tmp_path / "taken").iterdir()) == []
    assert run_cli(["export", run, "--out", tmp_path / "ok"]) == 0
    one_line_error(capsys, ["export", tmp_path / "ok", "--out", tmp_path / "x"], "already an exported folder")
    ckpt = next((run / "checkpoints").glob("step-*"))
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    one_line_error(capsys, ["export", run, "--out", tmp_path / "x"], "corrupt or truncated")
    (run / "config.json").write_text('{"model": ')
    one_line_error(capsys, ["export", run, "--out", tmp_path / "x"], "not valid JSON")
    assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_needs_a_recent_transformers(tmp_path, capsys, monkeypatch):
    import importlib.metadata

    run = make_run(tmp_path / "run")
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda p: "4.40.0" if p == "transformers" else real(p))
    monkeypatch.delitem(sys.modules, "firepe.hf")
    one_line_error(capsys, ["export", run, "--out", tmp_path / "x"], r"transformers>=5\.23\.0, found 4\.40\.0")
    assert not (tmp_path / "x").exists()


def test_a_full_disk_leaves_no_output_folder(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "x"
    cmd = f"ulimit -f 20; exec {sys.executable} -m firepe export {run} --out {out}"
    res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.startswith("firepe: error:") and res.stderr.count("\n") == 1, res.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_rename_leaves_no_output_folder(tmp_path, capsys, monkeypatch):
    run = make_run(tmp_path / "run")

    def refuse(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(firepe.hf.os, "rename", refuse)
    one_line_error(capsys, ["export", run, "--out", tmp_path / "x"], "No space left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "run"]


@pytest.mark.parametrize("command", [["eval", "{}", "--lengths", "16"], ["generate", "{}", "--prompt", "a"],
                                     ["plot-bias", "{}"]])
def test_an_export_naming_an_unknown_encoding_is_one_line(tmp_path, capsys, command):
    _, out = export(tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    cfg["position"] = "fire2"
    (out / "config.json").write_text(json.dumps(cfg))
    one_line_error(capsys, [c.format(out) for c in command], "unknown position encoding 'fire2'")
    with pytest.raises(ValueError, match="fire2"):
        AutoModelForCausalLM.from_pretrained(out)


def test_an_export_with_damaged_weights_is_one_line(tmp_path, capsys):
    _, out = export(tmp_path)
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])
    one_line_error(capsys, ["generate", out, "--prompt", "a"], "corrupt or truncated")


def test_a_killed_export_leaves_no_output_and_the_next_one_cleans_up(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "x"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".x.{dead.stdout.strip()}.abc.tmp"  # what a kill -9 before the rename leaves
    stale.mkdir()
    (stale / "config.json").write_text("{")
    alive = tmp_path / f".x.{os.getpid()}.def.tmp"  # a running export's folder is left alone
    alive.mkdir()
    assert run_cli(["export", run, "--out", out]) == 0
    assert not stale.exists() and alive.exists()
    assert AutoModelForCausalLM.from_pretrained(out) is not None


def test_bad_position_options_in_an_export_name_the_file(tmp_path, capsys):
    _, out = export(tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    cfg["position_options"] = {"init_L": float("nan")}
    (out / "config.json").write_text(json.dumps(cfg))
    one_line_error(capsys, ["eval", out, "--lengths", "16"], r"config\.json.*init_L")


def test_position_ids_must_be_the_positions_of_the_real_tokens(tmp_path):
    _, out = export(tmp_path, "fire")
    hf = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(0, 256, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    right = torch.stack([torch.arange(8), torch.tensor([1, 1, 1, 0, 1, 2, 3, 4])])  # padding: any value
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask).logits
        assert torch.equal(hf(ids, attention_mask=mask, position_ids=right).logits, expected)
        assert torch.equal(hf(ids, position_ids=torch.arange(8)[None]).logits, hf(ids).logits)
        for wrong in (right + 1, torch.arange(7)[None]):
            with pytest.raises(ValueError, match="position_ids other than"):
                hf(ids, attention_mask=mask, position_ids=wrong)


@pytest.mark.parametrize("bad", ["", "file", "file/inside", "dangling"])
def test_export_refuses_an_unusable_out(tmp_path, capsys, bad):
    run = make_run(tmp_path / "run")
    (tmp_path / "file").write_text("keep me")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    out = "" if bad == "" else tmp_path / bad
    one_line_error(capsys, ["export", run, "--out", out], ".")
    assert (tmp_path / "file").read_text() == "keep me"
    assert not (tmp_path / "nowhere").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
