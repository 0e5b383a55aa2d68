"""Alignment with TRL and PEFT: SFT, DPO, GRPO and LoRA on an hfscratch (or any causal LM) checkpoint.

Library entry points (the recipes in recipes/ and the `hfscratch sft|dpo|grpo|merge` commands call these):
`run_sft`, `run_dpo`, `run_grpo` (each measures held-out metrics before and after training) and `merge_adapter`.
"""

from .config import DEFAULT_CHECKPOINT, AlignmentDataConfig, AlignmentModelConfig

__all__ = ["DEFAULT_CHECKPOINT", "AlignmentModelConfig", "AlignmentDataConfig", "run_sft", "run_dpo", "run_grpo", "merge_adapter"]


def __getattr__(name):  # lazy: importing the package must not import TRL
    if name == "run_sft":
        from .sft import run_sft

        return run_sft
    if name == "run_dpo":
        from .dpo import run_dpo

        return run_dpo
    if name == "run_grpo":
        from .grpo import run_grpo

        return run_grpo
    if name == "merge_adapter":
        from .merge import merge_adapter

        return merge_adapter
    raise AttributeError(name)
