"""What the loop does between steps (it decides when): log, validate, sample, run lm-eval, checkpoint, push to the Hub,
recording what they measure on the trainer they are handed."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import DataError
from ..evaluation import run_training_eval
from ..hub import push_checkpoint, wait_for_pushes
from . import checkpoint as ckpt
from .data import IGNORE_INDEX, PackedBlocks, make_labels, predicted_token_count
from .metrics import bits_per_byte_from_nll, memory_stats, mfu
from .step import compute_token_losses


def write_message(accelerator, pbar, message: str) -> None:
    """A line on the main process, above the progress bar when there is one."""
    if accelerator.is_main_process:
        (pbar.write if pbar else print)(message)


class TrainLogWindow:
    """Throughput and mean loss since the last log line."""

    def __init__(self):
        self.tokens, self.time, self.losses = 0, 0.0, []

    def add(self, tokens: int, elapsed: float) -> None:
        self.tokens += tokens
        self.time += elapsed


def log_train_metrics(trainer, pbar, window: TrainLogWindow, lr: float, grad_norm: float) -> None:
    acc = trainer.accelerator
    tokens_per_second = window.tokens / max(window.time, 1e-9)
    values = {
        "train/loss": sum(window.losses) / len(window.losses) if window.losses else float("nan"), "train/lr": lr,
        "train/grad_norm": grad_norm, "train/tokens_per_second": tokens_per_second, "train/tokens_seen": trainer.tokens_seen,
        "train/skipped_steps": len(trainer.skipped_steps), **memory_stats(acc.device),
    }
    utilisation = mfu(tokens_per_second, trainer.flops_per_token, trainer.peak_flops, acc.num_processes)
    if utilisation is not None:
        values["train/mfu"] = utilisation
    acc.log(values, step=trainer.step)
    pbar.set_postfix(loss=f"{values['train/loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_second:,.0f}", **({"mfu": f"{utilisation:.1%}"} if utilisation else {}))


class Validation:
    """Loss, perplexity and bits per byte over a fixed shard of the validation split, reduced over ranks."""

    def __init__(self, accelerator, blocks: PackedBlocks, tokenizer, per_device_train_batch_size: int, max_batches: int | None,
                 data_world: int | None = None, data_rank: int | None = None, replicas: int = 1):
        self.accelerator, self.blocks, self.tokenizer = accelerator, blocks, tokenizer
        # Tensor parallelism: `replicas` ranks evaluate each shard together (same batch, one model split over them).
        self.data_world = accelerator.num_processes if data_world is None else data_world
        self.data_rank = accelerator.process_index if data_rank is None else data_rank
        self.replicas = replicas
        self.per_device_train_batch_size, self.max_batches = per_device_train_batch_size, max_batches
        self.total_bytes: int | None = None  # counted once, on the first evaluation

    def shard(self) -> list[list[int]]:
        micro = self.per_device_train_batch_size
        # A fixed number of sequences whatever the world size, so 1 and N processes report the same metric.
        limit = len(self.blocks) if self.max_batches is None else min(len(self.blocks), self.max_batches * micro)
        per_rank = limit // self.data_world
        if per_rank == 0:
            raise DataError(f"the validation split has {len(self.blocks)} blocks, fewer than the {self.data_world} data-parallel processes; raise validation_fraction")
        mine = list(range(self.data_rank * per_rank, (self.data_rank + 1) * per_rank))
        return [mine[i : i + micro] for i in range(0, per_rank, micro)]

    def batch(self, indices: list[int]):
        batch = self.blocks.get(indices)
        return batch, make_labels(batch["input_ids"], batch["position_ids"], self.tokenizer.pad_token_id)

    def count_bytes(self, batches: list[list[int]]) -> int:
        """UTF-8 bytes of the predicted validation tokens (special tokens decode to nothing)."""
        decode = self.tokenizer.decode
        return sum(len(decode(row[row != IGNORE_INDEX].tolist(), skip_special_tokens=True).encode("utf-8"))
                   for indices in batches for row in self.batch(indices)[1][:, 1:])

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        acc, batches = self.accelerator, self.shard()
        if self.total_bytes is None:
            local_bytes = torch.tensor([float(self.count_bytes(batches))], device=acc.device, dtype=torch.float64)
            self.total_bytes = int(acc.reduce(local_bytes, reduction="sum").item()) // self.replicas
        model.eval()
        sums = torch.zeros(2, device=acc.device, dtype=torch.float64)
        for indices in batches:
            batch, labels = self.batch(indices)
            with acc.autocast():
                nll, _ = compute_token_losses(model, batch["input_ids"].to(acc.device), batch["position_ids"].to(acc.device), labels.to(acc.device))
            sums += torch.stack([nll.double(), predicted_token_count(labels).double().to(acc.device)])
        model.train()
        sums = acc.reduce(sums, reduction="sum") / self.replicas
        nll_total, tokens = sums[0].item(), max(1.0, sums[1].item())
        loss = nll_total / tokens
        return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0)), "eval/bits_per_byte": bits_per_byte_from_nll(nll_total, self.total_bytes), "eval/tokens": tokens}


@torch.no_grad()
def sample_continuation(model, tokenizer, accelerator, prompt: str, max_new_tokens: int, seed: int) -> str:
    """A short sampled continuation of `prompt`, with its own RNG so training randomness is untouched."""
    ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + (
        tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else [])
    if not ids:
        return ""
    model.eval()
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), accelerator.autocast():
        torch.manual_seed(seed)
        out = model.generate(
            torch.tensor([ids], device=accelerator.device), max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_k=50,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        )
    model.train()
    return tokenizer.decode(out[0], skip_special_tokens=True)


def run_validation(trainer, pbar) -> None:
    """Validation metrics and a sample, recorded on the trainer, logged and printed."""
    trainer.last_eval = metrics = trainer.evaluate()
    trainer.validation_history.append((trainer.step, metrics["eval/loss"]))
    trainer.last_sample = trainer.sample()
    trainer.accelerator.log({**metrics, "eval/sample": trainer.last_sample}, step=trainer.step)
    message = f"step {trainer.step}: val loss {metrics['eval/loss']:.4f}  ppl {metrics['eval/perplexity']:.2f}  bpb {metrics['eval/bits_per_byte']:.4f}"
    write_message(trainer.accelerator, pbar, message + (f"\n  sample: {trainer.last_sample[:200]!r}" if trainer.last_sample else ""))


def run_lm_eval(trainer, pbar) -> None:
    """A small lm-eval suite on the live model (`eval_harness_tasks`, `eval_harness_limit` rows per task)."""
    args = trainer.args
    results = run_training_eval(
        trainer.unwrapped, trainer.tokenizer, tasks=list(args.eval_harness_tasks), limit=args.eval_harness_limit,
        data_dir=args.eval_harness_data_dir, step=trainer.step, tokens=trainer.tokens_seen, run_dir=str(trainer.output_dir),
    )
    trainer.accelerator.log({f"harness/{k}": float(v) for k, v in results.items()}, step=trainer.step)
    scores = "  ".join(f"{k} {v:.4f}" for k, v in results.items())
    write_message(trainer.accelerator, pbar, f"step {trainer.step}: {scores}")


def save_periodic_checkpoint(trainer, pbar) -> Path:
    """A resumable checkpoint of the current step, then (main process) its background push to a Hub branch."""
    acc, args = trainer.accelerator, trainer.args
    if args.push_to_hub and acc.is_main_process:
        # Saving rotates old checkpoints away (keep_last_k): the previous upload must finish reading first.
        wait_for_pushes()
    path = ckpt.save_checkpoint(trainer.backend, trainer.tokenizer, trainer.output_dir, trainer.step, trainer.trainer_state(), args.keep_last_k)
    if acc.is_main_process:
        write_message(acc, pbar, f"step {trainer.step}: checkpoint saved to {path}")
        if args.push_to_hub:
            push_checkpoint(str(path / ckpt.HF_SUBDIR), args.hub_model_id, trainer.step, trainer.tokens_seen, private=args.hub_private)
    return path
