"""`hfscratch sft|dpo|grpo|reward`: the same `main` as `recipes/sft.py`, `dpo.py`, `grpo.py`, `reward.py` (multi-process runs go through
`accelerate launch` or torchrun on the recipe; the command runs in this process)."""

from __future__ import annotations

from ..options import parse_config
from .config import DPOStageConfig, GRPOStageConfig, RewardStageConfig, RLHFStageConfig, SFTStageConfig
from .dpo import run_dpo
from .grpo import run_grpo, run_rlhf
from .reward import run_reward
from .sft import run_sft


def _stage_main(stage: str, config_class, run):
    def main(argv: list[str]) -> int:
        config = parse_config(config_class, argv, prog=f"hfscratch {stage}", default_config=f"{stage}_synthetic_math")
        run(config.model, config.data, config.train)
        return 0

    return main


main_sft = _stage_main("sft", SFTStageConfig, run_sft)
main_dpo = _stage_main("dpo", DPOStageConfig, run_dpo)
main_grpo = _stage_main("grpo", GRPOStageConfig, run_grpo)
main_reward = _stage_main("reward", RewardStageConfig, run_reward)
main_rlhf = _stage_main("rlhf", RLHFStageConfig, run_rlhf)
