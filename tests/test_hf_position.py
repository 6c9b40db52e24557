"""firepe encodings inside stock transformers Llama-family models (firepe.hf.with_position), offline, tiny configs."""

import json
import math
import subprocess
import sys

import pytest
import torch

pytest.importorskip("firepe.hf", exc_type=ImportError)  # a missing or too old transformers: skipped, with the reason

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.modeling_utils import AttentionInterface  # noqa: E402

from firepe.hf import with_position  # noqa: E402
from firepe.hf_position import SHIM_NAME  # noqa: E402
from tests.test_hf_contract import greedy_without_cache  # noqa: E402

V = f"transformers {transformers.__version__}"
VOCAB = 61
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 8}),
}


def tiny(family="llama", seed=0, **extra):
    cfg_cls, model_cls, defaults = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = cfg_cls(**{**SMALL, **defaults, **extra}, attn_implementation="sdpa")
    return model_cls(cfg).eval()


def rotary_off(model):
    """The model with its rotary turned off by hand: every frequency 0, so cos = 1 and sin = 0."""
    with torch.no_grad():
        model.model.rotary_emb.inv_freq.zero_()
    return model


def tokens(batch=2, n=11, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, n), generator=g)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_nope_equals_the_model_with_its_rotary_turned_off(family):
    ids = tokens()
    want = rotary_off(tiny(family))(input_ids=ids).logits
    got = with_position(tiny(family), "nope")(input_ids=ids).logits
    assert type(with_position(tiny(family), "nope")).__name__.startswith("FirePE"), V
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _alibi_reference(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """ALiBi written here from its definition: ``softmax(q k^T / sqrt(d) - m_h (i - j))`` over ``j <= i``."""
    h, n = query.shape[1], query.shape[2]
    key = key.repeat_interleave(h // key.shape[1], 1)
    value = value.repeat_interleave(h // value.shape[1], 1)
    slopes = torch.tensor([2.0 ** (-8.0 * (k + 1) / h) for k in range(h)])
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1]) - slopes[:, None, None] * (i - j)
    scores = scores.masked_fill(j > i, float("-inf"))
    return (scores.softmax(-1) @ value).transpose(1, 2).contiguous(), None


def test_alibi_equals_an_independent_alibi():
    AttentionInterface.register("alibi_reference", _alibi_reference)
    ids = tokens()
    ref = rotary_off(tiny())
    ref.config._attn_implementation = "alibi_reference"
    want = ref(input_ids=ids).logits
    got = with_position(tiny(), "alibi")(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_weights_are_kept_and_the_encoding_is_a_parameter_of_the_model():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    same = with_position(model, "fire")
    assert same is model
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "rotary" not in k)
    fire = [n for n, _ in model.named_parameters() if "firepe_position" in n]
    assert len(fire) > 0 and all(".self_attn.firepe_position." in n for n in fire)
    loss = model(input_ids=tokens(), labels=tokens()).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "firepe_position" in n]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_per_layer_encodings():
    model = with_position(tiny(num_hidden_layers=4), ["fire", "fire", "fire", "nope"])
    assert [layer.self_attn.firepe_position.name for layer in model.model.layers] == ["fire", "fire", "fire", "nope"]
    assert model(input_ids=tokens()).logits.isfinite().all()
    model = with_position(tiny(), ["t5", "kerple_log"], [{"num_buckets": 8}, {}])
    assert model.model.layers[0].self_attn.firepe_position.name == "t5"


@pytest.mark.parametrize("name", ["fire", "alibi", "rope", "cope", "nope"])
def test_generate_with_the_cache_equals_full_recomputation_left_padded(name):
    model = with_position(tiny(seed=3), name)
    ids = tokens(n=9)
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0  # left padding
    got = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    want = greedy_without_cache(model, ids, mask, 6)
    assert torch.equal(got, want), f"{V}: {name}"
    # the padded row gets what it gets alone
    alone = model.generate(input_ids=ids[1:, 4:], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(got[1, 4:], alone[0]), f"{V}: {name}"


def test_fox_runs_without_a_cache_and_refuses_one():
    model = with_position(tiny(), "fox")
    ids = tokens(n=8)
    mask = torch.ones_like(ids)
    got = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, use_cache=False)
    assert torch.equal(got, greedy_without_cache(model, ids, mask, 3))
    with pytest.raises(ValueError, match="use_cache=False"):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)


@pytest.mark.parametrize("name", ["fire", "rope", "kerple_log"])
def test_save_and_from_pretrained_round_trip_bit_identically(tmp_path, name):
    model = with_position(tiny(family="qwen3"), name)
    ids = tokens()
    want = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / SHIM_NAME).is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "firepe_qwen3" and config["firepe_position"] == [name, name]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(loaded(input_ids=ids).logits, want)


def test_a_saved_folder_loads_with_trust_remote_code_in_a_fresh_process(tmp_path):
    model = with_position(tiny(), "fire")
    ids = tokens()
    torch.save(model(input_ids=ids).logits, tmp_path / "want.pt")
    model.save_pretrained(tmp_path / "m")
    code = ("import sys, torch\nfrom transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'm')!r}, trust_remote_code=True).eval()\n"
            "assert 'firepe' not in sys.modules.get('__main__').__dict__\n"
            f"got = m(input_ids=torch.tensor({ids.tolist()})).logits\n"
            f"assert torch.equal(got, torch.load({str(tmp_path / 'want.pt')!r})), 'logits differ'\n"
            "print(type(m).__name__)")
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "FirePELlamaForCausalLM" in res.stdout


def test_bf16_model_keeps_its_encodings_float32(tmp_path):
    with_position(tiny(), "fire").save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    enc = model.model.layers[0].self_attn.firepe_position
    assert all(p.dtype == torch.float32 for p in enc.parameters())
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert model(input_ids=tokens()).logits.isfinite().all()


def test_a_config_converts_and_builds():
    cfg = with_position(LlamaConfig(**SMALL), "kerple_log")
    assert cfg.model_type == "firepe_llama"
    model = AutoModelForCausalLM.from_config(cfg)
    assert type(model).__name__ == "FirePELlamaForCausalLM" and model.config._attn_implementation == "firepe"
    assert model(input_ids=tokens()).logits.isfinite().all()


# -- errors: one ValueError naming the bad value ------------------------------------------------------------------


def test_unsupported_architecture():
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(ValueError, match="'gpt2' is not supported.*llama"):
        with_position(GPT2Config(n_layer=1, n_embd=16, n_head=2), "fire")
    with pytest.raises(ValueError, match="causal LM of the llama, mistral, qwen2, qwen3 families"):
        with_position(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2)), "fire")
    with pytest.raises(ValueError, match="causal LM"):
        with_position(torch.nn.Linear(2, 2), "fire")


@pytest.mark.parametrize("position, options, match", [
    ("firee", None, "unknown position encoding 'firee'"),
    ("p_rope", {"fraction": 1.5}, "fraction"),
    ("t5", {"num_buckets": 0}, "num_buckets"),
    ("alibi", {"slopes": [0.5, 0.25]}, "4 finite positive"),
    ("fire", {"mlp_width": 0}, "mlp_width"),
    (["fire"], None, "1 entries; the model has 2 layers"),
])
def test_options_that_do_not_fit_are_refused(position, options, match):
    with pytest.raises(ValueError, match=match):
        with_position(tiny(), position, options)


def test_sliding_window_and_dropout_are_refused():
    with pytest.raises(ValueError, match="sliding_window=4096"):
        with_position(MistralConfig(**SMALL), "fire")
    with pytest.raises(ValueError, match="attention_dropout"):
        with_position(tiny(attention_dropout=0.1), "fire")


def test_fox_needs_hidden_size_equal_to_heads_times_head_dim():
    with pytest.raises(ValueError, match="hidden_size is 32"):
        with_position(tiny(family="qwen3", head_dim=16), "fox")


def test_a_checkpoint_without_the_firepe_fields_is_refused(tmp_path):
    with_position(tiny(), "fire").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["firepe_position"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="needs the firepe fields"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_another_attn_implementation_is_refused(tmp_path):
    model = with_position(tiny(), "fire")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        model.set_attn_implementation("eager")
    model.config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match="set it back to 'firepe'"):
        model(input_ids=tokens())


def test_packed_position_ids_are_refused():
    model = with_position(tiny(), "fire")
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6]])
    with pytest.raises(ValueError, match="packed sequences"):
        model(input_ids=tokens(batch=1), position_ids=pos)
    ok = torch.arange(11)[None]
    torch.testing.assert_close(model(input_ids=tokens(batch=1), position_ids=ok).logits,
                               model(input_ids=tokens(batch=1)).logits)


# -- training: Trainer alone and under torchrun (DDP, gloo), FSDP2 on CPU ------------------------------------------

SCRIPT = __import__("pathlib").Path(__file__).with_name("hf_train_script.py")


def _train(tmp_path, world, mode=""):
    import os

    from tests.helpers import free_port

    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if world == 1:
        cmd = [sys.executable, str(SCRIPT), str(out), mode]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
               "--master_port", str(free_port()), str(SCRIPT), str(out), mode]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                         cwd=SCRIPT.parent.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(world)]
    return result, ranks


def _falls(losses):
    head, tail = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    return tail < head - 0.5


@pytest.mark.parametrize("world", [1, 2])
def test_trainer_trains_the_converted_model_alone_and_under_torchrun(tmp_path, world):
    result, ranks = _train(tmp_path, world)
    assert result["world"] == world and result["class"] == "FirePELlamaForCausalLM"
    assert _falls(result["losses"]), result["losses"]
    assert result["fire_moved"] > 0  # the encoding's parameters are trained
    if world == 2:
        assert result["wrapped"] == "DistributedDataParallel"
        assert all(torch.equal(ranks[0][n], ranks[1][n]) for n in ranks[0])  # DDP kept the ranks in step


def test_fsdp2_fully_shard_trains_the_converted_model_on_cpu(tmp_path):
    """accelerate's FSDP plugin is GPU-only (on CPU, Trainer silently uses DDP); PyTorch's ``fully_shard`` runs
    on CPU with gloo, and refuses 0-dim parameters: the integration stores FIRE's c and L as [1]."""
    result, ranks = _train(tmp_path, 2, "fsdp2")
    assert result["sharded"] and _falls(result["losses"]), result
    assert result["fire_moved"] > 0
    assert all(torch.equal(ranks[0][n], ranks[1][n]) for n in ranks[0])


def test_beam_search_with_the_cache_equals_beam_search_without():
    """The cache holds plain unrotated keys, so transformers' beam reordering applies to firepe encodings too."""
    model = with_position(tiny(seed=4), "fire")
    ids = tokens(n=7)
    mask = torch.ones_like(ids)
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, num_beams=3, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(**kw), model.generate(**kw, use_cache=False))


def test_converting_again_replaces_the_encodings_and_keeps_the_weights():
    model = with_position(tiny(), "fire")
    q_before = model.model.layers[0].self_attn.q_proj.weight.clone()
    hooks_before = len(model.model.layers[0].self_attn._forward_pre_hooks)
    model = with_position(model, "alibi")
    assert model.config.firepe_position == ["alibi", "alibi"] and model.config.model_type == "firepe_llama"
    assert model.model.layers[0].self_attn.firepe_position.name == "alibi"
    assert not any("firepe_position.mlp" in n for n, _ in model.named_parameters())
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, q_before)
    assert len(model.model.layers[0].self_attn._forward_pre_hooks) == hooks_before
    want = with_position(tiny(), "alibi")(input_ids=tokens()).logits
    torch.testing.assert_close(model(input_ids=tokens()).logits, want)


def test_a_folder_with_weights_of_another_encoding_or_non_finite_ones_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    with_position(tiny(), "fire").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    good = config["firepe_position"]
    config["firepe_position"] = ["kerple_log", "kerple_log"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match firepe_position"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    config["firepe_position"] = good
    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = load_file(tmp_path / "model.safetensors")
    name = next(k for k in weights if "firepe_position.mlp" in k)
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="non-finite encoding weights"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("kwargs, match", [
    ({"position": 5}, "must be a name"),
    ({"backend": "fast"}, "unknown attention backend 'fast'"),
    ({"block": 0}, "firepe_block must be a positive integer"),
    ({"options": {"init_L": float("nan")}}, "init_L"),
    ({"options": ["x", {}]}, "must be a dict"),
])
def test_bad_arguments_are_one_value_error(kwargs, match):
    args = {"position": "fire", **kwargs}
    with pytest.raises(ValueError, match=match):
        with_position(tiny(), args.pop("position"), **args)


def test_a_static_cache_and_a_custom_4d_mask_are_refused():
    model = with_position(tiny(), "fire")
    ids = tokens(n=8)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with pytest.raises(ValueError, match="static cache"):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0,
                       cache_implementation="static")
    block = torch.zeros(1, 1, 8, 8, dtype=torch.bool)  # two packed documents of 4 tokens
    block[..., :4, :4] = torch.ones(4, 4, dtype=torch.bool).tril()
    block[..., 4:, 4:] = torch.ones(4, 4, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match="custom 4-D mask"):
        model(input_ids=ids[:1], attention_mask=block)


def test_layer_shared_encodings_are_one_module_and_round_trip(tmp_path):
    model = with_position(tiny(), "fire_s")
    first, second = (layer.self_attn.firepe_position for layer in model.model.layers)
    assert first is second
    ids = tokens()
    want = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    a, b = (layer.self_attn.firepe_position for layer in loaded.model.layers)
    assert a is b and torch.equal(loaded(input_ids=ids).logits, want)


def test_bf16_autocast_training_step():
    model = with_position(tiny(), "fire").train()
    ids = tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.layers[0].self_attn.firepe_position.mlp[0].weight.grad is not None


def test_key_value_heads_must_divide_the_heads():
    with pytest.raises(ValueError, match="not a multiple of num_key_value_heads=3"):
        with_position(LlamaConfig(**{**SMALL, "num_key_value_heads": 3}), "fire")
