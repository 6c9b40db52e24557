"""``--arch llama``: transformers' Llama with a firepe encoding behind firepe's commands (firepe.arch)."""

import json

import pytest
import torch

pytest.importorskip("firepe.hf", exc_type=ImportError)

from firepe.arch import LlamaGPT, build_model  # noqa: E402
from firepe.attention import KVCache  # noqa: E402
from firepe.config import GPTConfig, preset  # noqa: E402
from firepe.generate import decode  # noqa: E402
from firepe.loading import load_run  # noqa: E402
from firepe.model import GPT  # noqa: E402
from tests.helpers import TINY, one_line_error, run_cli  # noqa: E402


def llama(position="fire", **kw):
    torch.manual_seed(0)
    return build_model(preset("tiny", position=position, vocab_size=64, arch="llama", **kw))


def test_build_model_picks_the_architecture():
    assert type(build_model(preset("tiny", position="fire", vocab_size=64))) is GPT
    model = llama()
    assert isinstance(model, LlamaGPT) and type(model.llama).__name__ == "FirePELlamaForCausalLM"
    assert [type(m).__name__ for m in model.llama.model.layers[0].modules()][-1] != "RotaryEmbedding"
    assert model.llama.model.norm.__class__.__name__ == "LlamaRMSNorm"


@pytest.mark.parametrize("position", ["fire", "alibi", "rope", "cope", "fire_s", "t5"])
def test_cache_equals_full_recomputation_and_padding(position):
    model = llama(position).eval()
    idx = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    assert torch.equal(decode(model, idx, 5), decode(model, idx, 5, use_cache=False))
    cache = KVCache.empty(model.cfg.n_layer)
    with torch.no_grad():
        pieces = torch.cat([model(idx[:, :4], cache=cache)[0], model(idx[:, 4:], cache=cache)[0]], 1)
        torch.testing.assert_close(pieces, model(idx)[0], rtol=1e-5, atol=1e-5)
        mask = torch.ones(2, 9, dtype=torch.long)
        mask[1, :3] = 0
        padded = model(idx, attention_mask=mask)[0]
        torch.testing.assert_close(padded[1, 3:], model(idx[1:, 3:])[0][0], rtol=1e-5, atol=1e-5)


def test_shared_encodings_are_one_module_and_backends_agree():
    model = llama("fire_s", position_options={"init_L": 8.0})
    mods = {id(model.position_for(i)) for i in range(model.cfg.n_layer)}
    assert len(mods) == 1
    idx = torch.randint(0, 64, (2, 21), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        dense = model.set_attention("dense")(idx)[0]
        for backend in ("blocked", "chunked", "auto"):
            torch.testing.assert_close(model.set_attention(backend, 8)(idx)[0], dense, rtol=2e-5, atol=2e-5)
    assert model.llama.config.firepe_block == 8


def test_config_errors():
    with pytest.raises(ValueError, match="unknown architecture 'gpt2'"):
        GPTConfig(arch="gpt2")
    with pytest.raises(ValueError, match="no dropout"):
        GPTConfig(arch="llama", dropout=0.1)
    with pytest.raises(ValueError, match="randomized positions"):
        llama()(torch.zeros(1, 4, dtype=torch.long), positions=torch.arange(4)[None])


def test_a_model_transformers_refuses_is_one_line_and_nothing_is_written(tmp_path, text_corpus, capsys):
    run = tmp_path / "run"
    one_line_error(capsys, ["train", "--out", run, "--arch", "llama", "--d-model", "28", "--n-head", "4",
                            "--steps", "2", "--corpus", text_corpus, *TINY], "arch 'llama'.*even")
    assert not run.exists()
    one_line_error(capsys, ["train", "--out", run, "--arch", "llama", "--dropout", "0.1", "--steps", "2",
                            "--corpus", text_corpus, *TINY], "no dropout")
    one_line_error(capsys, ["train", "--out", run, "--arch", "mamba", "--steps", "2", "--corpus", text_corpus,
                            *TINY], "arch")
    assert not run.exists()


def test_train_eval_generate_resume_and_export(tmp_path, text_corpus, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", "--out", run, "--arch", "llama", "--position", "fire", "--steps", "4",
                    "--corpus", text_corpus, *TINY]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["arch"] == "llama"
    model, _ = load_run(run)
    assert isinstance(model, LlamaGPT)
    assert run_cli(["eval", run, "--lengths", "16,32"]) == 0
    assert run_cli(["generate", run, "--prompt", "def ", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert run_cli(["train", "--out", run, "--resume", "--steps", "6", "--corpus", text_corpus, *TINY]) == 0
    one_line_error(capsys, ["train", "--out", run, "--resume", "--steps", "8", "--arch", "gpt",
                            "--corpus", text_corpus, *TINY], "arch")
    out = tmp_path / "exported"
    assert run_cli(["export", run, "--out", out]) == 0
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(out)
    model, _ = load_run(run)
    idx = torch.randint(0, 200, (1, 12), generator=torch.Generator().manual_seed(3))
    assert json.loads((out / "config.json").read_text())["model_type"] == "firepe_llama"
    assert torch.equal(exported(input_ids=idx).logits, model(idx)[0])


def test_compare_with_the_llama_architecture(tmp_path, text_corpus, capsys):
    out_dir = tmp_path / "cmp"
    code = run_cli(["compare", "--out", out_dir, "--encodings", "rope,fire", "--steps", "3", "--arch", "llama",
                    "--max-factor", "2", "--corpus", text_corpus, *TINY])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out_dir / "results.json").read_text())
    assert len(summary["runs"]) == 2
    assert json.loads((out_dir / "fire" / "config.json").read_text())["model"]["arch"] == "llama"


def test_synth_with_the_llama_architecture_and_random_positions_refused(tmp_path, capsys):
    out = tmp_path / "synth"
    base = ["synth", "--out", out, "--encodings", "fire", "--seeds", "1", "--batch-size", "4", "--no-progress",
            "--max-factor", "2", "--examples", "8", "--steps", "3", "--arch", "llama"]
    assert run_cli(base) == 0, capsys.readouterr().err
    assert json.loads((out / "fire" / "config.json").read_text())["model"]["arch"] == "llama"
    bad = tmp_path / "bad"
    one_line_error(capsys, ["train", "--out", bad, "--arch", "llama", "--random-positions", "512", "--steps", "2",
                            "--preset", "tiny", "--no-progress"], "random-positions")
    assert not bad.exists()


def test_fox_decodes_with_a_cache_by_recomputing(tmp_path):
    model = llama("fox").eval()
    idx = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(4))
    assert torch.equal(decode(model, idx, 4), decode(model, idx, 4, use_cache=False))


def test_a_llama_export_reads_like_a_run(tmp_path, text_corpus):
    run = tmp_path / "run"
    assert run_cli(["train", "--out", run, "--arch", "llama", "--position", "fire_s", "--steps", "2",
                    "--corpus", text_corpus, *TINY]) == 0
    out = tmp_path / "exported"
    assert run_cli(["export", run, "--out", out]) == 0
    exported, cfg = load_run(out)
    model, _ = load_run(run)
    assert isinstance(exported, LlamaGPT) and cfg["model"]["arch"] == "llama"
    idx = torch.randint(0, 200, (1, 12), generator=torch.Generator().manual_seed(3))
    assert torch.equal(exported(idx)[0], model(idx)[0])
    assert run_cli(["eval", out, "--lengths", "16"]) == 0
