import math

import pytest
import torch

from firepe import positions
from firepe.attention import AttentionInputs, KVCache
from firepe.config import GPTConfig, preset
from firepe.model import GPT, MIN_TEMPERATURE

ALL = [("nope", {}), ("rope", {}), ("rope_pi", {"factor": 2.0}),
       ("yarn", {"factor": 4.0, "original_max_position_embeddings": 16}), ("alibi", {}), ("kerple_log", {}),
       ("kerple_power", {}), ("t5", {}), ("sandwich", {}), ("fire", {}), ("fire_s", {}),
       ("p_rope", {"fraction": 0.5}), ("longrope", {"factor": 4.0, "original_max_position_embeddings": 16}),
       ("fox", {}), ("cope", {"npos_max": 16})]


def tiny(position, opts=None, **kw):
    return GPT(preset("tiny", position=position, position_options=opts or {}, vocab_size=50, **kw))


@pytest.mark.parametrize("name,opts", ALL)
def test_causal_for_every_encoding(name, opts):
    model = tiny(name, opts).eval()
    x = torch.randint(0, 50, (2, 24))
    y = x.clone()
    y[:, 15:] = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    torch.testing.assert_close(a[:, :15], b[:, :15], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a[:, 15:], b[:, 15:])


@pytest.mark.parametrize("name,opts", ALL)
def test_runs_at_16x_training_length(name, opts):
    model = tiny(name, opts).eval()
    with torch.no_grad():
        logits, loss = model(torch.randint(0, 50, (1, 16 * 32)), torch.randint(0, 50, (1, 16 * 32)))
    assert logits.shape == (1, 512, 50) and torch.isfinite(logits).all() and torch.isfinite(loss)


def test_bias_models_match_explicit_attention():
    """The model's attention equals softmax(QK^T/sqrt(d) + B + causal) V written out by hand."""
    model = tiny("alibi").eval()
    attn = model.blocks[0].attn
    x = torch.randn(1, 10, 64)
    B, T = 1, 10
    q, k, v = attn.qkv(x).view(B, T, 3, 4, 16).permute(2, 0, 3, 1, 4)
    bias = model.position_for(0).bias(torch.arange(T), torch.arange(T))
    logits = q @ k.transpose(-1, -2) / 4 + bias
    logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    want = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1))
    inputs = AttentionInputs(q_pos=torch.arange(T), k_pos=torch.arange(T), same_positions=True, backend="dense")
    got = attn(x, model.position_for(0), inputs, 0, None)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_position_sharing():
    assert tiny("fire").position_layers is not None and len(tiny("fire").position_layers) == 2
    assert tiny("fire_s").position_shared is not None
    assert tiny("alibi").position_shared is not None  # no parameters: one module
    assert tiny("t5").position_shared is not None     # T5 shares its bias across layers
    assert tiny("t5", {"layer_shared": False}).position_layers is not None


def test_tied_and_untied_embeddings():
    m = tiny("nope")
    assert m.lm_head.weight is m.wte.weight
    u = tiny("nope", tie_embeddings=False)
    assert u.lm_head.weight is not u.wte.weight


def test_paper_presets_have_paper_sizes():
    with torch.device("meta"):
        base = GPT(preset("base", vocab_size=50257, position="fire"))
        large = GPT(preset("large", vocab_size=50257, position="fire"))
    assert 120e6 < base.num_params() < 130e6          # "125M"
    assert 340e6 < large.num_params() < 365e6         # "350M"
    assert large.cfg.head_dim == 64 and base.cfg.head_dim == 64


def test_config_errors():
    with pytest.raises(ValueError, match="unknown position encoding 'sinus'"):
        GPTConfig(position="sinus")
    with pytest.raises(ValueError, match="not divisible"):
        GPTConfig(d_model=100, n_head=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("huge")
    with pytest.raises(ValueError, match=r"GPTConfig.*unknown.*n_layers|unknown GPTConfig key.*n_layers"):
        GPTConfig.from_dict({"n_layers": 3})
    assert positions.available()


@pytest.mark.parametrize("field,value,message", [
    ("norm_eps", 0.0, "norm_eps must be a finite number > 0, got 0.0"),
    ("norm_eps", -1e-5, "norm_eps must be a finite number > 0"),
    ("norm_eps", math.nan, "norm_eps must be a finite number > 0, got nan"),
    ("norm_eps", math.inf, "norm_eps must be a finite number > 0"),
    ("d_ff", 0, r"d_ff must be a positive integer or None \(4 \* d_model\), got 0"),
    ("d_ff", -8, "d_ff must be a positive integer"),
    ("d_ff", True, "d_ff must be a positive integer"),
    ("d_ff", 64.0, "d_ff must be a positive integer"),
    ("dropout", -0.1, r"dropout must be a number in \[0, 1\), got -0.1"),
    ("dropout", 1.0, r"dropout must be a number in \[0, 1\)"),
    ("dropout", math.nan, r"dropout must be a number in \[0, 1\), got nan"),
    ("dropout", True, r"dropout must be a number in \[0, 1\)"),
    ("attention_block", 0, "attention_block must be a positive integer, got 0"),
    ("attention_block", -4, "attention_block must be a positive integer"),
    ("n_head", True, "n_head must be a positive integer, got True"),
    ("n_layer", False, "n_layer must be a positive integer"),
    ("vocab_size", 50.0, "vocab_size must be a positive integer"),
    ("tie_embeddings", 1, "tie_embeddings must be true or false, got 1"),
    ("tie_embeddings", "no", "tie_embeddings must be true or false"),
    ("position_options", [], "position_options must be a dict of encoding options, got list"),
    ("position_options", None, "position_options must be a dict"),
])
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{field: value})


def test_config_accepts_edge_values():
    cfg = GPTConfig(dropout=0, norm_eps=1, d_ff=None, attention_block=1)
    assert cfg.ffn_dim == 4 * cfg.d_model
    assert GPTConfig(d_ff=7).ffn_dim == 7
    assert GPTConfig(dropout=0.999).dropout == 0.999


@pytest.mark.parametrize("idx,message", [
    (torch.zeros(0, 5, dtype=torch.long), r"idx is empty \(shape \(0, 5\)\)"),
    (torch.zeros(2, 0, dtype=torch.long), r"idx is empty \(shape \(2, 0\)\)"),
    (torch.tensor([[1, 2, 50]]), r"idx holds the token id 50, outside the vocabulary; .*\[0, vocab_size=50\)"),
    (torch.tensor([[1, -1, 3]]), r"idx holds the negative token id -1; ids must be in \[0, vocab_size=50\)"),
    (torch.zeros(1, 4), "idx must hold integer token ids .*got dtype torch.float32"),
    (torch.zeros(1, 4, dtype=torch.bool), "idx must hold integer token ids .*got dtype torch.bool"),
    (torch.zeros(4, dtype=torch.long), r"idx must have shape \[batch, tokens\], got shape \(4,\)"),
    (torch.zeros(1, 2, 3, dtype=torch.long), r"idx must have shape \[batch, tokens\], got shape \(1, 2, 3\)"),
    ([[1, 2]], "idx must be a torch.Tensor of token ids, got list"),
])
def test_forward_rejects_bad_ids(idx, message):
    model = tiny("alibi")
    with pytest.raises(ValueError, match=message):
        model(idx)


def test_forward_checks_targets_and_cache():
    model = tiny("alibi")
    x = torch.randint(0, 50, (2, 6))
    with pytest.raises(ValueError, match=r"targets must have the shape of idx \(2, 6\), got \(2, 5\)"):
        model(x, x[:, 1:])
    with pytest.raises(ValueError, match=r"targets hold ids outside \[0, vocab_size=50\) other than -100"):
        model(x, torch.full((2, 6), 50))
    with pytest.raises(ValueError, match="targets must hold integer token ids"):
        model(x, x.float())
    ignored = x.clone()
    ignored[:, :3] = -100  # F.cross_entropy's ignore_index: the loss is over the other positions only
    _, loss = model(x, ignored)
    logits, _ = model(x)
    want = torch.nn.functional.cross_entropy(logits[:, 3:].reshape(-1, 50), x[:, 3:].reshape(-1))
    torch.testing.assert_close(loss, want)
    with pytest.raises(ValueError, match="the KV cache holds 3 layers but the model has 2"):
        model(x, cache=KVCache.empty(3))
    cache = KVCache.empty(2)
    model(x, cache=cache)
    with pytest.raises(ValueError, match="idx has batch size 1 but the KV cache holds 2 rows"):
        model(x[:1, :1], cache=cache)


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0, got -1"),
    (dict(max_new_tokens=2.0), "max_new_tokens must be an integer >= 0, got 2.0"),
    (dict(max_new_tokens=True), "max_new_tokens must be an integer >= 0, got True"),
    (dict(temperature=math.nan), r"temperature must be 0 \(greedy\) or a finite number >= 0.0001, got nan"),
    (dict(temperature=math.inf), "temperature must be 0 .*got inf"),
    (dict(temperature=-0.5), "temperature must be 0 .*got -0.5"),
    (dict(temperature=1e-45), "temperature must be 0 .*got 1e-45"),
    (dict(temperature=True), "temperature must be 0 .*got True"),
    (dict(top_k=True), "top_k must be None or an integer >= 1, got True"),
    (dict(top_k=2.5), "top_k must be None or an integer >= 1, got 2.5"),
    (dict(top_k=0), "top_k must be None or an integer >= 1, got 0"),
    (dict(prompt=torch.zeros(1, 0, dtype=torch.long)), "prompt is empty"),
    (dict(prompt=torch.zeros(0, dtype=torch.long)), "prompt is empty"),
    (dict(prompt=torch.tensor([[3, 99]])), "prompt holds the token id 99, outside the vocabulary"),
    (dict(prompt=torch.tensor([[-2, 3]])), "prompt holds the negative token id -2"),
    (dict(prompt=torch.tensor([[1.0, 2.0]])), "prompt must hold integer token ids"),
])
def test_generate_rejects_bad_arguments(kwargs, message):
    model = tiny("alibi")
    args = dict(prompt=torch.tensor([[1, 2, 3]]), max_new_tokens=2) | kwargs
    with pytest.raises(ValueError, match=message):
        model.generate(args.pop("prompt"), args.pop("max_new_tokens"), **args)


def test_generate_edge_arguments():
    model = tiny("alibi")
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(model.generate(prompt, 0), prompt)
    out = model.generate(prompt, 4, temperature=MIN_TEMPERATURE, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 7) and 0 <= int(out.min()) and int(out.max()) < 50
    assert model.generate(prompt, 3, top_k=500).shape == (1, 6)  # top_k above the vocabulary keeps every token


def test_check_finite_names_the_first_bad_tensor():
    model = tiny("fire")
    model.check_finite()
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[0, 0] = float("nan")
        model.blocks[1].ffn[0].bias[0] = float("inf")
    with pytest.raises(ValueError, match=r"parameter blocks\.0\.attn\.qkv\.weight holds NaN or inf"):
        model.check_finite()
    rope = tiny("rope")
    rope.position_shared.inv_freq[1] = float("inf")
    with pytest.raises(ValueError, match=r"buffer position_shared\.inv_freq holds NaN or inf .*diverged run"):
        rope.check_finite()
    with torch.device("meta"):
        GPT(preset("tiny", vocab_size=50)).check_finite()  # meta tensors hold no values: nothing to check


@pytest.mark.parametrize("block", [0, -3, True, 2.0, "8"])
def test_set_attention_rejects_bad_block(block):
    model = tiny("alibi")
    with pytest.raises(ValueError, match=f"attention block must be a positive integer, got {block!r}"):
        model.set_attention("chunked", block=block)
    assert model.cfg.attention == "auto" and model.cfg.attention_block == 1024  # unchanged on error


@pytest.mark.parametrize("name,opts", ALL)
def test_every_encoding_runs_in_bf16_close_to_fp32(name, opts):
    """``model.to(torch.bfloat16)``: FIRE's table coordinates and positions stay float32 (in bf16 the last
    table index rounded past the table, and positions above 256 are not integers)."""
    torch.manual_seed(0)
    model = tiny(name, opts).eval()
    ids = torch.randint(0, 50, (1, 300))
    with torch.no_grad():
        ref, _ = model(ids)
        low, _ = model.to(torch.bfloat16)(ids)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.05


# -- position ids in any order (firepe synth --position-ids): |q_pos - k_pos| for biases ----------------------

# coupled ids of "2 1 + 9 5 = 1 7 0 EOS" (offset 3) and abacus ids of another row: they restart and repeat
UNSORTED = torch.tensor([[4, 5, 3, 4, 5, 3, 4, 5, 6, 7], [1, 2, 0, 1, 2, 3, 0, 1, 2, 0]])


def _abs_distance(rows=UNSORTED):
    return (rows[:, :, None] - rows[:, None, :]).abs()  # [B, Q, K]


def test_alibi_bias_of_unsorted_ids_is_minus_slope_times_absolute_distance():
    enc = positions.build("alibi", num_heads=4, head_dim=16)
    slopes = torch.tensor(positions.alibi_slopes(4))
    want = -slopes[None, :, None, None] * _abs_distance()[:, None].float()
    torch.testing.assert_close(enc.compute_bias_rows(UNSORTED, UNSORTED), want, rtol=0, atol=0)


def _t5_bucket_by_hand(n: int, buckets: int, max_distance: int) -> int:
    exact = buckets // 2
    if n < exact:
        return n
    return min(exact + int(math.log(n / exact) / math.log(max_distance / exact) * (buckets - exact)), buckets - 1)


def test_t5_and_kerple_biases_of_unsorted_ids_read_the_absolute_distance():
    rows = torch.tensor([[30, 2, 0, 17, 5, 5], [0, 9, 1, 40, 3, 2]])  # distances past the exact buckets too
    dist = _abs_distance(rows)
    t5 = positions.build("t5", num_heads=2, head_dim=8, num_buckets=8, max_distance=20)
    table = t5.relative_attention_bias.weight  # [buckets, H]
    want = torch.stack([torch.stack([torch.stack([table[_t5_bucket_by_hand(int(d), 8, 20)] for d in q])
                                     for q in b]) for b in dist]).permute(0, 3, 1, 2)
    torch.testing.assert_close(t5.compute_bias_rows(rows, rows), want, rtol=0, atol=0)
    kerple = positions.build("kerple_log", num_heads=2, head_dim=8)
    r1, r2 = kerple.r1_raw.detach(), kerple.r2_raw.detach()
    want = -r1[None, :, None, None] * torch.log1p(r2[None, :, None, None] * dist[:, None].float())
    torch.testing.assert_close(kerple.compute_bias_rows(rows, rows), want)


@pytest.mark.parametrize("name", ["alibi", "kerple_log", "kerple_power", "t5", "sandwich"])
def test_translation_invariant_biases_of_unsorted_ids_depend_on_the_absolute_distance_only(name):
    enc = positions.build(name, num_heads=2, head_dim=8)
    got = enc.compute_bias_rows(UNSORTED, UNSORTED)
    at = {d: enc.compute_bias(torch.tensor([d]), torch.tensor([0]))[:, 0, 0] for d in range(8)}  # causal d
    want = torch.stack([torch.stack([torch.stack([at[int(d)] for d in q]) for q in b]) for b in _abs_distance()])
    torch.testing.assert_close(got, want.permute(0, 3, 1, 2))


@pytest.mark.parametrize("mode", ["reference", "exact", "table"])
def test_fire_bias_of_unsorted_ids_is_eq4_with_the_absolute_distance(mode):
    # L = 4: rows 0..3 read the distance table, rows >= 4 normalize by psi(i); the key at 12 of the query at 4
    # is farther than max(L, i): x = psi(8) / psi(4) > 1 (table mode reads f(1) there)
    rows = torch.tensor([[4, 12, 0, 1, 6, 2, 4, 9], [3, 3, 0, 7, 1, 2, 5, 0]])
    torch.manual_seed(0)
    enc = positions.build("fire", num_heads=3, head_dim=8, init_L=4.0, bias_mode=mode)
    c, L, eps = float(enc.c.detach().abs()), float(enc.L.detach()), enc.eps
    i = rows[:, :, None].double().expand(-1, -1, rows.shape[1])
    d = _abs_distance(rows).double()
    x = torch.log(c * d + 1) / (torch.log(c * torch.clamp(i, min=L) + 1) + eps)
    if mode == "table":
        x = torch.where(i >= L, x.clamp(0, 1), x)
    with torch.no_grad():
        want = enc.mlp(x.float()[..., None]).permute(0, 3, 1, 2)
        got = enc.compute_bias_rows(rows, rows)
    assert bool((x > 1).any())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 if mode == "table" else 1e-6)
    params = [p for p in enc.parameters() if p.requires_grad]
    grads = torch.autograd.grad(enc.compute_bias_rows(rows, rows).sum(), params)
    assert all(bool(torch.isfinite(g).all()) for g in grads)


def test_sorted_rows_keep_the_causal_distance_path():
    from firepe.positions.base import rows_sorted

    sorted_rows = torch.tensor([[0, 3, 4, 9], [1, 1, 5, 6]])
    assert rows_sorted(sorted_rows, sorted_rows) and not rows_sorted(UNSORTED, UNSORTED)
    for name in ("fire", "t5", "alibi"):
        enc = positions.build(name, num_heads=2, head_dim=8)
        with torch.no_grad():
            got = enc.compute_bias_rows(sorted_rows, sorted_rows)
            for b, row in enumerate(sorted_rows):
                causal = row[:, None] >= row[None, :]
                torch.testing.assert_close(got[b][:, causal], enc.compute_bias(row, row)[:, causal])


def test_model_attention_with_unsorted_ids_written_out_by_hand():
    """One layer of ALiBi: softmax(q k^T / sqrt(d) - m |i_pos - j_pos|, causal by token index) v, by hand."""
    model = GPT(preset("tiny", position="alibi", vocab_size=50, n_layer=1)).eval()
    idx = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, _ = model(idx, positions=UNSORTED)
        x = model.wte(idx)
        h = model.blocks[0].ln1(x)
        attn = model.blocks[0].attn
        q, k, v = attn.qkv(h).view(2, 10, 3, 4, 16).permute(2, 0, 3, 1, 4)
        slopes = torch.tensor(positions.alibi_slopes(4))[None, :, None, None]
        logits = q @ k.transpose(-1, -2) / 4 - slopes * _abs_distance()[:, None].float()
        logits = logits.masked_fill(torch.ones(10, 10, dtype=torch.bool).triu(1), float("-inf"))
        x = x + attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 10, -1))
        x = x + model.blocks[0].ffn(model.blocks[0].ln2(x))
        want = model.lm_head(model.ln_f(x))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,opts", ALL)
def test_unsorted_ids_stay_causal_by_token_index_and_shift_invariant(name, opts):
    model = tiny(name, opts).eval()
    x = torch.randint(0, 50, (2, 10))
    y = x.clone()
    y[:, 6:] = torch.randint(0, 50, (2, 4))
    with torch.no_grad():
        a, loss = model(x, x, positions=UNSORTED)
        b, _ = model(y, positions=UNSORTED)
        shifted, _ = model(x, positions=UNSORTED + 5)
    assert torch.isfinite(loss)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=1e-5, atol=1e-5)  # later tokens (smaller ids) unseen
    if name not in ("fire", "fire_s", "longrope"):  # relative in the ids: the same after a shift
        torch.testing.assert_close(shifted, a, rtol=1e-4, atol=1e-4)
