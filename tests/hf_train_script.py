"""A tiny Llama with FIRE trained by transformers' Trainer (run by tests/test_hf_position.py, alone or under
torchrun): ``python hf_train_script.py OUT [fsdp]``; rank 0 writes OUT/result.json with the logged losses and
a checksum of the encoding's parameters after training, every rank writes OUT/rank{r}.pt (its FIRE tensors)."""

import json
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from firepe.hf import with_position


class Patterns(torch.utils.data.Dataset):
    """Sequences that repeat a random 4-token motif: learnable in a few dozen steps."""

    def __init__(self, n=256, length=32, vocab=61):
        g = torch.Generator().manual_seed(0)
        motifs = torch.randint(3, vocab, (n, 4), generator=g)
        self.ids = motifs.repeat(1, length // 4)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i], "attention_mask": torch.ones_like(self.ids[i])}


def fsdp2(out):
    """PyTorch's FSDP2 (``fully_shard``) on CPU with gloo, in a plain loop: accelerate's FSDP plugin is GPU-only
    (on CPU its Trainer falls back to DDP), so this is how a CPU run shards the converted model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    model = with_position(LlamaForCausalLM(cfg), "fire")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "firepe_position" in n}
    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = Patterns().ids
    losses = []
    for step in range(80):
        rows = data[(step * 16 + rank * 8) % len(data):][:8]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    sharded = any(hasattr(p, "full_tensor") for n, p in model.named_parameters() if "firepe_position" in n)
    fire = {n: p.detach().full_tensor() for n, p in model.named_parameters() if "firepe_position" in n}
    torch.save(fire, os.path.join(out, f"rank{rank}.pt"))
    if rank == 0:
        moved = sum(float((fire[n] - before[n]).abs().sum()) for n in before)
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump({"losses": losses, "fire_moved": moved, "world": torch.distributed.get_world_size(),
                       "class": type(model).__name__, "wrapped": "fully_shard", "sharded": sharded}, f)
    torch.distributed.destroy_process_group()


def main(out, mode=""):
    if mode == "fsdp2":
        return fsdp2(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    model = with_position(LlamaForCausalLM(cfg), "fire")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "firepe_position" in n}
    extra = {"fsdp": True, "fsdp_config": {"version": 2}} if mode == "fsdp" else {}
    args = TrainingArguments(output_dir=out, max_steps=80, per_device_train_batch_size=8, learning_rate=1e-2,
                             logging_steps=5, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                             dataloader_num_workers=0, disable_tqdm=True, **extra)
    trainer = Trainer(model=model, args=args, train_dataset=Patterns())
    trainer.train()
    rank = int(os.environ.get("RANK", 0))
    model = trainer.model
    fire = {n: p.detach().full_tensor() if hasattr(p, "full_tensor") else p.detach()
            for n, p in model.named_parameters() if "firepe_position" in n}
    torch.save(fire, os.path.join(out, f"rank{rank}.pt"))
    if rank == 0:
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        moved = sum(float((fire[n] - before[n]).abs().sum()) for n in before if n in fire)
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump({"losses": losses, "fire_moved": moved, "world": int(os.environ.get("WORLD_SIZE", 1)),
                       "class": type(model).__name__, "wrapped": type(trainer.model_wrapped).__name__,
                       "sharded": any(hasattr(p, "full_tensor") for p in model.parameters())}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
