"""GRPO with TRL's GRPOTrainer and a verifiable math reward (correct final answer + a small format bonus)."""

from __future__ import annotations

from transformers import set_seed
from trl import GRPOTrainer

from .common import (
    finish_training,
    is_main_process,
    load_model_and_tokenizer,
    load_train_and_eval,
    make_measure,
    peft_config_for,
)
from .config import AlignmentDataConfig, AlignmentModelConfig
from .rewards import correctness_reward, format_reward

DEFAULT_REWARD_WEIGHTS = [1.0, 0.2]  # correctness dominates; format only breaks ties among wrong answers


def run_grpo(model_args: AlignmentModelConfig, script_args: AlignmentDataConfig, training_args, model=None, tokenizer=None) -> dict | None:
    set_seed(training_args.seed)
    if model is None:
        model, tokenizer = load_model_and_tokenizer(model_args, trust_remote_code=training_args.trust_remote_code)
    train, held = load_train_and_eval("grpo", script_args, training_args.seed)
    if training_args.reward_weights is None:
        training_args.reward_weights = list(DEFAULT_REWARD_WEIGHTS)
    format_weight = training_args.reward_weights[1] / training_args.reward_weights[0]
    measure = make_measure("grpo", tokenizer, held, script_args.eval_max_new_tokens, format_weight=format_weight,
                           num_samples=script_args.eval_num_samples)
    before = measure(model) if measure and is_main_process() else None
    trainer = GRPOTrainer(model=model, reward_funcs=[correctness_reward, format_reward], args=training_args, train_dataset=train,
                          processing_class=tokenizer, peft_config=peft_config_for(model, model_args))
    trainer.train()
    return finish_training(trainer, tokenizer, model_args, training_args, "grpo", before, measure,
                           {"train_prompts": len(train), "dataset": script_args.dataset_name})
