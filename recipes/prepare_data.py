"""Prepare pretraining data: sources -> datatrove cleaning -> BPE tokenizer -> packed blocks (cached).

    python recipes/prepare_data.py                                               # embedded synthetic math (default)
    python recipes/prepare_data.py --config recipes/configs/data_gutenberg.yaml  # local books + synthetic math
    python recipes/prepare_data.py --config recipes/configs/data_fineweb_edu.yaml  # Hub corpus, streamed (online)
    python recipes/prepare_data.py --vocab_size 4096 --block_size 512           # any field can be overridden

Writes `<output_root>/<name>/{clean,tokenizer,packed}/` + `manifest.json`; re-running with the same config
reuses it. The logic lives in `hfscratch.data.prepare`; `hfscratch data` is the same command.
"""

import sys

from hfscratch.data.cli import print_next_steps
from hfscratch.data.prepare import DataConfig, prepare_data
from hfscratch.recipe_args import packaged_config, parse_recipe_args, run_recipe

DEFAULT_CONFIG = packaged_config("data_synthetic_math")


def main(argv: list[str]) -> None:
    if "--config" not in argv:
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    (config,) = parse_recipe_args([DataConfig], argv, prog="recipes/prepare_data.py")
    print_next_steps(prepare_data(config))


if __name__ == "__main__":
    run_recipe(main, sys.argv[1:])
