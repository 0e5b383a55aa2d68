"""Data stage: sources, cleaning, tokenizer training (`hfscratch.tokenizer`), packing, and the embedded synthetic
math corpus. `prepare_data(DataConfig())` builds the default, offline, into data/synthetic_math/."""

from .clean import CleanConfig, CleanResult, clean_corpus
from .config import DataConfig, check_block_size
from .pack import pack_dataset, split_blocks
from .prepare import PreparedData, prepare_data, prepare_data_distributed
from .sources import iter_documents, resolve_sources
from .synthetic_math import SyntheticMathConfig

__all__ = ["CleanConfig", "CleanResult", "DataConfig", "PreparedData", "check_block_size", "clean_corpus",
           "iter_documents", "pack_dataset", "prepare_data", "prepare_data_distributed", "resolve_sources",
           "split_blocks", "SyntheticMathConfig"]
