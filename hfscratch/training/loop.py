"""The pretraining loop on Accelerate primitives.

What it guarantees, and how:
* Token-weighted loss across micro-batches and ranks: every micro-batch contributes the *sum* of its
  token NLLs divided by the global count of predicted tokens in the optimizer step (all-reduced before
  the first forward), times the world size because DDP averages gradients over ranks. Accumulating 4 x 2
  sequences, 2 ranks x 4 sequences or 1 x 8 sequences gives the same gradient.
* Exact resume: the data order is a function of (seed, epoch) only, and a checkpoint stores how many
  sequences were consumed; model/optimizer/scheduler/RNG come from `accelerate save_state`.
* Packed blocks keep documents apart through restarting `position_ids` (the model builds a document-
  aware causal mask from them); the first token of each document is not predicted from the previous one.
* Stability: NaN/Inf and spikes skip the update (`stability.py`); checkpoints never hold NaN.

Accelerate's `accumulate()` / prepared dataloaders are not used: the loop does its own accumulation
(`no_sync` on all but the last micro-batch) and its own rank sharding, because token weighting needs the
global token count up front and exact resume needs the data position in sequences, not batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..model_card import write_model_card
from ..modeling_hfscratch import HfscratchForCausalLM
from . import checkpoint as ckpt
from .config import MODEL_PRESETS, DataArguments, ModelArguments, TrainingArguments, flat_config, plan_batches
from .metrics import bits_per_byte, flops_per_token, memory_stats, mfu, peak_flops_per_device
from .optim import build_optimizer, build_scheduler
from .plots import plot_loss_curve
from .stability import SpikeDetector, StepVerdict

RUN_MARKER = "run_config.json"
IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------- data


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
        self.has_positions = "position_ids" in dataset.column_names
        self.block_size = len(dataset[0]["input_ids"])
        self.arrays = None
        if len(dataset) * self.block_size * 8 * 2 <= in_memory_limit_bytes:
            columns = ["input_ids"] + (["position_ids"] if self.has_positions else [])
            table = dataset.with_format("numpy", columns=columns)
            self.arrays = {c: np.asarray(table[c], dtype=np.int64) for c in columns}
            if self.arrays["input_ids"].ndim != 2:
                raise DataError("packed blocks have different lengths; every block must hold exactly block_size tokens")

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, indices: list[int]) -> dict[str, torch.Tensor]:
        if self.arrays is not None:
            batch = {k: torch.from_numpy(v[indices]) for k, v in self.arrays.items()}
        else:
            rows = self.dataset[indices]
            batch = {k: torch.tensor(rows[k], dtype=torch.long) for k in (["input_ids", "position_ids"] if self.has_positions else ["input_ids"])}
        if "position_ids" not in batch:
            batch["position_ids"] = torch.arange(self.block_size).expand_as(batch["input_ids"]).contiguous()
        return batch

    def max_token_id(self, sample: int = 256) -> int:
        return int(self.get(list(range(min(sample, len(self)))))["input_ids"].max())


def make_labels(input_ids: torch.Tensor, position_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """Labels for next-token prediction on packed blocks.

    A token at position 0 starts a new document: under the document mask it cannot see the previous
    document, so predicting it from there would be noise; padding is never a target.
    """
    labels = input_ids.clone()
    labels[position_ids == 0] = IGNORE_INDEX
    if pad_token_id is not None:
        labels[input_ids == pad_token_id] = IGNORE_INDEX
    return labels


def predicted_token_count(labels: torch.Tensor) -> torch.Tensor:
    return (labels[:, 1:] != IGNORE_INDEX).sum()


class StepBatches(torch.utils.data.Dataset):
    """Micro-batches for this rank, in order, from a global sequence position onwards.

    The global stream of sequence indices is one seeded permutation per epoch, concatenated. Step `s`
    takes the next `sequences_per_step` of them; rank `r` takes micro-batch `m`'s slice
    `[(m * world + r) * micro, ... + micro)`. Being a map-style dataset, a DataLoader can prefetch it with
    workers and the position is just an integer.
    """

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


# ---------------------------------------------------------------------------------------------- model


def _round_up(n: int, multiple: int) -> int:
    return ((n + multiple - 1) // multiple) * multiple


def build_model(model_args: ModelArguments, tokenizer, block_size: int):
    """A fresh `HfscratchForCausalLM` from a preset + overrides, or `init_from` a saved folder."""
    from transformers import AutoModelForCausalLM

    from .. import HfscratchConfig

    tokenizer_size = len(tokenizer)
    if model_args.init_from:
        path = Path(model_args.init_from)
        if not (path / "config.json").is_file():
            raise ConfigError(f"init_from {path} is not a save_pretrained folder (no config.json); pass a model folder")
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=model_args.attn_implementation, dtype=torch.float32)
        config = model.config
    else:
        preset = dict(MODEL_PRESETS[model_args.model_size])
        style = model_args.architecture or preset.pop("style", "llama")
        preset.pop("style", None)
        overrides = {
            name: getattr(model_args, name)
            for name in (
                "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "max_position_embeddings", "position_embedding_type", "norm_type", "mlp_type", "qk_norm", "tie_word_embeddings",
                "initializer_range",
            )
            if getattr(model_args, name) is not None
        }
        if model_args.num_attention_heads is not None and model_args.num_key_value_heads is None:
            overrides["num_key_value_heads"] = model_args.num_attention_heads
        rope_theta = model_args.rope_theta or preset.pop("rope_theta", None)
        preset.pop("rope_theta", None)
        kwargs = {**preset, **overrides}
        if rope_theta is not None:
            kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": float(rope_theta)}
        if model_args.model_vocab_size is not None:
            if model_args.model_vocab_size < tokenizer_size:
                raise ConfigError(
                    f"model_vocab_size {model_args.model_vocab_size} is smaller than the tokenizer's {tokenizer_size} tokens; "
                    "raise model_vocab_size or drop it (it defaults to the tokenizer size)"
                )
            vocab = model_args.model_vocab_size
        else:
            vocab = _round_up(tokenizer_size, model_args.pad_vocab_to_multiple_of)
        kwargs.update(
            vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
        )
        try:
            config = HfscratchConfig.gpt2_style(**kwargs) if style == "gpt2" else HfscratchConfig(**kwargs)
        except ValueError as err:
            raise ConfigError(f"invalid model configuration: {err}") from None
        model = HfscratchForCausalLM._from_config(config, attn_implementation=model_args.attn_implementation, dtype=torch.float32)
    if config.vocab_size < tokenizer_size:
        raise ConfigError(
            f"tokenizer has {tokenizer_size} tokens but the model's vocab_size is {config.vocab_size}; use the tokenizer the model was trained with"
        )
    if block_size > config.max_position_embeddings:
        raise ConfigError(
            f"block_size {block_size} exceeds the model's max_position_embeddings {config.max_position_embeddings}; "
            "lower block_size or raise max_position_embeddings"
        )
    return model


# ---------------------------------------------------------------------------------------------- loss


def compute_token_losses(model, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor, z_loss: float = 0.0):
    """(sum of token NLLs, sum of z-loss terms) over the predicted tokens of one micro-batch, in fp32."""
    inner = getattr(model, "module", model)  # DDP / DeepSpeed wrappers, then torch.compile's
    if z_loss == 0 and isinstance(getattr(inner, "_orig_mod", inner), HfscratchForCausalLM):
        # The model's chunked loss never builds the (tokens x vocab) logits: the step's biggest tensor and,
        # for small models, much of its time. Dividing by one item makes the returned loss the plain sum.
        one = torch.ones((), device=input_ids.device)
        out = model(input_ids=input_ids, position_ids=position_ids, labels=labels, use_cache=False, skip_logits=True, num_items_in_batch=one)
        return out.loss, out.loss.new_zeros(())
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    vocab = shift_logits.shape[-1]
    nll = F.cross_entropy(shift_logits.reshape(-1, vocab), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    if z_loss > 0:
        # PaLM's auxiliary loss: keeps log Z near 0 so logits do not drift (a common bf16 instability).
        mask = (shift_labels != IGNORE_INDEX).float()
        z = z_loss * (torch.logsumexp(shift_logits, dim=-1).pow(2) * mask).sum()
    else:
        z = nll.new_zeros(())
    return nll, z


# ---------------------------------------------------------------------------------------------- helpers


def _print(accelerator, *args) -> None:
    if accelerator.is_main_process:
        print(*args, flush=True)


def _warn_on_silent_fallback(accelerator) -> None:
    """Accelerate drops FSDP/DeepSpeed without a word when it cannot use them (CPU): say it loudly once."""
    from accelerate.utils import DistributedType

    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
    wants_ds = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true")
    if wants_fsdp and accelerator.distributed_type != DistributedType.FSDP:
        _print(accelerator, f"WARNING: FSDP was requested but Accelerate is running {accelerator.distributed_type.value} on {accelerator.device.type} (FSDP needs GPUs): every process holds the full model.")
    if wants_ds and accelerator.distributed_type != DistributedType.DEEPSPEED:
        _print(
            accelerator,
            f"WARNING: DeepSpeed was requested but Accelerate is running {accelerator.distributed_type.value} on {accelerator.device.type}: "
            "no ZeRO sharding is applied (DeepSpeed needs a distributed launch, and on CPU no --cpu / ACCELERATE_USE_CPU).",
        )


def _deepspeed_on_cpu_requested() -> bool:
    """A distributed DeepSpeed launch (accelerate launch / torchrun) on a machine without a GPU.

    Accelerate then asks DeepSpeed for the process group with backend None, finds no device backend and
    quietly runs one process. DeepSpeed itself runs on CPU (its CPU accelerator, torch optimizers, no
    compiled ops), so the loop hands it the gloo backend explicitly.
    """
    wants_ds = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true")
    forced_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true")
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return wants_ds and launched and not forced_cpu and not has_accelerator


def _skip_deepspeed_shm_comm_op() -> None:
    """Keep DeepSpeed on CPU free of compiled ops.

    Its CPU communication backend JIT-compiles a shared-memory all-reduce kernel (minutes on a small CPU,
    and a crash without a C++ toolchain) that only its inference all-reduce uses; training collectives go
    through torch.distributed (gloo) either way. `deepspeed.ops.__compatible_ops__` is the switch DeepSpeed
    reads before building it (a module-level dict that stays edited).
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _quiet_library_progress_bars() -> None:
    """One progress bar (ours): transformers' per-save shard bars and accelerate's tied-weight notes are noise here."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    logging.getLogger("accelerate.checkpointing").setLevel(logging.ERROR)


def prepare_output_dir(output_dir: Path, args: TrainingArguments, is_main: bool) -> None:
    """Refuse to mix two runs in one folder; `--overwrite_output_dir` removes only this tool's artifacts."""
    holds_run = (output_dir / RUN_MARKER).exists() or (output_dir / ckpt.CHECKPOINT_DIR).exists() or (output_dir / "final").exists()
    if args.resume_from_checkpoint:
        return
    if holds_run and not args.overwrite_output_dir:
        raise ConfigError(
            f"{output_dir} already holds a run; pass --overwrite_output_dir to replace it, "
            f"--resume_from_checkpoint latest to continue it, or --run_name NEW for a separate run"
        )
    if holds_run and is_main:
        for name in (ckpt.CHECKPOINT_DIR, "final", ".tmp-final", "logs"):
            shutil.rmtree(output_dir / name, ignore_errors=True)
        for name in (RUN_MARKER, "metrics.json"):
            (output_dir / name).unlink(missing_ok=True)


def _resolve_mixed_precision(value: str) -> str:
    if value == "fp32":
        return "no"
    if value != "auto":
        return value
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def load_training_data(data_args: DataArguments, accelerator, max_position_embeddings: int | None) -> TrainingData:
    """A packed dataset from disk, or `hfscratch.data.prepare.prepare_data` (main process first; cached)."""
    if data_args.dataset_path:
        from datasets import load_from_disk
        from transformers import AutoTokenizer

        try:
            splits = load_from_disk(data_args.dataset_path)
        except (FileNotFoundError, ValueError) as err:
            raise DataError(f"dataset_path {data_args.dataset_path} is not a saved DatasetDict ({err}); write it with DatasetDict.save_to_disk") from None
        missing = [s for s in ("train", "validation") if s not in splits]
        if missing:
            raise DataError(f"dataset_path {data_args.dataset_path} lacks split(s) {missing}; it needs train and validation")
        try:
            tokenizer = AutoTokenizer.from_pretrained(data_args.tokenizer_path)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot load tokenizer {data_args.tokenizer_path} ({str(err).splitlines()[0]}); pass a tokenizer folder") from None
        return TrainingData(splits["train"], splits["validation"], tokenizer, data_args.tokenizer_path, {"dataset_path": data_args.dataset_path})
    try:
        from ..data.prepare import prepare_data
    except ImportError as err:
        raise DataError(f"data preparation is unavailable ({err}); install hfscratch fully or pass --dataset_path") from None
    config = data_args.to_data_config()
    with accelerator.main_process_first():
        prepared = prepare_data(config, max_position_embeddings=max_position_embeddings)
    return TrainingData(prepared.train, prepared.validation, prepared.tokenizer, str(prepared.tokenizer_dir), dict(prepared.manifest or {}))


# ---------------------------------------------------------------------------------------------- trainer


@dataclass
class PretrainResult:
    output_dir: Path
    final_dir: Path | None
    metrics: dict[str, float]
    loss_history: list[tuple[int, float | None]]
    validation_history: list[tuple[int, float]]
    sample: str
    skipped_steps: list[tuple[int, str]]
    is_main_process: bool = True


class Pretrainer:
    def __init__(self, model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments, data: TrainingData | None = None):
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, set_seed

        self.model_args, self.data_args, self.args = model_args, data_args, args
        self.output_dir = Path(args.resolve_output_dir())
        if args.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.mixed_precision = _resolve_mixed_precision(args.mixed_precision)
        from accelerate.state import AcceleratorState

        state = AcceleratorState._shared_state
        if state and str(state.get("_mixed_precision", self.mixed_precision)) != self.mixed_precision:
            # Accelerate keeps one process-wide state and refuses a second run (a notebook, a sweep) with another
            # precision; clearing it keeps the process group (PartialState) and is what Accelerate's tests do.
            AcceleratorState._reset_state(reset_partial_state=False)
        deepspeed_on_cpu = _deepspeed_on_cpu_requested()
        if deepspeed_on_cpu:
            _skip_deepspeed_shm_comm_op()
        self.accelerator = Accelerator(
            mixed_precision=self.mixed_precision,
            log_with=args.trackers() or None,
            project_dir=str(self.output_dir / "logs"),  # tensorboard: <output_dir>/logs/<run_name>
            step_scheduler_with_optimizer=False,  # we step the schedule once per update ourselves
            dataloader_config=DataLoaderConfiguration(split_batches=False),
            kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if deepspeed_on_cpu else None,
        )
        acc = self.accelerator
        self.deepspeed = acc.distributed_type.value == "DEEPSPEED"
        _quiet_library_progress_bars()
        _warn_on_silent_fallback(acc)
        prepare_output_dir(self.output_dir, args, acc.is_main_process)
        acc.wait_for_everyone()
        set_seed(args.seed)

        preset_positions = None if model_args.init_from else (model_args.max_position_embeddings or MODEL_PRESETS[model_args.model_size]["max_position_embeddings"])
        self.data = data if data is not None else load_training_data(data_args, acc, preset_positions)
        self.tokenizer = self.data.tokenizer
        self.train_blocks, self.val_blocks = PackedBlocks(self.data.train), PackedBlocks(self.data.validation)
        self.block_size = self.train_blocks.block_size
        if self.val_blocks.block_size != self.block_size:
            raise DataError(f"train blocks hold {self.block_size} tokens but validation blocks {self.val_blocks.block_size}; prepare both with one block_size")
        if data_args.dataset_path is None and data is None and self.block_size != data_args.block_size:
            _print(acc, f"note: prepared blocks hold {self.block_size} tokens (block_size {data_args.block_size} requested)")

        set_seed(args.seed)  # the same initial weights whatever data preparation consumed
        with self._zero3_init_unless_asked():
            self.model = build_model(model_args, self.tokenizer, self.block_size)
        max_id = max(self.train_blocks.max_token_id(), self.val_blocks.max_token_id())
        if max_id >= self.model.config.vocab_size or max_id >= len(self.tokenizer):
            raise ConfigError(
                f"the data holds token id {max_id} but the tokenizer has {len(self.tokenizer)} tokens and the model "
                f"{self.model.config.vocab_size}; the data was tokenized with another tokenizer: re-prepare it or pass the matching tokenizer_path"
            )
        if args.gradient_checkpointing:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.plan = plan_batches(args, acc.num_processes, self.block_size, len(self.train_blocks))

        if self.deepspeed:
            # deepspeed.initialize takes model, optimizer and schedule together; ZeRO then owns the optimizer.
            self._configure_deepspeed()
            optimizer = build_optimizer(self.model, args.learning_rate, args.weight_decay, (args.adam_beta1, args.adam_beta2), args.adam_epsilon)
            scheduler = self._build_scheduler(optimizer)
            self.model, self.optimizer, self.scheduler = acc.prepare(self.model, optimizer, scheduler)
        else:
            self.model = acc.prepare(self.model)  # before the optimizer: FSDP2 shards the parameters it will own
            optimizer = build_optimizer(self.model, args.learning_rate, args.weight_decay, (args.adam_beta1, args.adam_beta2), args.adam_epsilon)
            self.optimizer, self.scheduler = acc.prepare(optimizer, self._build_scheduler(optimizer))
        if args.torch_compile:
            acc.unwrap_model(self.model).compile()  # in place: state_dict keys and saving are unchanged

        self.detector = SpikeDetector(args.spike_zscore, args.spike_warmup_steps, args.max_consecutive_skips)
        self.step = 0
        self.sequences_consumed = 0
        self.tokens_seen = 0
        self.train_time = 0.0
        self.loss_history: list[tuple[int, float | None]] = []
        self.validation_history: list[tuple[int, float]] = []
        self.skipped_steps: list[tuple[int, str]] = []
        self.last_eval: dict[str, float] = {}
        self.last_sample = ""
        config = self.unwrapped.config
        self.flops_per_token = flops_per_token(config, self.block_size)
        self.peak_flops, self.peak_source = peak_flops_per_device(acc.device, self.mixed_precision, args.peak_flops)
        self._val_bytes: int | None = None

    @property
    def unwrapped(self):
        if self.deepspeed:
            return self.accelerator.unwrap_model(self.model)
        # Accelerate's unwrap_model imports DeepSpeed whenever it is installed (to check for its engine), and that
        # import logs a warning on machines without CUDA; outside DeepSpeed only DDP wraps the model here (FSDP2
        # and `.compile()` keep the module itself).
        return self.model.module if isinstance(self.model, torch.nn.parallel.DistributedDataParallel) else self.model

    def _build_scheduler(self, optimizer):
        args = self.args
        return build_scheduler(
            optimizer, max_steps=self.plan.max_steps, warmup_steps=self.plan.warmup_steps, schedule=args.lr_schedule,
            min_lr_ratio=args.min_lr_ratio, wsd_decay_ratio=args.wsd_decay_ratio,
        )

    @contextlib.contextmanager
    def _zero3_init_unless_asked(self):
        """Build the model whole unless the DeepSpeed config asks for `zero3_init_flag`.

        Accelerate registers the ZeRO-3 config with transformers whatever that flag says, and transformers then
        builds every model partitioned (deepspeed.zero.Init, initialised on rank 0 with another RNG order).
        Built whole, ZeRO-3 starts from the same weights as 1 process or DDP; the flag is for models too big
        to build whole on one rank.
        """
        plugin = self.accelerator.state.deepspeed_plugin if self.deepspeed else None
        if plugin is None or plugin.zero3_init_flag or plugin.deepspeed_config.get("zero_optimization", {}).get("stage") != 3:
            yield
            return
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            plugin.set_deepspeed_weakref()  # generate() and saving under ZeRO-3 need it back

    def _configure_deepspeed(self) -> None:
        """Batch sizes, accumulation and clipping come from the recipe (one source of truth), not the DeepSpeed config.

        The loop feeds DeepSpeed `micro_batch_size` sequences per backward and marks the accumulation boundary
        itself; DeepSpeed clips and steps inside `engine.step()`. ZeRO-3 must gather full weights at save time
        because every checkpoint holds a `save_pretrained` folder.
        """
        acc, plan = self.accelerator, self.plan
        config = acc.state.deepspeed_plugin.deepspeed_config
        wanted = {
            "train_micro_batch_size_per_gpu": plan.micro_batch_size, "gradient_accumulation_steps": plan.gradient_accumulation_steps,
            "train_batch_size": plan.sequences_per_step, "gradient_clipping": float(self.args.max_grad_norm),
        }
        for key, value in wanted.items():
            if config.get(key, "auto") not in ("auto", value):
                _print(acc, f"note: DeepSpeed {key} {config[key]} replaced by the recipe's {value}")
            config[key] = value
        zero = config.setdefault("zero_optimization", {})
        if zero.get("stage") == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        acc.gradient_accumulation_steps = plan.gradient_accumulation_steps  # what Accelerate checks against the config

    # ------------------------------------------------------------------ state

    def trainer_state(self) -> dict:
        return {
            "step": self.step, "sequences_consumed": self.sequences_consumed, "tokens_seen": self.tokens_seen,
            "train_time_s": self.train_time, "block_size": self.block_size, "seed": self.args.seed,
            "max_steps": self.plan.max_steps, "sequences_per_step": self.plan.sequences_per_step,
            "loss_history": self.loss_history, "validation_history": self.validation_history,
            "skipped_steps": self.skipped_steps, "stability": self.detector.state_dict(), "last_eval": self.last_eval,
        }

    def restore(self, path: Path) -> None:
        state = ckpt.load_checkpoint(self.accelerator, path)
        if state.get("block_size") != self.block_size or state.get("seed") != self.args.seed:
            raise ConfigError(
                f"checkpoint {path} was trained with block_size {state.get('block_size')} and seed {state.get('seed')}, this run uses "
                f"{self.block_size} and {self.args.seed}; resume with the same data and seed"
            )
        self.step, self.sequences_consumed, self.tokens_seen = state["step"], state["sequences_consumed"], state["tokens_seen"]
        self.train_time = state.get("train_time_s", 0.0)
        self.loss_history = [tuple(x) for x in state.get("loss_history", [])]
        self.validation_history = [tuple(x) for x in state.get("validation_history", [])]
        self.skipped_steps = [tuple(x) for x in state.get("skipped_steps", [])]
        self.last_eval = state.get("last_eval", {})
        self.detector.load_state_dict(state["stability"])
        _print(self.accelerator, f"resumed from {path} at step {self.step} ({self.tokens_seen:,} tokens seen)")

    # ------------------------------------------------------------------ evaluation

    def _val_shard(self) -> list[list[int]]:
        acc, micro = self.accelerator, self.plan.micro_batch_size
        limit = len(self.val_blocks)
        if self.args.eval_max_batches is not None:
            # A fixed number of sequences whatever the world size, so 1 and N processes report the same metric.
            limit = min(limit, self.args.eval_max_batches * micro)
        per_rank = limit // acc.num_processes
        if per_rank == 0:
            raise DataError(f"the validation split has {len(self.val_blocks)} blocks, fewer than the {acc.num_processes} processes; raise validation_fraction")
        mine = list(range(acc.process_index * per_rank, (acc.process_index + 1) * per_rank))
        return [mine[i : i + micro] for i in range(0, per_rank, micro)]

    def _count_bytes(self, batches: list[list[int]]) -> int:
        """UTF-8 bytes of the predicted validation tokens (special tokens decode to nothing)."""
        total = 0
        for indices in batches:
            batch = self.val_blocks.get(indices)
            labels = make_labels(batch["input_ids"], batch["position_ids"], self.tokenizer.pad_token_id)
            for row in labels[:, 1:]:
                ids = row[row != IGNORE_INDEX].tolist()
                total += len(self.tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8"))
        return total

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        acc = self.accelerator
        batches = self._val_shard()
        if self._val_bytes is None:
            local_bytes = torch.tensor([float(self._count_bytes(batches))], device=acc.device, dtype=torch.float64)
            self._val_bytes = int(acc.reduce(local_bytes, reduction="sum").item())
        self.model.eval()
        sums = torch.zeros(2, device=acc.device, dtype=torch.float64)
        for indices in batches:
            batch = self.val_blocks.get(indices)
            labels = make_labels(batch["input_ids"], batch["position_ids"], self.tokenizer.pad_token_id)
            with acc.autocast():
                nll, _ = compute_token_losses(self.model, batch["input_ids"].to(acc.device), batch["position_ids"].to(acc.device), labels.to(acc.device))
            sums += torch.stack([nll.double(), predicted_token_count(labels).double().to(acc.device)])
        self.model.train()
        sums = acc.reduce(sums, reduction="sum")
        nll_total, tokens = sums[0].item(), max(1.0, sums[1].item())
        loss = nll_total / tokens
        return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0)), "eval/bits_per_byte": bits_per_byte(nll_total, self._val_bytes), "eval/tokens": tokens}

    @torch.no_grad()
    def sample(self) -> str:
        """A short sampled continuation of `sample_prompt`, with its own RNG so training randomness is untouched."""
        acc, tok = self.accelerator, self.tokenizer
        ids = tok(self.args.sample_prompt, add_special_tokens=False)["input_ids"] if self.args.sample_prompt else []
        if tok.bos_token_id is not None:
            ids = [tok.bos_token_id] + ids
        if not ids:
            return ""
        model = self.unwrapped
        model.eval()
        devices = [acc.device] if acc.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), acc.autocast():
            torch.manual_seed(self.args.seed)
            out = model.generate(
                torch.tensor([ids], device=acc.device), max_new_tokens=self.args.sample_max_new_tokens, do_sample=True, temperature=0.8, top_k=50,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
            )
        model.train()
        return tok.decode(out[0], skip_special_tokens=True)

    def _run_eval(self, pbar) -> None:
        metrics = self.evaluate()
        self.last_eval = metrics
        self.validation_history.append((self.step, metrics["eval/loss"]))
        self.last_sample = self.sample()
        self.accelerator.log({**metrics, "eval/sample": self.last_sample}, step=self.step)
        message = f"step {self.step}: val loss {metrics['eval/loss']:.4f}  ppl {metrics['eval/perplexity']:.2f}  bpb {metrics['eval/bits_per_byte']:.4f}"
        if self.accelerator.is_main_process:
            (pbar.write if pbar else print)(message + (f"\n  sample: {self.last_sample[:200]!r}" if self.last_sample else ""))

    def _run_harness(self, pbar) -> None:
        from ..evaluation import run_training_eval  # lazily: lm-eval is heavy and optional here

        results = run_training_eval(
            self.unwrapped, self.tokenizer, tasks=list(self.args.eval_harness_tasks), limit=self.args.eval_harness_limit,
            data_dir=self.args.eval_harness_data_dir, step=self.step, tokens=self.tokens_seen, run_dir=str(self.output_dir),
        )
        self.accelerator.log({f"harness/{k}": float(v) for k, v in results.items()}, step=self.step)
        if self.accelerator.is_main_process and pbar:
            pbar.write(f"step {self.step}: " + "  ".join(f"{k} {v:.4f}" for k, v in results.items()))

    # ------------------------------------------------------------------ training

    def _save(self, pbar) -> Path:
        if self.args.push_to_hub and self.accelerator.is_main_process:
            from ..hub import wait_for_pushes

            # Saving rotates old checkpoints away (keep_last_k): the previous upload must finish reading first.
            wait_for_pushes()
        path = ckpt.save_checkpoint(self.accelerator, self.model, self.tokenizer, self.output_dir, self.step, self.trainer_state(), self.args.keep_last_k)
        if self.accelerator.is_main_process:
            (pbar.write if pbar else print)(f"step {self.step}: checkpoint saved to {path}")
            if self.args.push_to_hub:
                from ..hub import push_checkpoint

                push_checkpoint(str(path / ckpt.HF_SUBDIR), self.args.hub_model_id, self.step, self.tokens_seen, private=self.args.hub_private)
        return path

    def _write_run_marker(self) -> None:
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            config = {
                "model": dataclasses.asdict(self.model_args), "data": dataclasses.asdict(self.data_args), "training": dataclasses.asdict(self.args),
                "plan": dataclasses.asdict(self.plan), "world_size": self.accelerator.num_processes, "model_config": self.unwrapped.config.to_dict(),
            }
            (self.output_dir / RUN_MARKER).write_text(json.dumps(config, indent=1, default=str), encoding="utf-8")

    def train(self) -> PretrainResult:
        from tqdm.auto import tqdm

        acc, args, plan = self.accelerator, self.args, self.plan
        if args.resume_from_checkpoint:
            self.restore(ckpt.resolve_checkpoint(args.resume_from_checkpoint, self.output_dir))
        self._write_run_marker()
        if args.trackers():
            acc.init_trackers(args.run_name, config={k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in flat_config(self.model_args, self.data_args, args).items() if v is not None})
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in self.unwrapped.parameters())  # ZeRO-3 leaves empty placeholders
        _print(
            acc,
            f"model: {n_params / 1e6:.2f}M parameters | {plan.max_steps} steps x {plan.tokens_per_step:,} tokens "
            f"(micro {plan.micro_batch_size} x accum {plan.gradient_accumulation_steps} x {plan.world_size} proc x block {self.block_size}) "
            f"= {plan.max_steps * plan.tokens_per_step:,} tokens | precision {self.mixed_precision} | {acc.device.type} | MFU peak: {self.peak_source}",
        )
        remaining = plan.max_steps - self.step
        loader = torch.utils.data.DataLoader(
            StepBatches(self.train_blocks, seed=args.seed, start_sequence=self.sequences_consumed, num_steps=max(0, remaining),
                        micro=plan.micro_batch_size, accum=plan.gradient_accumulation_steps, world=acc.num_processes, rank=acc.process_index),
            batch_size=None, shuffle=False, num_workers=args.dataloader_num_workers, pin_memory=acc.device.type == "cuda",
            persistent_workers=False,
        )
        batches = iter(loader)
        pbar = tqdm(total=plan.max_steps, initial=self.step, desc="pretrain", unit="step", dynamic_ncols=True, disable=not acc.is_main_process, file=sys.stdout)
        log_tokens, log_time, log_losses = 0, 0.0, []
        final_dir = None
        self.model.train()
        try:
            while self.step < plan.max_steps:
                start = time.perf_counter()
                loss, grad_norm, verdict, lr = self._train_step(batches)
                elapsed = time.perf_counter() - start
                self.step += 1
                self.sequences_consumed += plan.sequences_per_step
                self.tokens_seen += plan.tokens_per_step
                self.train_time += elapsed
                log_tokens += plan.tokens_per_step
                log_time += elapsed
                self.loss_history.append((self.step, loss if math.isfinite(loss) else None))
                if verdict.skip:
                    self.skipped_steps.append((self.step, verdict.reason))
                    acc.log({"train/skipped_steps": len(self.skipped_steps)}, step=self.step)
                    if acc.is_main_process:
                        pbar.write(f"step {self.step}: skipped the update: {verdict.reason}")
                else:
                    log_losses.append(loss)
                pbar.update(1)
                if self.step % args.logging_steps == 0 or self.step == plan.max_steps:
                    tokens_per_second = log_tokens / max(log_time, 1e-9)
                    values = {
                        "train/loss": sum(log_losses) / len(log_losses) if log_losses else float("nan"), "train/lr": lr,
                        "train/grad_norm": grad_norm, "train/tokens_per_second": tokens_per_second, "train/tokens_seen": self.tokens_seen,
                        "train/skipped_steps": len(self.skipped_steps), **memory_stats(acc.device),
                    }
                    utilisation = mfu(tokens_per_second, self.flops_per_token, self.peak_flops, acc.num_processes)
                    if utilisation is not None:
                        values["train/mfu"] = utilisation
                    acc.log(values, step=self.step)
                    pbar.set_postfix(loss=f"{values['train/loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_second:,.0f}", **({"mfu": f"{utilisation:.1%}"} if utilisation else {}))
                    log_tokens, log_time, log_losses = 0, 0.0, []
                if args.eval_steps and self.step % args.eval_steps == 0 and self.step < plan.max_steps:
                    self._run_eval(pbar)
                if args.eval_harness_tasks and args.eval_harness_steps and self.step % args.eval_harness_steps == 0:
                    self._run_harness(pbar)
                if args.save_steps and self.step % args.save_steps == 0 and self.step < plan.max_steps:
                    self._save(pbar)
            if not self.validation_history or self.validation_history[-1][0] != self.step:
                self._run_eval(pbar)
            elif not self.last_sample:
                self.last_sample = self.sample()
            self._save(pbar)
            final_dir = self.save_final()
        finally:
            pbar.close()
            acc.end_training()
        return PretrainResult(
            self.output_dir, final_dir, self.final_metrics(), self.loss_history, self.validation_history, self.last_sample, self.skipped_steps,
            acc.is_main_process,
        )

    def _train_step(self, batches):
        acc, plan, args = self.accelerator, self.plan, self.args
        pad = self.tokenizer.pad_token_id
        micro_batches = []
        for _ in range(plan.gradient_accumulation_steps):
            batch = next(batches)
            batch["labels"] = make_labels(batch["input_ids"], batch["position_ids"], pad)
            micro_batches.append({k: v.to(acc.device, non_blocking=True) for k, v in batch.items()})
        local_tokens = sum(predicted_token_count(b["labels"]) for b in micro_batches).to(acc.device, torch.float32)
        global_tokens = acc.reduce(local_tokens.clone(), reduction="sum") if acc.num_processes > 1 else local_tokens
        # DDP/FSDP average gradients over ranks; multiplying by the world size turns that into the global sum.
        scale = acc.num_processes / global_tokens.clamp(min=1.0)
        if self.deepspeed:
            scale = scale * plan.gradient_accumulation_steps  # DeepSpeed divides by its accumulation steps itself
        nll_total = torch.zeros((), device=acc.device, dtype=torch.float32)
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            if self.deepspeed:
                # The engine reduces the gradients at the boundary (ZeRO-2/3 have no no_sync); the step comes below.
                self.model.set_gradient_accumulation_boundary(last)
                sync = contextlib.nullcontext()
            else:
                sync = contextlib.nullcontext() if last or acc.num_processes == 1 else acc.no_sync(self.model)
            with sync:
                with acc.autocast():
                    nll, z = compute_token_losses(self.model, batch["input_ids"], batch["position_ids"], batch["labels"], args.z_loss)
                if self.deepspeed:
                    self.model.backward((nll + z) * scale)
                else:
                    acc.backward((nll + z) * scale)
            nll_total += nll.detach().float()
        if acc.num_processes > 1:
            nll_total = acc.reduce(nll_total, reduction="sum")
        loss = (nll_total / global_tokens.clamp(min=1.0)).item()
        if self.deepspeed:
            return self._deepspeed_update(loss)
        max_norm = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
        grad_norm = float(grad_norm) if grad_norm is not None else None
        verdict = self.detector.check(loss, grad_norm, self.step + 1)
        lr = self.scheduler.get_last_lr()[0]
        if not verdict.skip:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # after a skipped update torch warns that the scheduler stepped alone: intended
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()  # the schedule follows the step count, skipped or not
        return loss, (grad_norm if grad_norm is not None else float("nan")), verdict, lr

    def _deepspeed_update(self, loss: float):
        """DeepSpeed's `engine.step()` clips, checks the gradients and updates in one call.

        The gradient norm is only known inside that call, so the stability verdict comes after it: non-finite
        gradients are skipped by DeepSpeed itself (its overflow check leaves weights and Adam moments as they
        were); a finite loss or grad-norm spike is logged and counted towards `max_consecutive_skips`, but the
        update it judged has already been applied.
        """
        engine = self.model
        lr = self.scheduler.get_last_lr()[0]
        engine.step()
        applied = engine.was_step_applied()
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        verdict = self.detector.check(loss, grad_norm, self.step + 1)
        if verdict.skip and applied:
            _print(self.accelerator, f"step {self.step + 1}: {verdict.reason}; DeepSpeed had already applied this update")
            verdict = StepVerdict(False, "")
        elif not applied and not verdict.skip:
            verdict = StepVerdict(True, f"DeepSpeed skipped the update (non-finite gradients, norm {grad_norm})")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
        return loss, (grad_norm if grad_norm is not None else float("nan")), verdict, lr

    # ------------------------------------------------------------------ final artifacts

    def final_metrics(self) -> dict[str, float]:
        metrics = {k.replace("eval/", "val_"): v for k, v in self.last_eval.items()}
        finite = [v for _, v in self.loss_history if v is not None]
        metrics.update(
            train_loss=finite[-1] if finite else float("nan"), steps=self.step, tokens_seen=self.tokens_seen,
            train_time_s=round(self.train_time, 2), skipped_steps=len(self.skipped_steps),
            tokens_per_second=round(self.tokens_seen / max(self.train_time, 1e-9), 1),
        )
        return metrics

    def save_final(self) -> Path | None:
        """`<output_dir>/final/`: save_pretrained + tokenizer + generation config + model card + loss curve."""
        acc = self.accelerator
        final, tmp = self.output_dir / "final", self.output_dir / ".tmp-final"
        state_dict = acc.get_state_dict(self.model)
        if not acc.is_main_process:
            acc.wait_for_everyone()
            return final
        model = self.unwrapped
        gen = model.generation_config
        gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        gen.do_sample, gen.temperature, gen.top_k, gen.max_new_tokens = True, 0.8, 50, 256
        metrics = self.final_metrics()
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp, state_dict=ckpt.drop_tied_copies(model, state_dict), safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            png = plot_loss_curve(
                [(s, v) for s, v in self.loss_history if v is not None], self.validation_history, tmp / "loss_curve.png",
                title=f"{self.args.run_name}: {self.tokens_seen:,} tokens", tokens_per_step=self.plan.tokens_per_step,
            )
            (tmp / "training_metrics.json").write_text(json.dumps({"metrics": metrics, "loss_history": self.loss_history, "validation_history": self.validation_history, "skipped_steps": self.skipped_steps}, indent=1), encoding="utf-8")
            training_config = {**flat_config(self.model_args, self.data_args, self.args), **{f"plan_{k}": v for k, v in dataclasses.asdict(self.plan).items()}, "world_size": acc.num_processes}
            write_model_card(tmp, training_config=training_config, metrics=metrics, data=card_data_summary(self.data.manifest),
                             loss_curve_png=str(png), extra={"model_name": self.args.run_name, "repo_id": self.args.hub_model_id or f"path/to/{final.name}",
                                                    "sample generation": repr(self.last_sample[:300])})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            (self.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ckpt._disk_error(err, final, (ckpt.list_checkpoints(self.output_dir) or [None])[-1]) from None
        finally:
            acc.wait_for_everyone()
        if self.args.push_to_hub:
            from ..hub import push_folder

            push_folder(str(final), self.args.hub_model_id, private=self.args.hub_private, commit_message=f"final model: {self.tokens_seen:,} tokens", run_as_future=True)
        return final


def card_data_summary(manifest: dict | None) -> dict | None:
    """The facts of a prepared-data manifest a model card reader wants (not the whole manifest)."""
    if not manifest:
        return None
    splits, tokenizer = manifest.get("splits") or {}, manifest.get("tokenizer") or {}
    sources = manifest.get("sources") or []
    summary = {
        "dataset": manifest.get("name"),
        "sources": ", ".join(str(s.get("path", s) if isinstance(s, dict) else s) for s in sources)
        or "embedded synthetic math (hfscratch.data.synthetic_math)",
        "train tokens": f"{splits['train']['tokens']:,}" if "tokens" in splits.get("train", {}) else None,
        "validation tokens": f"{splits['validation']['tokens']:,}" if "tokens" in splits.get("validation", {}) else None,
        "block size": (manifest.get("pack") or {}).get("block_size"),
        "tokenizer": f"byte-level BPE, vocab {tokenizer['vocab_size']}" if "vocab_size" in tokenizer else None,
        "bytes per token (held out)": round(tokenizer["bytes_per_token"], 3) if "bytes_per_token" in tokenizer else None,
    }
    return {k: v for k, v in summary.items() if v is not None}


def pretrain(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments, data: TrainingData | None = None) -> PretrainResult:
    """Run one pretraining job end to end; returns where things went and the final metrics."""
    return Pretrainer(model_args, data_args, training_args, data=data).train()
