"""Data stage: sources, cleaning, tokenizer training, packing, and the embedded synthetic math corpus.

    from hfscratch.data import DataConfig, prepare_data
    data = prepare_data(DataConfig())          # embedded synthetic math, offline, cached in data/synthetic_math/

The tokenizer lives in `hfscratch.tokenizer` (`train_tokenizer`, `CHAT_TEMPLATE`, `ensure_chat_template`).
"""

from .clean import CleanConfig, CleanResult, clean_corpus
from .config import DataConfig, check_block_size
from .pack import pack_dataset, split_blocks
from .prepare import PreparedData, prepare_data, prepare_data_distributed
from .sources import iter_documents, resolve_sources
from .synthetic_math import SyntheticMathConfig

__all__ = [
    "CleanConfig",
    "CleanResult",
    "DataConfig",
    "PreparedData",
    "check_block_size",
    "clean_corpus",
    "iter_documents",
    "pack_dataset",
    "prepare_data",
    "prepare_data_distributed",
    "resolve_sources",
    "split_blocks",
    "SyntheticMathConfig",
]
