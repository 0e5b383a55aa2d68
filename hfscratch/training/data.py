"""What the loop reads: packed blocks, their labels, and this rank's micro-batches in order.

Exact resume rests here: the data order depends on (seed, epoch) only and the position is a count of sequences.
Documents in a block are kept apart by restarting `position_ids` (the model's document-aware causal mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from datasets import load_from_disk
from transformers import AutoTokenizer

from ..data.config import DataConfig
from ..data.prepare import prepare_data_distributed
from ..errors import DataError

IGNORE_INDEX = -100


@dataclass
class TrainingData:
    """What the loop needs from data preparation (a `PreparedData` fits this shape)."""

    train: Any
    validation: Any
    tokenizer: Any
    tokenizer_dir: str | None = None
    manifest: dict = field(default_factory=dict)


class PackedBlocks:
    """Random access to packed blocks as int64 tensors; small splits are held in memory as one array."""

    def __init__(self, dataset, in_memory_limit_bytes: int = 2 * 2**30):
        if "input_ids" not in dataset.column_names:
            raise DataError(f"packed dataset has no input_ids column (columns: {dataset.column_names}); prepare it with `hfscratch data`")
        if len(dataset) == 0:
            raise DataError("packed dataset split is empty; prepare more data or lower block_size")
        self.dataset = dataset
        self.columns = ["input_ids"] + (["position_ids"] if "position_ids" in dataset.column_names else [])
        self.block_size = len(dataset[0]["input_ids"])
        self.arrays = None
        if len(dataset) * self.block_size * 8 * 2 <= in_memory_limit_bytes:
            table = dataset.with_format("numpy", columns=self.columns)
            self.arrays = {c: np.asarray(table[c], dtype=np.int64) for c in self.columns}
            if self.arrays["input_ids"].ndim != 2:
                raise DataError("packed blocks have different lengths; every block must hold exactly block_size tokens")

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, indices: list[int]) -> dict[str, torch.Tensor]:
        if self.arrays is not None:
            batch = {k: torch.from_numpy(v[indices]) for k, v in self.arrays.items()}
        else:
            rows = self.dataset[indices]
            batch = {k: torch.tensor(rows[k], dtype=torch.long) for k in self.columns}
        if "position_ids" not in batch:
            batch["position_ids"] = torch.arange(self.block_size).expand_as(batch["input_ids"]).contiguous()
        return batch

    def max_token_id(self, sample: int = 256) -> int:
        return int(self.get(list(range(min(sample, len(self)))))["input_ids"].max())


def make_labels(input_ids: torch.Tensor, position_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """Next-token labels on packed blocks: a document's first token (position 0, which cannot see the previous
    document) and padding are never targets."""
    labels = input_ids.clone()
    labels[position_ids == 0] = IGNORE_INDEX
    if pad_token_id is not None:
        labels[input_ids == pad_token_id] = IGNORE_INDEX
    return labels


def predicted_token_count(labels: torch.Tensor) -> torch.Tensor:
    return (labels[:, 1:] != IGNORE_INDEX).sum()


class StepBatches(torch.utils.data.Dataset):
    """Micro-batches for this rank, in order, from a global sequence position onwards (map-style: workers can
    prefetch it). The stream is one seeded permutation per epoch; within a step, rank `r` takes micro-batch `m`'s
    slice `[(m * world + r) * micro, ... + micro)`."""

    def __init__(self, blocks: PackedBlocks, *, seed: int, start_sequence: int, num_steps: int, micro: int, accum: int, world: int, rank: int):
        self.blocks, self.seed, self.start = blocks, seed, start_sequence
        self.num_steps, self.micro, self.accum, self.world, self.rank = num_steps, micro, accum, world, rank
        self._epoch, self._perm = None, None

    def __len__(self) -> int:
        return self.num_steps * self.accum

    def _position_to_index(self, position: int) -> int:
        n = len(self.blocks)
        epoch, offset = divmod(position, n)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(n, generator=generator).tolist(), epoch
        return self._perm[offset]

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        step, micro_index = divmod(k, self.accum)
        base = self.start + step * self.micro * self.accum * self.world + (micro_index * self.world + self.rank) * self.micro
        return self.blocks.get([self._position_to_index(p) for p in range(base, base + self.micro)])


def load_training_data(config: DataConfig, accelerator) -> TrainingData:
    """A packed dataset from disk (`dataset_path`), or `prepare_data` on the main process first (cached)."""
    if not config.dataset_path:
        prepared = prepare_data_distributed(config, accelerator)
        return TrainingData(prepared.train, prepared.validation, prepared.tokenizer, str(prepared.tokenizer_dir),
                            dict(prepared.manifest or {}))
    try:
        splits = load_from_disk(config.dataset_path)
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"dataset_path {config.dataset_path} is not a saved DatasetDict ({err}); write it with DatasetDict.save_to_disk") from None
    if missing := [s for s in ("train", "validation") if s not in splits]:
        raise DataError(f"dataset_path {config.dataset_path} lacks split(s) {missing}; it needs train and validation")
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_path)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot load tokenizer {config.tokenizer_path} ({str(err).splitlines()[0]}); pass a tokenizer folder") from None
    return TrainingData(splits["train"], splits["validation"], tokenizer, config.tokenizer_path, {"dataset_path": config.dataset_path})
