"""Loss / gradient-norm spike and NaN detection: skip the bad update, stop after K in a row.

A step is judged on globally-reduced values before the optimizer sees it (a skip leaves weights and Adam moments
untouched), against a window of accepted steps, so every rank takes the same decision.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ..errors import HfscratchError


class TrainingDivergedError(HfscratchError):
    """Too many consecutive bad steps: the run is diverging and continuing would waste compute."""


@dataclass
class StepVerdict:
    skip: bool
    reason: str = ""


class SpikeDetector:
    def __init__(self, zscore: float = 6.0, warmup_steps: int = 20, max_consecutive_skips: int = 5, window: int = 200):
        self.zscore, self.warmup_steps, self.max_consecutive_skips, self.window = zscore, warmup_steps, max_consecutive_skips, window
        self.load_state_dict({"losses": [], "grad_norms": [], "consecutive_skips": 0, "total_skips": 0})

    @staticmethod
    def _z(value: float, history) -> float:
        n = len(history)
        mean = sum(history) / n
        var = sum((x - mean) ** 2 for x in history) / max(1, n - 1)
        # A floor on the std keeps a perfectly flat history from flagging tiny wiggles.
        std = max(math.sqrt(var), 1e-3 * abs(mean), 1e-8)
        return (value - mean) / std

    def check(self, loss: float, grad_norm: float | None, step: int) -> StepVerdict:
        """Judge one step; raises TrainingDivergedError after `max_consecutive_skips` skips in a row."""
        reason = ""
        if not math.isfinite(loss):
            reason = f"non-finite loss ({loss})"
        elif grad_norm is not None and not math.isfinite(grad_norm):
            reason = f"non-finite gradient norm ({grad_norm})"
        elif self.zscore > 0 and len(self.losses) >= self.warmup_steps:
            z_loss = self._z(loss, self.losses)
            if z_loss > self.zscore:
                reason = f"loss spike {loss:.4f} (z={z_loss:.1f} over the last {len(self.losses)} steps)"
            elif grad_norm is not None and len(self.grad_norms) >= self.warmup_steps:
                z_grad = self._z(grad_norm, self.grad_norms)
                if z_grad > self.zscore:
                    reason = f"gradient-norm spike {grad_norm:.4f} (z={z_grad:.1f})"
        if reason:
            self.consecutive_skips, self.total_skips = self.consecutive_skips + 1, self.total_skips + 1
            if self.consecutive_skips >= self.max_consecutive_skips:
                raise TrainingDivergedError(
                    f"training stopped at step {step}: {self.consecutive_skips} consecutive steps skipped (last: {reason}); "
                    "lower learning_rate, raise warmup_steps or enable z_loss, then resume from the last checkpoint"
                )
            return StepVerdict(True, reason)
        self.consecutive_skips = 0
        self.losses.append(loss)
        if grad_norm is not None:
            self.grad_norms.append(grad_norm)
        return StepVerdict(False)

    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms),
                "consecutive_skips": self.consecutive_skips, "total_skips": self.total_skips}

    def load_state_dict(self, state: dict) -> None:
        self.losses: deque[float] = deque(state["losses"], maxlen=self.window)
        self.grad_norms: deque[float] = deque(state["grad_norms"], maxlen=self.window)
        self.consecutive_skips, self.total_skips = state["consecutive_skips"], state["total_skips"]
