"""Worker for tests/test_fsdp2_cpu.py: shard HfscratchForCausalLM with FSDP2 (`fully_shard`) over gloo on CPU.

Accelerate refuses FSDP on CPU, so this drives PyTorch's `fully_shard` directly, wrapping exactly the
modules the model names in `_no_split_modules` (what the FSDP2 accelerate config does on GPUs). It trains
a few AdamW steps on a fixed global batch split over ranks and prints the losses and a parameter checksum.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from hfscratch import HfscratchConfig, HfscratchForCausalLM


def build():
    torch.manual_seed(0)
    config = HfscratchConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    return HfscratchForCausalLM(config)


def global_batch(step):
    generator = torch.Generator().manual_seed(step)
    return torch.randint(0, 128, (4, 32), generator=generator)


def main():
    sharded = len(sys.argv) > 1 and sys.argv[1] == "fsdp2"
    torch.set_num_threads(1)
    model = build()
    rank, world = 0, 1
    if sharded:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        layer_classes = tuple(type(m) for m in model.modules() if type(m).__name__ in model._no_split_modules)
        for module in model.modules():
            if isinstance(module, layer_classes):
                fully_shard(module)
        fully_shard(model)
        assert all(isinstance(p, DTensor) for p in model.parameters()), "every parameter should be sharded"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    losses = []
    for step in range(4):
        batch = global_batch(0)  # the same batch every step: the loss must fall as the model fits it
        local = batch.chunk(world)[rank]
        # mean over the local shard; FSDP averages gradients over ranks = mean over the global batch
        loss = model(input_ids=local, labels=local).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        reported = loss.detach().clone()
        if sharded:
            dist.all_reduce(reported)
            reported /= world
        losses.append(reported.item())
    checksum = 0.0
    for p in model.parameters():
        full = p.full_tensor() if isinstance(p, DTensor) else p
        checksum += full.double().abs().sum().item()
    if rank == 0:
        print(json.dumps({"losses": losses, "checksum": checksum, "world": world}))
    if sharded:
        dist.destroy_process_group()
        from hfscratch.cli import let_collective_threads_finish

        let_collective_threads_finish()  # the model still holds the group: see the function's docstring


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
