"""Pretrain a causal LM from scratch: the project's main job.

    accelerate launch recipes/pretrain.py                      # tiny CPU default (recipes/configs/pretrain_tiny.yaml)
    accelerate launch recipes/pretrain.py --max_steps 50       # any field can be overridden
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/pretrain.py --config recipes/configs/pretrain_gpt2_124m.yaml
    accelerate launch recipes/pretrain.py --resume_from_checkpoint latest

Data preparation (tokenizer + packed blocks) runs first if its output is missing, then training with
validation, checkpoints and tensorboard logs, then `outputs/<run_name>/final/` is written: a save_pretrained
folder with tokenizer, generation config, model card and loss curve. `hfscratch pretrain` runs the same `main` (hfscratch/training/cli.py).
"""

import sys

from hfscratch.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("pretrain", sys.argv[1:]))
