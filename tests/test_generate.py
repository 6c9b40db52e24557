"""firepe.generate: the one decode loop behind GPT.generate and score's greedy decoding."""

import torch

from firepe.config import preset
from firepe.generate import decode, pick
from firepe.model import GPT


def _model(position="fire"):
    torch.manual_seed(0)
    return GPT(preset("tiny", position=position, vocab_size=50)).eval()


def test_greedy_decode_equals_an_argmax_loop_over_the_whole_sequence():
    model = _model()
    prompt = torch.randint(0, 50, (2, 7))
    got = decode(model, prompt, 6)
    seq = prompt
    with torch.no_grad():
        for _ in range(6):  # written here: no cache, the whole sequence each step
            logits, _ = model(seq)
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, seq[:, 7:])
    assert torch.equal(decode(model, prompt, 6, use_cache=False), got)
    assert torch.equal(model.generate(prompt, 6, temperature=0), seq)


def test_decode_stops_once_every_row_has_the_end_token():
    model = _model("alibi")
    prompt = torch.randint(0, 50, (1, 5))
    first = decode(model, prompt, 1)[0, 0].item()
    out = decode(model, prompt, 10, eos_id=first)  # the first token is the end token: one step
    assert out.shape == (1, 1)
    assert decode(model, prompt, 0).shape == (1, 0)


def test_pick_samples_within_top_k():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    assert pick(logits).item() == 1
    g = torch.Generator().manual_seed(0)
    seen = {pick(logits, temperature=1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert seen == {1, 2}
