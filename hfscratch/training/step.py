"""One optimizer step: token-weighted loss over micro-batches, backward, clipping and the stability verdict.

Each micro-batch's loss is its summed token NLL over the step's global predicted-token count (all-reduced up front),
so any split of the batch over micro-batches and ranks gives the same gradient.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..modeling_hfscratch import HfscratchForCausalLM
from .backend import TrainingBackend, print_main
from .data import IGNORE_INDEX, make_labels, predicted_token_count
from .stability import SpikeDetector, StepVerdict


def compute_token_losses(model, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor, z_loss: float = 0.0):
    """(sum of token NLLs, sum of z-loss terms) over the predicted tokens of one micro-batch, in fp32."""
    inner = getattr(model, "module", model)  # DDP / DeepSpeed wrappers, then torch.compile's
    if z_loss == 0 and isinstance(getattr(inner, "_orig_mod", inner), HfscratchForCausalLM):
        # The model's chunked loss never builds the (tokens x vocab) logits: the step's biggest tensor and,
        # for small models, much of its time. Dividing by one item makes the returned loss the plain sum.
        one = torch.ones((), device=input_ids.device)
        out = model(input_ids=input_ids, position_ids=position_ids, labels=labels, use_cache=False, skip_logits=True, num_items_in_batch=one)
        return out.loss, out.loss.new_zeros(())
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    shift_logits, shift_labels = logits[:, :-1, :].float(), labels[:, 1:]
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    if z_loss <= 0:
        return nll, nll.new_zeros(())
    # PaLM's auxiliary loss: keeps log Z near 0 so logits do not drift (a common bf16 instability).
    return nll, z_loss * (torch.logsumexp(shift_logits, dim=-1).pow(2) * (shift_labels != IGNORE_INDEX).float()).sum()


class StepOutcome(NamedTuple):
    loss: float  # token-weighted mean over the whole step, all ranks
    grad_norm: float  # NaN when the engine reports none
    verdict: StepVerdict
    lr: float  # the learning rate the step used


class TrainStep:
    """Runs optimizer steps on `backend`, reading `accumulation_steps` micro-batches per step from an iterator."""

    def __init__(self, accelerator, backend: TrainingBackend, detector: SpikeDetector, *, accumulation_steps: int, pad_token_id: int | None, z_loss: float):
        self.accelerator, self.backend, self.detector = accelerator, backend, detector
        self.accumulation_steps, self.pad_token_id, self.z_loss = accumulation_steps, pad_token_id, z_loss

    def __call__(self, batches, step: int) -> StepOutcome:
        """Optimizer step number `step` (1-based)."""
        acc, backend = self.accelerator, self.backend
        micro_batches = []
        for _ in range(self.accumulation_steps):
            batch = next(batches)
            batch["labels"] = make_labels(batch["input_ids"], batch["position_ids"], self.pad_token_id)
            micro_batches.append({k: v.to(acc.device, non_blocking=True) for k, v in batch.items()})
        local_tokens = sum(predicted_token_count(b["labels"]) for b in micro_batches).to(acc.device, torch.float32)
        # Under tensor parallelism `replicas` ranks hold each batch, so the all-reduced sums count it that many times.
        global_tokens = acc.reduce(local_tokens.clone(), reduction="sum") / backend.replicas if acc.num_processes > 1 else local_tokens
        # DDP/FSDP average gradients over the data-parallel ranks; multiplying by their number gives the global sum.
        scale = backend.data_world / global_tokens.clamp(min=1.0) * backend.accumulation_divisor
        nll_total = torch.zeros((), device=acc.device, dtype=torch.float32)
        for i, batch in enumerate(micro_batches):
            with backend.no_sync(last=i == len(micro_batches) - 1):
                with acc.autocast():
                    nll, z = compute_token_losses(backend.model, batch["input_ids"], batch["position_ids"], batch["labels"], self.z_loss)
                backend.backward((nll + z) * scale)
            nll_total += nll.detach().float()
        if acc.num_processes > 1:
            nll_total = acc.reduce(nll_total, reduction="sum") / backend.replicas
        loss = (nll_total / global_tokens.clamp(min=1.0)).item()

        verdicts: list[StepVerdict] = []

        def approve(grad_norm: float | None) -> bool:
            verdicts.append(self.detector.check(loss, grad_norm, step))
            return not verdicts[-1].skip

        lr = backend.scheduler.get_last_lr()[0]
        grad_norm, applied = backend.step(approve)
        verdict = verdicts[0]
        # Engines that update inside their own step may have done what the verdict forbids, or skipped on their own.
        if verdict.skip and applied:
            print_main(acc, f"step {step}: {verdict.reason}; {backend.name} had already applied this update")
            verdict = StepVerdict(False, "")
        elif not applied and not verdict.skip:
            verdict = StepVerdict(True, f"{backend.name} skipped the update (non-finite gradients, norm {grad_norm})")
        with warnings.catch_warnings():  # after a skipped update torch warns that the scheduler stepped alone: intended
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            backend.scheduler.step()  # the schedule follows the step count, skipped or not
        return StepOutcome(loss, grad_norm if grad_norm is not None else float("nan"), verdict, lr)
