"""`hfscratch pretrain`: the same `main` as `accelerate launch recipes/pretrain.py`.

Multi-process runs go through `accelerate launch` (or torchrun) on the recipe; the command runs in this process.
"""

from __future__ import annotations

from ..options import parse_config
from .config import PretrainConfig
from .loop import pretrain
from .summary import print_summary


def main(argv: list[str]) -> int:
    config = parse_config(PretrainConfig, argv, prog="hfscratch pretrain", default_config="pretrain_tiny")
    print_summary(pretrain(config))
    return 0
