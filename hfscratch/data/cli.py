"""`hfscratch data`: clean, train a tokenizer, tokenize and pack (same as `python recipes/prepare_data.py`).

    hfscratch data                                              # embedded synthetic math -> data/synthetic_math/
    hfscratch data --config recipes/configs/data_gutenberg.yaml --vocab_size 8192

`DataConfig`'s fields become options only so `--help` lists them; the values go back through
`parse_recipe_args`, so YAML and command-line values are checked by one parser with the same one-line errors.
"""

from __future__ import annotations

import argparse

from ..recipe_args import add_dataclass_options, options_to_argv, packaged_config, parse_recipe_args
from .prepare import DataConfig, prepare_data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_options(parser, [DataConfig], "YAML config (e.g. recipes/configs/data_gutenberg.yaml); options below override it")


def namespace_to_argv(args: argparse.Namespace) -> list[str]:
    return options_to_argv(args, [DataConfig])


def print_next_steps(data) -> None:
    splits = data.manifest.get("splits", {})
    train = splits.get("train", {})
    print(
        f"prepared data: {data.root}\n"
        f"  tokenizer     {data.tokenizer_dir}  (vocab {len(data.tokenizer):,}, "
        f"bytes/token {data.manifest['tokenizer'].get('bytes_per_token') or float('nan'):.2f})\n"
        f"  train         {len(data.train):,} blocks, {train.get('tokens', 0):,} tokens\n"
        f"  validation    {len(data.validation):,} blocks\n"
        f"next: hfscratch pretrain --data_dir {data.root.parent} --data_name {data.root.name}"
    )


def run(args: argparse.Namespace) -> int:
    argv = namespace_to_argv(args)
    if "--config" not in argv:  # the same default run as `python recipes/prepare_data.py`
        argv = ["--config", str(packaged_config("data_synthetic_math")), *argv]
    (config,) = parse_recipe_args([DataConfig], argv, prog="hfscratch data")
    print_next_steps(prepare_data(config))
    return 0


__all__ = ["add_arguments", "run", "namespace_to_argv", "print_next_steps"]
