"""Supervised fine-tuning with TRL's SFTTrainer: chat data with assistant-only loss, packing, full or LoRA."""

from __future__ import annotations

from trl import SFTTrainer

from .common import peft_config_for, start_stage, train_and_finish
from .config import AlignmentDataConfig, AlignmentModelConfig
from .datasets import check_assistant_turns
from .metrics import make_measure


def run_sft(model_args: AlignmentModelConfig, script_args: AlignmentDataConfig, training_args, model=None, tokenizer=None) -> dict | None:
    """Fine-tune, save `<output_dir>/final`, and return held-out metrics before/after (on the main process)."""
    model, tokenizer, train, held = start_stage("sft", model_args, script_args, training_args, model, tokenizer)
    if training_args.assistant_only_loss and "messages" not in train.column_names:
        training_args.assistant_only_loss = False  # prompt/completion text: TRL's completion-only loss plays that role
    if training_args.assistant_only_loss:
        check_assistant_turns(train, script_args.dataset_name)  # before TRL, which would stop with a traceback
    measure = make_measure("sft", tokenizer, held, script_args.eval_max_new_tokens, gsm8k_format=True)
    return train_and_finish(SFTTrainer, "sft", model, tokenizer, train, measure, model_args, training_args,
                            {"train_rows": len(train), "dataset": script_args.dataset_name},
                            peft_config=peft_config_for(model, model_args))
