"""Direct preference optimisation with TRL's DPOTrainer.

Full DPO keeps an explicit frozen copy of the starting model as reference; LoRA-DPO (use_peft, or continuing
from an adapter) uses the implicit reference: the same network with the adapters disabled, so no second copy.
"""

from __future__ import annotations

import copy

from peft import PeftModel
from trl import DPOTrainer

from .common import finish_training, is_main_process, peft_config_for, start_stage
from .config import AlignmentDataConfig, AlignmentModelConfig
from .metrics import make_measure


def run_dpo(model_args: AlignmentModelConfig, script_args: AlignmentDataConfig, training_args, model=None, tokenizer=None) -> dict | None:
    model, tokenizer, train, held = start_stage("dpo", model_args, script_args, training_args, model, tokenizer)
    peft_config = peft_config_for(model, model_args)
    implicit_reference = peft_config is not None or isinstance(model, PeftModel)
    ref_model = None if implicit_reference else copy.deepcopy(model).eval().requires_grad_(False)
    measure = make_measure("dpo", tokenizer, held, script_args.eval_max_new_tokens)
    before = measure(model) if measure and is_main_process() else None
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=training_args, train_dataset=train, processing_class=tokenizer,
                         peft_config=peft_config)
    trainer.train()
    return finish_training(trainer, tokenizer, model_args, training_args, "dpo", before, measure,
                           {"train_pairs": len(train), "dataset": script_args.dataset_name,
                            "reference": "implicit (adapters disabled)" if implicit_reference else "explicit frozen copy"})
