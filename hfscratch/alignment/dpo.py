"""Direct preference optimisation with TRL's DPOTrainer. Full DPO keeps a frozen copy of the starting model as
reference; LoRA-DPO (use_peft, or continuing from an adapter) uses the network with its adapters disabled instead."""

from __future__ import annotations

import copy

from peft import PeftModel
from trl import DPOTrainer

from .common import peft_config_for, start_stage, train_and_finish
from .config import AlignmentDataConfig, AlignmentModelConfig
from .metrics import make_measure


def run_dpo(model_args: AlignmentModelConfig, script_args: AlignmentDataConfig, training_args, model=None, tokenizer=None) -> dict | None:
    model, tokenizer, train, held = start_stage("dpo", model_args, script_args, training_args, model, tokenizer)
    peft_config = peft_config_for(model, model_args)
    implicit_reference = peft_config is not None or isinstance(model, PeftModel)
    ref_model = None if implicit_reference else copy.deepcopy(model).eval().requires_grad_(False)
    measure = make_measure("dpo", tokenizer, held, script_args.eval_max_new_tokens)
    reference = "implicit (adapters disabled)" if implicit_reference else "explicit frozen copy"
    return train_and_finish(DPOTrainer, "dpo", model, tokenizer, train, measure, model_args, training_args,
                            {"train_pairs": len(train), "dataset": script_args.dataset_name, "reference": reference},
                            ref_model=ref_model, peft_config=peft_config)
