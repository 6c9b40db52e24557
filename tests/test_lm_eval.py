"""lm-evaluation-harness on an exported run, offline: the tasks under tests/fixtures/lm_eval (local JSONL)
exercise log-likelihood, generation and rolling log-likelihood requests; answers are checked against
firepe's own model."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("firepe.hf", exc_type=ImportError)  # a missing or too old transformers: skipped, with the reason

from firepe.data import ByteTokenizer  # noqa: E402
from firepe.loading import load_run  # noqa: E402
from tests.helpers import run_cli  # noqa: E402
from tests.test_hf import SEQ, make_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tests" / "fixtures" / "lm_eval"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lm_eval_run(tmp_path, model_args: str, tasks: str, *extra: str) -> subprocess.CompletedProcess:
    """``lm_eval --model hf`` on the local tasks, offline, results under ``tmp_path/results``."""
    lm_eval = shutil.which("lm_eval") or pytest.skip("no lm_eval command")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets"), "OMP_NUM_THREADS": "1"}
    cmd = [lm_eval, "--model", "hf", "--model_args", model_args, "--tasks", tasks, "--include_path", str(TASKS),
           "--device", "cpu", "--batch_size", "2", "--output_path", str(tmp_path / "results"), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("name", ["fire", "fox", "cope"])  # a bias, a data bias (log f in the cache), context
def test_lm_eval_runs_on_an_exported_run(tmp_path, name):
    run = make_run(tmp_path / "run", name)
    out = tmp_path / "exported"
    assert run_cli(["export", run, "--out", out]) == 0
    res = lm_eval_run(tmp_path, f"pretrained={out},trust_remote_code=True,max_length={4 * SEQ}",
                      "firepe_mc,firepe_gen,firepe_rolling", "--log_samples")
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(next((tmp_path / "results").rglob("results_*.json")).read_text())["results"]
    assert 0 <= results["firepe_mc"]["acc,none"] <= 1
    assert 0 <= results["firepe_gen"]["exact_match,none"] <= 1
    assert results["firepe_rolling"]["byte_perplexity,none"] > 1

    model, _ = load_run(run)
    tok = ByteTokenizer()

    def samples(task):
        return sorted(_rows(next((tmp_path / "results").rglob(f"samples_{task}_*.jsonl"))), key=lambda r: r["doc_id"])

    # log-likelihood requests: sum of log p(continuation | context), as firepe computes it (max_length=64:
    # nothing is cut; without it lm-eval keeps the last max_position_embeddings = 16 tokens)
    for sample in samples("firepe_mc"):
        doc = sample["doc"]
        for choice, resp in zip(doc["choices"], sample["resps"]):
            ctx, cont = tok.encode(doc["question"]), tok.encode(choice)
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = model(ids)[0][0, :-1].log_softmax(-1)
            expected = logp[torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1), torch.tensor(cont)].sum().item()
            assert float(resp[0][0]) == pytest.approx(expected, abs=1e-4)
    # generation requests (batched, left-padded by lm-eval): firepe's greedy decoding, cut at "\n", 8 tokens
    for sample in samples("firepe_gen"):
        prompt = tok.encode(sample["doc"]["prompt"])
        out = model.generate(torch.tensor([prompt]), 8, temperature=0)[0, len(prompt):].tolist()
        if tok.eos_id in out:
            out = out[:out.index(tok.eos_id)]
        assert sample["resps"][0][0] == tok.decode(out).split("\n")[0]


def test_lm_eval_reads_the_training_length_as_max_length(tmp_path):
    """The decision documented in the README: an export declares max_position_embeddings = the training
    length, which lm-eval keeps as its context window unless --model_args max_length=N says otherwise."""
    from lm_eval.models.huggingface import HFLM

    import firepe.hf  # noqa: F401

    run = make_run(tmp_path / "run", "alibi")
    out = tmp_path / "exported"
    assert run_cli(["export", run, "--out", out]) == 0
    assert HFLM(pretrained=str(out), device="cpu", batch_size=1).max_length == SEQ
    assert HFLM(pretrained=str(out), device="cpu", batch_size=1, max_length=8 * SEQ).max_length == 8 * SEQ


def test_lm_eval_refuses_a_damaged_export(tmp_path):
    """A FoX export whose gate holds NaN used to score acc 0.75 with NaN perplexities and exit 0 (issue 32)."""
    from safetensors.torch import load_file, save_file

    run = make_run(tmp_path / "run", "fox")
    out = tmp_path / "exported"
    assert run_cli(["export", run, "--out", out]) == 0
    weights = load_file(out / "model.safetensors")
    name = next(k for k in weights if "gate" in k)
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    res = lm_eval_run(tmp_path, f"pretrained={out},trust_remote_code=True", "firepe_mc")
    assert res.returncode != 0 and "non-finite" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "results").exists()


def test_lm_eval_scores_a_llama_converted_to_fire(tmp_path):
    """A stock Llama turned into FIRE by firepe.hf.with_position, saved with a tokenizer: ``--model hf`` loads it
    through the folder's auto_map (trust_remote_code) and its log-likelihoods are the model's own."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from firepe.hf import byte_tokenizer, with_position

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=4 * SEQ, bos_token_id=256, eos_token_id=256,
                      pad_token_id=256)
    model = with_position(LlamaForCausalLM(cfg), "fire").eval()
    out = tmp_path / "llama_fire"
    model.save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    res = lm_eval_run(tmp_path, f"pretrained={out},trust_remote_code=True", "firepe_mc,firepe_gen", "--log_samples")
    assert res.returncode == 0, res.stderr[-3000:]
    tok = ByteTokenizer()
    rows = sorted(_rows(next((tmp_path / "results").rglob("samples_firepe_mc_*.jsonl"))), key=lambda r: r["doc_id"])
    for sample in rows:
        doc = sample["doc"]
        for choice, resp in zip(doc["choices"], sample["resps"]):
            ctx, cont = tok.encode(doc["question"]), tok.encode(choice)
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([ctx + cont])).logits[0, :-1].log_softmax(-1)
            expected = logp[torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1), torch.tensor(cont)].sum().item()
            assert float(resp[0][0]) == pytest.approx(expected, abs=1e-4)
