"""firepe.hf.with_position's contract with the installed transformers, checked call by call.

The integration rests on what transformers' Llama-family attention passes to the function registered as
``attn_implementation="firepe"``: ``(module, query, key, value, attention_mask, dropout=, scaling=, **kwargs)`` with
``query`` ``[B, H, Q, D]`` as the q projection made it (the rotary is the identity), ``key``/``value``
``[B, H_kv, K, D]`` holding every cached key then the new ones, and a boolean ``[B, 1, Q, K]`` mask (or None) whose
last query row is the 2-D ``attention_mask``. A release that changes any of these fails here, naming its version.
"""

import pytest
import torch

pytest.importorskip("firepe.hf", exc_type=ImportError)

import transformers  # noqa: E402
from transformers.modeling_utils import AttentionInterface  # noqa: E402

import firepe.hf_position as hp  # noqa: E402
from tests.test_hf_position import FAMILIES, tiny, tokens, with_position  # noqa: E402

V = f"transformers {transformers.__version__}"


class Spy:
    """Wraps the registered firepe attention function and records every call."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = hp.firepe_attention

        def spy(module, query, key, value, attention_mask, *args, **kwargs):
            assert not args, f"{V} passes {len(args)} positional arguments after the mask; the contract is keywords"
            self.calls.append(dict(module=module, q=query.detach().clone(), k=key.detach().clone(),
                                   mask=attention_mask, kwargs=dict(kwargs)))
            return real(module, query, key, value, attention_mask, **kwargs)

        self.real = real
        AttentionInterface.register(hp.IMPLEMENTATION, spy)

    def restore(self):
        AttentionInterface.register(hp.IMPLEMENTATION, self.real)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_attention_receives_unrotated_projections_all_keys_and_the_mask(family, monkeypatch):
    model = with_position(tiny(family), "fire")
    ids = tokens(n=7)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    with Spy(monkeypatch) as spy:
        projected = {}
        hooks = [layer.self_attn.q_proj.register_forward_hook(
            lambda m, a, out, i=i: projected.__setitem__(i, out)) for i, layer in enumerate(model.model.layers)]
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
        for h in hooks:
            h.remove()
    layers = model.config.num_hidden_layers
    assert len(spy.calls) == 3 * layers, f"{V}: {len(spy.calls)} attention calls for 3 steps of {layers} layers"
    for step in range(3):
        n_q, n_k = (7, 7) if step == 0 else (1, 7 + step)
        full_mask = torch.cat([mask, torch.ones(2, step, dtype=mask.dtype)], 1)
        for layer in range(layers):
            call = spy.calls[step * layers + layer]
            assert call["module"] is model.model.layers[layer].self_attn, f"{V}: the module is not the layer's"
            assert tuple(call["q"].shape) == (2, heads, n_q, 8), f"{V}: step {step} query {tuple(call['q'].shape)}"
            assert tuple(call["k"].shape) == (2, kv_heads, n_k, 8), f"{V}: step {step} keys {tuple(call['k'].shape)}"
            assert "dropout" in call["kwargs"] and "scaling" in call["kwargs"], f"{V}: {sorted(call['kwargs'])}"
            m = call["mask"]
            assert m is not None and m.dtype == torch.bool and tuple(m.shape) == (2, 1, n_q, n_k), \
                f"{V}: step {step} mask {None if m is None else (m.dtype, tuple(m.shape))}"
            assert torch.equal(m[:, 0, -1, :], full_mask.bool()), f"{V}: the mask's last row is not attention_mask"
    # the rotary is the identity: the query handed over is the q projection itself (the last step's)
    if family != "qwen3":  # Qwen3 normalizes q per head (q_norm) before the rotary
        q_last = projected[layers - 1].view(2, 1, heads, 8).transpose(1, 2)
        assert torch.equal(spy.calls[-1]["q"], q_last), f"{V}: the query was changed between projection and attention"


def test_no_padding_mask_may_be_none_and_positions_are_given(monkeypatch):
    model = with_position(tiny(), "alibi")
    with Spy(monkeypatch) as spy:
        model(input_ids=tokens(n=6))
    for call in spy.calls:
        m = call["mask"]
        assert m is None or (m.dtype == torch.bool and bool(m[:, 0, -1, :].all())), f"{V}: mask {m}"
        pos = call["kwargs"].get("position_ids")
        assert pos is None or torch.equal(pos.expand(2, 6), torch.arange(6).expand(2, 6)), f"{V}: position_ids {pos}"
