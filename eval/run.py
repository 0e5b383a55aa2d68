"""Thin evaluation runner: `python eval/run.py --model PATH --tasks gsm8k_local,hellaswag_local --data_dir DIR`.

Same options as `hfscratch eval` (see `python eval/run.py --help`); the work happens in hfscratch.evaluation.

The task YAMLs in eval/tasks also work with plain lm-eval (the data folder goes in --metadata or the environment):

    lm_eval --model hf --model_args pretrained=PATH,trust_remote_code=True \
        --tasks gsm8k_local,hellaswag_local --include_path eval/tasks \
        --metadata '{"data_dir": "../shared/data"}'          # or: export HFSCRATCH_EVAL_DATA=../shared/data
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from hfscratch.errors import HfscratchError  # noqa: E402
from hfscratch.evaluation import cli  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate a model with lm-eval (offline task copies) and bits-per-byte.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    cli.add_arguments(parser, model_flag=True)
    args = parser.parse_args(argv)
    try:
        return cli.run(args)
    except HfscratchError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
