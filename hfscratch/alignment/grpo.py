"""GRPO with TRL's GRPOTrainer and a verifiable math reward (correct final answer + a small format bonus)."""

from __future__ import annotations

from trl import GRPOTrainer

from .common import peft_config_for, start_stage, train_and_finish
from .config import AlignmentDataConfig, AlignmentModelConfig
from .metrics import make_measure
from .rewards import correctness_reward, format_reward

DEFAULT_REWARD_WEIGHTS = [1.0, 0.2]  # correctness dominates; format only breaks ties among wrong answers


def run_grpo(model_args: AlignmentModelConfig, script_args: AlignmentDataConfig, training_args, model=None, tokenizer=None) -> dict | None:
    model, tokenizer, train, held = start_stage("grpo", model_args, script_args, training_args, model, tokenizer)
    if training_args.reward_weights is None:
        training_args.reward_weights = list(DEFAULT_REWARD_WEIGHTS)
    format_weight = training_args.reward_weights[1] / training_args.reward_weights[0]
    measure = make_measure("grpo", tokenizer, held, script_args.eval_max_new_tokens, format_weight=format_weight,
                           num_samples=script_args.eval_num_samples)
    return train_and_finish(GRPOTrainer, "grpo", model, tokenizer, train, measure, model_args, training_args,
                            {"train_prompts": len(train), "dataset": script_args.dataset_name},
                            reward_funcs=[correctness_reward, format_reward],
                            peft_config=peft_config_for(model, model_args))
