"""`hfscratch pretrain`, in this process: the `main` of `recipes/pretrain.py` (launch that for multi-process runs)."""

from __future__ import annotations

from ..options import parse_config
from .config import PretrainConfig
from .loop import pretrain
from .summary import print_summary


def main(argv: list[str]) -> int:
    config = parse_config(PretrainConfig, argv, prog="hfscratch pretrain", default_config="pretrain_tiny")
    print_summary(pretrain(config))
    return 0
