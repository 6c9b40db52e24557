"""Padded batches (``attention_mask``): every row scores as it would alone, with and without a KV cache."""

import pytest
import torch

from firepe.attention import KVCache, RowPositions
from firepe.config import preset
from firepe.model import GPT
from tests.test_model import ALL


def tiny(position, opts):
    torch.manual_seed(0)
    model = GPT(preset("tiny", position=position, position_options=opts, vocab_size=50)).eval()
    for p in model.position_modules()[0].parameters():  # untrained FIRE/Kerple start near 0: make biases matter
        p.data.add_(0.3 * torch.randn_like(p))
    return model


def test_row_positions_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 1, 1]])
    rows = RowPositions.from_mask(mask, queries=2)
    assert rows.k.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]
    assert rows.q.tolist() == [[1, 2], [3, 4], [1, 2]]
    assert rows.valid.tolist() == mask.bool().tolist()


@pytest.mark.parametrize("name,opts", ALL)
def test_left_padded_rows_match_each_row_alone(name, opts):
    model = tiny(name, opts)
    lengths = [9, 5, 1]
    width = max(lengths)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 50, (n,), generator=g) for n in lengths]
    idx = torch.stack([torch.cat([torch.full((width - len(r),), 7), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), torch.ones(len(r), dtype=torch.long)])
                        for r in rows])
    with torch.no_grad():
        padded, _ = model(idx, attention_mask=mask)
        for b, r in enumerate(rows):
            alone, _ = model(r[None])
            torch.testing.assert_close(padded[b, width - len(r):], alone[0], atol=1e-5, rtol=1e-5)
        # then one decoding step through the cache: the new token of each row sits at position len(row)
        cache = KVCache.empty(model.cfg.n_layer)
        model(idx, cache=cache, attention_mask=mask)
        nxt = torch.tensor([[3], [4], [5]])
        step, _ = model(nxt, cache=cache, attention_mask=torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1))
        for b, r in enumerate(rows):
            alone, _ = model(torch.cat([r, nxt[b]])[None])
            torch.testing.assert_close(step[b, -1], alone[0, -1], atol=1e-5, rtol=1e-5)


def test_mask_without_padding_is_the_unpadded_path():
    model = tiny("fire", {})
    idx = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(idx, attention_mask=torch.ones(2, 6, dtype=torch.bool))
    assert torch.equal(a, b)


def test_right_padding_leaves_real_tokens_unchanged():
    model = tiny("alibi", {})
    idx = torch.randint(0, 50, (1, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        padded, _ = model(idx, attention_mask=mask)
        alone, _ = model(idx[:, :4])
    torch.testing.assert_close(padded[:, :4], alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(padded).all()


@pytest.mark.parametrize("mask,match", [
    (torch.ones(2, 5, dtype=torch.long), r"shape \[batch, cached \+ new tokens\] = \(2, 6\)"),
    (torch.ones(2, 6), "dtype torch.float32"),
    (torch.full((2, 6), 2), "only 0"),
    (torch.full((2, 6), -1), "only 0"),
    ([[1] * 6] * 2, "got list"),
])
def test_bad_masks_are_refused(mask, match):
    model = tiny("nope", {})
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(2, 6, dtype=torch.long), attention_mask=mask)


def test_padded_training_step_has_finite_gradients():
    for name, opts in ALL:
        model = tiny(name, opts).train()
        idx = torch.randint(0, 50, (2, 6))
        mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
        logits, _ = model(idx, attention_mask=mask)
        logits[mask.bool()].logsumexp(-1).sum().backward()
        for pname, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), (name, pname)
