"""`hfscratch data`: clean, train a tokenizer, tokenize and pack (same `main` as `python recipes/prepare_data.py`).

    hfscratch data --config recipes/configs/data_gutenberg.yaml --vocab_size 8192
"""

from __future__ import annotations

from ..options import parse_config
from .config import DataConfig
from .prepare import prepare_data


def print_next_steps(data) -> None:
    splits = data.manifest.get("splits", {})
    train = splits.get("train", {})
    print(
        f"prepared data: {data.root}\n"
        f"  tokenizer     {data.tokenizer_dir}  (vocab {len(data.tokenizer):,}, "
        f"bytes/token {data.manifest['tokenizer'].get('bytes_per_token') or float('nan'):.2f})\n"
        f"  train         {len(data.train):,} blocks, {train.get('tokens', 0):,} tokens\n"
        f"  validation    {len(data.validation):,} blocks\n"
        f"next: hfscratch pretrain --data.output_root {data.root.parent} --data.name {data.root.name}"
    )


def main(argv: list[str]) -> int:
    config = parse_config(DataConfig, argv, prog="hfscratch data", default_config="data_synthetic_math")
    print_next_steps(prepare_data(config))
    return 0
