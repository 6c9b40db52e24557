"""The exported model's contract with transformers, checked against the installed release.

transformers changes how ``generate`` calls a model between releases (5.24 renamed the cache keyword from
``past_key_values`` to ``cache``). These tests record what the installed transformers really passes to
``FirePEForCausalLM.forward`` at every step of ``generate`` and ``pipeline`` and check each input
against what the model reads, so a new release that changes the calling convention fails here, with
its version in the message, instead of far downstream in a parity test.
"""

import pytest
import torch

firepe_hf = pytest.importorskip("firepe.hf", exc_type=ImportError)  # skips (with the reason) on old transformers

import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, pipeline  # noqa: E402

from firepe.hf import FORWARD_KEYWORDS, FirePEForCausalLM  # noqa: E402
from tests.test_hf import export  # noqa: E402

V = f"transformers {transformers.__version__}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    _, out = export(tmp_path_factory.mktemp("contract"), "rope")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    tok.padding_side = "left"
    return model, tok


class Spy:
    """Records the keywords of every ``forward`` call and the state of the cache it was handed."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = FirePEForCausalLM.forward

        def forward(model, *args, **kwargs):
            assert not args, f"{V} passes positional arguments {len(args)} to forward; the contract is keywords"
            unread = set(kwargs) - set(FORWARD_KEYWORDS)  # checked before the model runs (and maybe fails)
            assert not unread, f"{V} passes {sorted(unread)} to FirePEForCausalLM.forward, which does not read it"
            handed = kwargs.get("cache", kwargs.get("past_key_values"))
            self.calls.append({"keys": set(kwargs), "kwargs": dict(kwargs),
                               "cached": handed.get_seq_length() if handed is not None else None})
            return real(model, **kwargs)

        monkeypatch.setattr(FirePEForCausalLM, "forward", forward)

    def check_decoding(self, prompt_len: int, steps: int) -> None:
        """``steps`` forward calls of one decoding: a prefill of ``prompt_len`` tokens, then one token each."""
        assert len(self.calls) == steps, f"{V}: {len(self.calls)} forward calls for {steps} generated tokens"
        seen = 0
        for i, call in enumerate(self.calls):
            kw = call["kwargs"]
            ids = kw["input_ids"]
            if i > 0:
                assert call["cached"] is not None, f"{V}: step {i} was handed no cache (keys {sorted(call['keys'])})"
                assert call["cached"] == seen, (f"{V}: step {i} was handed a cache of {call['cached']} tokens, "
                                                f"expected the {seen} already processed: the model did not fill "
                                                "the cache transformers passes")
                assert ids.shape[1] == 1, f"{V}: decoding step {i} sends {ids.shape[1]} tokens, expected 1"
            else:
                assert ids.shape[1] == prompt_len and not call["cached"], f"{V}: the prefill is not the prompt"
            mask = kw.get("attention_mask")
            if mask is not None:
                assert mask.dim() == 2 and tuple(mask.shape) == (ids.shape[0], seen + ids.shape[1]), \
                    f"{V}: step {i} mask {tuple(mask.shape)}, expected [batch, cached + new] = {seen + ids.shape[1]}"
            if kw.get("position_ids") is not None:
                real = mask.cumsum(-1)[:, -ids.shape[1]:] - 1 if mask is not None else torch.arange(seen, seen + 1)
                pos = kw["position_ids"].expand_as(real)
                keep = mask[:, -ids.shape[1]:].bool() if mask is not None else torch.ones_like(real, dtype=torch.bool)
                assert torch.equal(pos[keep], real[keep]), f"{V}: step {i} position_ids {pos.tolist()} != {real}"
            if kw.get("cache_position") is not None:
                assert kw["cache_position"].tolist() == list(range(seen, seen + ids.shape[1])), \
                    f"{V}: step {i} cache_position {kw['cache_position'].tolist()}"
            seen += ids.shape[1]


def greedy_without_cache(model, ids, mask, n):
    """Greedy decoding by a full forward over the whole sequence at every step (no cache)."""
    out = ids
    for _ in range(n):
        logits = model(input_ids=out, attention_mask=mask, use_cache=False).logits[:, -1]
        out = torch.cat([out, logits.argmax(-1, keepdim=True)], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return out


def test_generate_per_step_inputs_match_what_the_model_reads(exported, monkeypatch):
    model, tok = exported
    batch = tok(["a", "import os\nprint(", "x = 1\n"], return_tensors="pt", padding=True)
    spy = Spy(monkeypatch)
    with torch.no_grad():
        gen = model.generate(**batch, do_sample=False, max_new_tokens=5, min_new_tokens=5)
    spy.check_decoding(batch["input_ids"].shape[1], 5)
    with torch.no_grad():
        expected = greedy_without_cache(model, batch["input_ids"], batch["attention_mask"], 5)
    assert gen.tolist() == expected.tolist(), f"{V}: cached greedy generate differs from full recomputation"


def test_sampling_generate_and_pipeline_follow_the_contract(exported, monkeypatch):
    model, tok = exported
    ids = tok("def f(x):", return_tensors="pt")
    spy = Spy(monkeypatch)
    torch.manual_seed(0)
    with torch.no_grad():
        model.generate(**ids, do_sample=True, max_new_tokens=4, min_new_tokens=4)
    spy.check_decoding(ids["input_ids"].shape[1], 4)
    spy.calls.clear()
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    text = pipe("def f(x):", max_new_tokens=4, min_new_tokens=4, do_sample=False)[0]["generated_text"]
    spy.check_decoding(ids["input_ids"].shape[1], 4)
    with torch.no_grad():
        expected = greedy_without_cache(model, ids["input_ids"], ids["attention_mask"], 4)
    assert text == tok.decode(expected[0], skip_special_tokens=True), f"{V}: pipeline output differs"


def test_the_cache_is_read_under_either_name(exported):
    model, _ = exported
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        for name in ("cache", "past_key_values"):
            cache = DynamicCache(config=model.config)
            model(ids[:, :7], **{name: cache})
            assert cache.get_seq_length() == 7, name
            mask = torch.ones(2, 10, dtype=torch.long)
            step = model(ids[:, 7:], attention_mask=mask, cache_position=torch.arange(7, 10), **{name: cache})
            torch.testing.assert_close(step.logits, full[:, 7:], atol=1e-5, rtol=0)
            assert cache.get_seq_length() == 10, name


def test_a_keyword_the_model_does_not_read_is_refused(exported):
    model, _ = exported
    ids = torch.randint(0, 256, (1, 6))
    with pytest.raises(ValueError, match=r"does not take 'cache_params', 'foo'.*transformers"):
        model(ids, foo=1, cache_params=DynamicCache(config=model.config))
    for flag in ("output_attentions", "output_hidden_states"):
        with pytest.raises(ValueError, match=flag):
            model(ids, **{flag: True})
        model(ids, **{flag: False})
    with pytest.raises(ValueError, match="not both"):
        model(ids, cache=DynamicCache(config=model.config), past_key_values=DynamicCache(config=model.config))
    with pytest.raises(ValueError, match="cache_position must be the 6 positions after the 0 cached"):
        model(ids, cache_position=torch.arange(1, 7))


def test_return_dict_false_and_num_items_in_batch(exported):
    model, _ = exported
    ids = torch.randint(0, 256, (2, 9))
    labels = ids.clone()
    labels[0, :4] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
        tup = model(ids, labels=labels, return_dict=False, use_cache=False)
        summed = model(ids, labels=labels, num_items_in_batch=100).loss
    assert isinstance(tup, tuple) and torch.equal(tup[0], out.loss) and torch.equal(tup[1], out.logits)
    logits, target = out.logits[:, :-1].reshape(-1, out.logits.size(-1)), labels[:, 1:].reshape(-1)
    keep = target != -100
    nll = -torch.log_softmax(logits[keep], -1).gather(1, target[keep, None]).sum()
    torch.testing.assert_close(summed, nll / 100)
    torch.testing.assert_close(out.loss, nll / keep.sum())
