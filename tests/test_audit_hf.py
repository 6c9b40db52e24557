"""Audit of the Hugging Face export (issue 11): failing cases found by an outside review.

Each test is tiny (a random 2-layer model, no training) and states the expected behaviour.
"""

import pytest
import torch

pytest.importorskip("firepe.hf", exc_type=ImportError)  # a missing or too old transformers: skipped, with the reason

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import firepe.hf  # noqa: E402,F401  (registers the Auto classes)
from tests.test_hf import export  # noqa: E402


@pytest.mark.parametrize("kwarg", ["dtype", "torch_dtype"])
def test_bf16_load_of_a_fire_export_runs_forward(tmp_path, kwarg):
    """``from_pretrained(EXPORT, dtype=torch.bfloat16)`` is accepted for FIRE (the default encoding), but the
    forward pass then dies with ``RuntimeError: index N is out of bounds`` in fire_table (the table index is
    clamped in bfloat16, where ``table_size - 2`` rounds up past the table). It must either run (logits close
    to the float32 ones) or refuse at load time with a clear error -- not crash on the first forward."""
    _, out = export(tmp_path, "fire", {"init_L": 4.0})
    ids = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(0))
    ref = AutoModelForCausalLM.from_pretrained(out).eval()
    model = AutoModelForCausalLM.from_pretrained(out, **{kwarg: torch.bfloat16}).eval()
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(ids).logits
        want = ref(ids).logits
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits.float()).all()
    assert (logits.float() - want).abs().max() < 0.5


@pytest.mark.parametrize("untied", [False, True])
def test_resize_token_embeddings_then_use_the_new_token(tmp_path, untied):
    """``resize_token_embeddings`` grows ``wte``/``lm_head`` and ``config.vocab_size`` but leaves the inner
    GPT's ``cfg.vocab_size`` at the old size, so the model rejects the new token's id
    (``ValueError: idx holds the token id 257, outside the vocabulary``): adding a special token, the usual
    reason to resize, cannot be used."""
    _, out = export(tmp_path, "rope")
    if untied:
        from firepe.hf import FirePEForCausalLM
        model = AutoModelForCausalLM.from_pretrained(out)
        cfg = model.config
        cfg.tie_word_embeddings = False
        model = FirePEForCausalLM(cfg)
    else:
        model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.add_special_tokens({"additional_special_tokens": ["<new>"]})
    model.resize_token_embeddings(len(tok))
    assert model.config.vocab_size == len(tok) == 258
    new_id = tok.convert_tokens_to_ids("<new>")
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, new_id]])).logits
    assert logits.shape == (1, 3, 258)
