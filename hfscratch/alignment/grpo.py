"""GRPO with TRL's GRPOTrainer: a verifiable math reward (correct final answer + a small format bonus) and, for RLHF,
a learned reward model scoring every completion, with a KL term (`beta`) to the starting model."""

from __future__ import annotations

from trl import GRPOTrainer

from ..errors import ConfigError, DataError
from .common import load_reward_model, peft_config_for, start_stage, train_and_finish
from .config import AlignmentDataConfig, GRPOModelConfig
from .metrics import chat_prompt_ids, make_measure
from .rewards import correctness_reward, format_reward

DEFAULT_REWARD_WEIGHTS = [1.0, 0.2]  # correctness dominates; format only breaks ties among wrong answers
DEFAULT_MODEL_REWARD_WEIGHT = 1.0


def run_grpo(model_args: GRPOModelConfig, script_args: AlignmentDataConfig, training_args, model=None, tokenizer=None,
             stage: str = "grpo") -> dict | None:
    """``stage`` names the results (`alignment_results.json`'s "stage", `<stage>_before_after.png`)."""
    model, tokenizer, train, held = start_stage("grpo", model_args, script_args, training_args, model, tokenizer)
    if limit := script_args.max_prompt_tokens:
        train, held = (_drop_long_prompts(rows, tokenizer, limit, what) for rows, what in ((train, "training"), (held, "held-out")))
    reward_path, judge_path = model_args.reward_model_name_or_path, model_args.judge_model_name_or_path
    verifiable = model_args.verifiable_reward or not reward_path  # without a reward model, the verifiable one is all there is
    if verifiable and "answer" not in train.column_names:
        raise ConfigError(f"{script_args.dataset_name} has prompts but no verifiable answers (preference pairs?): train "
                          "against a reward model with --reward_model_name_or_path and --verifiable_reward false")
    reward_funcs, processing = ([correctness_reward, format_reward], [None, None]) if verifiable else ([], [])
    if judge_path and judge_path == reward_path:
        raise ConfigError("the judge must be a second reward model trained on pairs the first never saw, not the same one")
    reward_model = judge = None
    if reward_path:
        reward_model = load_reward_model(reward_path, tokenizer, trust_remote_code=training_args.trust_remote_code)
        reward_funcs, processing = [*reward_funcs, reward_model], [*processing, tokenizer]
    if judge_path:
        judge = load_reward_model(judge_path, tokenizer, "judge", trust_remote_code=training_args.trust_remote_code)
    if training_args.reward_weights is None:
        training_args.reward_weights = (list(DEFAULT_REWARD_WEIGHTS) if verifiable else []) + \
            ([DEFAULT_MODEL_REWARD_WEIGHT] if reward_path else [])
    if len(training_args.reward_weights) != len(reward_funcs):
        names = (["correctness", "format"] if verifiable else []) + (["reward model"] if reward_path else [])
        raise ConfigError(f"reward_weights has {len(training_args.reward_weights)} values for {len(reward_funcs)} rewards "
                          f"({', '.join(names)}); give one weight each, in that order")
    weights = training_args.reward_weights if verifiable else DEFAULT_REWARD_WEIGHTS  # the held-out score's format bonus
    format_weight = weights[1] / weights[0]
    measure = make_measure("grpo", tokenizer, held, script_args.eval_max_new_tokens, format_weight=format_weight,
                           num_samples=script_args.eval_num_samples, reward_model=reward_model, judge=judge)
    return train_and_finish(GRPOTrainer, stage, model, tokenizer, train, measure, model_args, training_args,
                            {"train_prompts": len(train), "dataset": script_args.dataset_name, "reward_model": reward_path,
                             "judge": judge_path, "verifiable_reward": verifiable,
                             "beta": training_args.beta},
                            reward_funcs=reward_funcs, reward_processing_classes=processing,
                            peft_config=peft_config_for(model, model_args))


def _drop_long_prompts(rows, tokenizer, limit: int, what: str):
    if rows is None:
        return None
    kept = rows.filter(lambda row: len(chat_prompt_ids(tokenizer, row["prompt"])) <= limit)
    if len(kept) == 0:
        raise DataError(f"all {len(rows)} {what} prompts are longer than max_prompt_tokens={limit}; raise it")
    return kept


def run_rlhf(model_args: GRPOModelConfig, script_args: AlignmentDataConfig, training_args, model=None, tokenizer=None) -> dict | None:
    """GRPO against a learned reward model: `reward_model_name_or_path` is required here."""
    if not model_args.reward_model_name_or_path:
        raise ConfigError("RLHF needs a reward model: pass --reward_model_name_or_path (train one with `hfscratch reward`)")
    return run_grpo(model_args, script_args, training_args, model, tokenizer, stage="rlhf")
