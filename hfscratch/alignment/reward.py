"""A reward model with TRL's RewardTrainer: the starting causal LM's backbone under a new scalar `score` head
(AutoModelForSequenceClassification, num_labels=1), trained on the preference pairs DPO reads so that
reward(chosen) > reward(rejected). Held-out pairwise accuracy and margin are measured before and after, next to a
length-only baseline (prefer the longer answer), which a reward model that only learned length would match."""

from __future__ import annotations

from trl import RewardTrainer

from ..errors import ConfigError, DataError
from .common import peft_config_for, start_stage, train_and_finish
from .config import AlignmentDataConfig, AlignmentModelConfig
from .metrics import make_measure


def check_pairs(pairs, name: str) -> None:
    """Every pair needs both answers: TRL would stop at the first empty one with a TypeError deep in its tokenizing."""
    for side in ("chosen", "rejected"):
        if missing := [i for i, answer in enumerate(pairs[side]) if not answer]:
            raise DataError(f"{len(missing)} of {len(pairs)} pairs in {name} have no {side} answer (first: row {missing[0]}); "
                            f"a reward model learns from pairs: drop those rows or fill in the {side} side")


def run_reward(model_args: AlignmentModelConfig, script_args: AlignmentDataConfig, training_args, model=None, tokenizer=None) -> dict | None:
    if model_args.adapter_name_or_path:  # a causal-LM adapter cannot sit under a sequence-classification head
        raise ConfigError("a reward model starts from a full checkpoint, not an adapter; merge it first "
                          "(`hfscratch merge ADAPTER OUT`) and pass OUT as model_name_or_path")
    if model_args.merge_lora:  # `hfscratch merge` rebuilds a causal LM, which would drop the trained `score` head
        raise ConfigError("merge_lora merges causal-LM adapters only; a reward adapter loads as it is "
                          "(AutoModelForSequenceClassification.from_pretrained(final, num_labels=1)); drop merge_lora")
    model, tokenizer, train, held = start_stage("reward", model_args, script_args, training_args, model, tokenizer)
    check_pairs(train, script_args.dataset_name)
    if held is not None:
        check_pairs(held, script_args.eval_dataset_name or script_args.dataset_name)
    measure = make_measure("reward", tokenizer, held, script_args.eval_max_new_tokens, max_length=training_args.max_length)
    return train_and_finish(RewardTrainer, "reward", model, tokenizer, train, measure, model_args, training_args,
                            {"train_pairs": len(train), "dataset": script_args.dataset_name, "length_unit": "tokens"},
                            peft_config=peft_config_for(model, model_args, task_type="SEQ_CLS"))
