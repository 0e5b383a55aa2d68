"""Supervised fine-tuning with TRL's SFTTrainer: chat data with assistant-only loss, packing, full or LoRA."""

from __future__ import annotations

from transformers import set_seed
from trl import SFTTrainer

from .common import (
    finish_training,
    is_main_process,
    load_model_and_tokenizer,
    load_train_and_eval,
    make_measure,
    peft_config_for,
)
from .config import AlignmentDataConfig, AlignmentModelConfig
from .datasets import check_assistant_turns


def run_sft(model_args: AlignmentModelConfig, script_args: AlignmentDataConfig, training_args, model=None, tokenizer=None) -> dict | None:
    """Fine-tune, save `<output_dir>/final`, and return held-out metrics before/after (on the main process)."""
    set_seed(training_args.seed)
    if model is None:
        model, tokenizer = load_model_and_tokenizer(model_args, trust_remote_code=training_args.trust_remote_code)
    train, held = load_train_and_eval("sft", script_args, training_args.seed)
    conversational = "messages" in train.column_names
    if training_args.assistant_only_loss and not conversational:
        # prompt/completion text: TRL's completion-only loss plays the same role.
        training_args.assistant_only_loss = False
    if training_args.assistant_only_loss:
        check_assistant_turns(train, script_args.dataset_name)  # before TRL, which would stop with a traceback
    measure = make_measure("sft", tokenizer, held, script_args.eval_max_new_tokens, gsm8k_format=True)
    before = measure(model) if measure and is_main_process() else None
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=train, processing_class=tokenizer,
                         peft_config=peft_config_for(model, model_args))
    trainer.train()
    return finish_training(trainer, tokenizer, model_args, training_args, "sft", before, measure,
                           {"train_rows": len(train), "dataset": script_args.dataset_name})
