"""`DataConfig`: everything that decides a prepared dataset; `hfscratch data` owns it and pretraining nests it as
its `data:` section, so a data YAML (e.g. `data_gutenberg`) is the pretraining recipe's data section unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..options import option
from .clean.config import CleanConfig
from .sources import TXT_MODES
from .synthetic_math import SyntheticMathConfig


@dataclass
class DataConfig:
    """Sources, cleaning, tokenizer and packing. Defaults: the embedded synthetic math corpus, offline, ~30 s."""

    name: str = option("synthetic_math", "folder name of the prepared data under output_root")
    output_root: str = option("data", "parent folder of prepared datasets")
    sources: list[str] = option([], "files, folders, globs or Hub ids of natural text; empty = only the synthetic math corpus")
    text_field: str = option("text", "field holding the text in json/jsonl/parquet/Hub rows")
    txt_mode: str = option("file", "a .txt file is one document per file | paragraph | line")
    max_documents: int | None = option(None, "read at most this many source documents")
    synthetic_problems: int = option(4000, "synthetic GSM8K-style training problems mixed in (0 = none)")
    synthetic: SyntheticMathConfig = field(default_factory=SyntheticMathConfig)
    clean: bool = option(True, "run the datatrove cleaning pipeline on the sources")
    cleaning: CleanConfig = field(default_factory=CleanConfig)
    vocab_size: int = option(2048, "BPE vocabulary size, special tokens included")
    min_frequency: int = option(2, "smallest pair count for a BPE merge")
    tokenizer_max_chars: int | None = option(None, "train the tokenizer on at most this many characters (None = whole corpus)")
    tokenizer_path: str | None = option(None, "reuse this tokenizer (folder or Hub id) instead of training one")
    dataset_path: str | None = option(None, "pretraining only: skip preparation and read this DatasetDict.save_to_disk folder (train/validation splits of packed input_ids, + position_ids); needs tokenizer_path, and its blocks must hold block_size")
    block_size: int = option(256, "tokens per packed block (the training sequence length)")
    add_bos: bool = option(True, "start every document with bos")
    drop_remainder: bool = option(True, "drop the last partial block (else pad it)")
    validation_fraction: float = option(0.05, "fraction of blocks held out for validation")
    num_proc: int | None = option(None, "tokenization processes (None = by corpus size)")
    split_seed: int = option(0, "seed of the train/validation split")
    streaming: bool = option(False, "read documents as a stream and write blocks incrementally (bounded memory)")
    force: bool = option(False, "rebuild even if a valid prepared folder exists")

    def __post_init__(self):
        self.sources = [str(self.sources)] if isinstance(self.sources, (str, Path)) else [str(s) for s in self.sources]
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"name={self.name!r} must be a plain folder name like 'synthetic_math'")
        if self.synthetic_problems < 0:
            raise ConfigError(f"synthetic_problems={self.synthetic_problems} must be >= 0")
        if self.txt_mode not in TXT_MODES:
            raise ConfigError(f"txt_mode={self.txt_mode!r}: use file, paragraph or line")
        if self.block_size < 2:
            raise ConfigError(f"block_size={self.block_size} must be at least 2 (one input and one target token); use e.g. 256")
        check_validation_fraction(self.validation_fraction)
        if self.dataset_path is not None and self.tokenizer_path is None:
            raise ConfigError("dataset_path needs tokenizer_path (the tokenizer the blocks were encoded with)")
        self.cleaning.validate()

    @property
    def root(self) -> Path:
        return Path(self.output_root) / self.name


def check_block_size(block_size: int, max_position_embeddings: int) -> None:
    """The one cross-section rule on block_size: a block must fit the model's positions."""
    if block_size > max_position_embeddings:
        raise ConfigError(f"block_size={block_size} is larger than the model's max_position_embeddings={max_position_embeddings}; "
                          f"set block_size <= {max_position_embeddings} or raise max_position_embeddings in the model config")


def check_validation_fraction(fraction: float) -> None:
    """Every prepared dataset holds out validation blocks: pretraining validates on them and bits/byte needs them."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation_fraction={fraction} must be in (0, 1); use e.g. 0.05")
