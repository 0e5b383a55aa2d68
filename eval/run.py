"""Evaluate a model: the same command as `hfscratch eval` (see `python eval/run.py --help`).

    python eval/run.py outputs/pretrain-tiny/final --tasks gsm8k_local,hellaswag_local --data_dir ../shared/data

The task YAMLs in eval/tasks also work with plain lm-eval (the data folder goes in --metadata or the environment):

    lm_eval --model hf --model_args pretrained=PATH,trust_remote_code=True \
        --tasks gsm8k_local,hellaswag_local --include_path eval/tasks \
        --metadata '{"data_dir": "../shared/data"}'          # or: export HFSCRATCH_EVAL_DATA=../shared/data
"""

import sys

from hfscratch.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("eval", sys.argv[1:]))
