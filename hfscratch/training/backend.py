"""The engine under the step, one object per engine so the step never asks which one runs: `AccelerateBackend`
(one process, DDP, FSDP2: the loop clips, steps and skips bad updates itself) or `DeepSpeedBackend` (ZeRO-2/3: the
engine reduces, clips and updates inside `engine.step()`). Also the Accelerator, with its environment workarounds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, DistributedType, InitProcessGroupKwargs
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from transformers import DistributedConfig
from transformers.utils import logging as hf_logging

from ..devices import resolve_dtype
from ..errors import ConfigError
from .checkpoint import drop_tied_copies
from .config import BatchPlan, TrainConfig
from .optim import build_muon_optimizer, build_optimizer, build_scheduler


def print_main(accelerator, *args) -> None:
    if accelerator.is_main_process:
        print(*args, flush=True)


def resolve_mixed_precision(value: str) -> str:
    """"fp32" -> "no"; "auto" -> "bf16" where the device has it (devices.py's rule), else "no"."""
    if value == "auto":
        return "bf16" if resolve_dtype("auto") == torch.bfloat16 else "no"
    return "no" if value == "fp32" else value


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true")


def deepspeed_on_cpu_requested() -> bool:
    """A distributed DeepSpeed launch on a machine without a GPU. Accelerate would then ask for the process group
    with backend None, find no device backend and quietly run one process, so the loop hands DeepSpeed gloo."""
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return _env_flag("ACCELERATE_USE_DEEPSPEED") and launched and not _env_flag("ACCELERATE_USE_CPU") and not has_accelerator


def warn_on_silent_fallback(accelerator) -> None:
    """Accelerate drops FSDP/DeepSpeed without a word when it cannot use them (CPU): say it loudly once."""
    running = f"Accelerate is running {accelerator.distributed_type.value} on {accelerator.device.type}"
    if _env_flag("ACCELERATE_USE_FSDP") and accelerator.distributed_type != DistributedType.FSDP:
        print_main(accelerator, f"WARNING: FSDP was requested but {running} (FSDP needs GPUs): every process holds the full model.")
    if _env_flag("ACCELERATE_USE_DEEPSPEED") and accelerator.distributed_type != DistributedType.DEEPSPEED:
        print_main(accelerator, f"WARNING: DeepSpeed was requested but {running}: no ZeRO sharding is applied "
                   "(DeepSpeed needs a distributed launch, and on CPU no --cpu / ACCELERATE_USE_CPU).")


def create_accelerator(args: TrainConfig, output_dir: Path) -> tuple[Accelerator, str]:
    """The run's Accelerator and its resolved mixed precision ("no", "bf16", "fp16", "fp8")."""
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    mixed_precision = resolve_mixed_precision(args.mixed_precision)
    # fp8: the loop swaps the block linears for torchao's float8 ones (training/fp8.py); Accelerate autocasts the rest
    # to bf16. (Accelerate's own fp8 path needs a CUDA device, and the float8 emulation here runs on any.)
    autocast = "bf16" if mixed_precision == "fp8" else mixed_precision
    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", autocast)) != autocast:
        # Accelerate keeps one process-wide state and refuses a second run (a notebook, a sweep) with another
        # precision; clearing it keeps the process group (PartialState) and is what Accelerate's tests do.
        AcceleratorState._reset_state(reset_partial_state=False)
    if deepspeed_on_cpu := deepspeed_on_cpu_requested():
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce (minutes, or a crash without a C++ toolchain)
        # that only its inference uses; `__compatible_ops__` is the module-level switch it reads before building it.
        import deepspeed.ops  # lazily: DeepSpeed is an optional extra

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    accelerator = Accelerator(  # tensorboard logs go to <output_dir>/logs/<run_name>; the loop steps the schedule itself
        mixed_precision=autocast, log_with=args.trackers() or None, project_dir=str(output_dir / "logs"),
        step_scheduler_with_optimizer=False, dataloader_config=DataLoaderConfiguration(split_batches=False),
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if deepspeed_on_cpu else None,
    )
    # One progress bar (ours): transformers' per-save shard bars and accelerate's tied-weight notes are noise here.
    hf_logging.disable_progress_bar()
    for name in ("accelerate.utils.other", "accelerate.checkpointing"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warn_on_silent_fallback(accelerator)
    return accelerator, mixed_precision


class TrainingBackend:
    """What the step needs from an engine; `prepare` must run before the other methods."""

    name = ""
    # What the engine divides accumulated gradients by on its own; the step's loss weights multiply it back.
    accumulation_divisor = 1

    def __init__(self, accelerator, args: TrainConfig):
        self.accelerator, self.args = accelerator, args
        self.model = self.optimizer = self.scheduler = None

    def model_init_context(self):
        """Where the model is built (some engines partition it as it is created)."""
        return contextlib.nullcontext()

    def shard_model(self, model, staging_dir: Path):
        """The built model as this engine trains it (tensor parallelism re-shards it here); `staging_dir` is free to use."""
        return model

    # Data parallelism: how many different batches a step reads, which one this rank reads, and how many ranks read
    # each (the step's and validation's all-reduced sums count each batch that many times).
    @property
    def data_world(self) -> int:
        return self.accelerator.num_processes

    @property
    def data_rank(self) -> int:
        return self.accelerator.process_index

    replicas = 1

    def gather_state_dict(self) -> dict:
        """The full weights on the main process (every rank must call: FSDP and ZeRO-3 gather here)."""
        return self.accelerator.get_state_dict(self.model)

    def write_pretrained(self, folder: Path, state_dict: dict) -> None:
        """`save_pretrained` of the gathered weights into `folder`; called on every rank, the main one writes."""
        if self.accelerator.is_main_process:
            unwrapped = self.unwrapped_model()
            unwrapped.save_pretrained(folder, state_dict=drop_tied_copies(unwrapped, state_dict), safe_serialization=True)

    def save_state(self, folder: Path) -> None:
        """Everything a resume needs besides the trainer state: weights, optimizer, schedule, RNG (every rank calls)."""
        self.accelerator.save_state(str(folder))

    def load_state(self, folder: Path) -> None:
        self.accelerator.load_state(str(folder))

    def make_optimizer_and_scheduler(self, model, plan: BatchPlan):
        a = self.args
        if a.optimizer == "muon":
            optimizer = build_muon_optimizer(model, a.learning_rate, a.weight_decay, muon_lr=a.muon_learning_rate, momentum=a.muon_momentum,
                                             adjust_lr_fn=a.muon_lr_adjust, betas=(a.adam_beta1, a.adam_beta2), eps=a.adam_epsilon)
        else:
            optimizer = build_optimizer(model, a.learning_rate, a.weight_decay, (a.adam_beta1, a.adam_beta2), a.adam_epsilon)
        return optimizer, build_scheduler(optimizer, max_steps=plan.max_steps, warmup_steps=plan.warmup_steps, schedule=a.lr_schedule,
                                          min_lr_ratio=a.min_lr_ratio, wsd_decay_ratio=a.wsd_decay_ratio)

    def prepare(self, model, plan: BatchPlan):
        """Wrap the model and build its optimizer and schedule; returns (model, optimizer, scheduler)."""
        raise NotImplementedError

    def unwrapped_model(self):
        return self.accelerator.unwrap_model(self.model)

    def no_sync(self, last: bool):
        """Context for one micro-batch's backward: gradients are reduced across ranks only when `last`."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self, approve: Callable[[float | None], bool]) -> tuple[float | None, bool]:
        """Clip and update; returns (gradient norm, whether the update was applied). `approve(grad_norm)` is called
        once: before the update where it can still be held back (applied only if True), else after, for the record."""
        raise NotImplementedError


class AccelerateBackend(TrainingBackend):
    """One process, DDP or FSDP2 through Accelerate."""

    name = "Accelerate"

    def prepare(self, model, plan: BatchPlan):
        self.model = self.accelerator.prepare(model)  # before the optimizer: FSDP2 shards the parameters it will own
        self.optimizer, self.scheduler = self.accelerator.prepare(*self.make_optimizer_and_scheduler(self.model, plan))
        return self.model, self.optimizer, self.scheduler

    def no_sync(self, last: bool):
        acc = self.accelerator
        return contextlib.nullcontext() if last or acc.num_processes == 1 else acc.no_sync(self.model)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def step(self, approve: Callable[[float | None], bool]) -> tuple[float | None, bool]:
        max_norm = self.args.max_grad_norm if self.args.max_grad_norm > 0 else float("inf")
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        grad_norm = float(grad_norm) if grad_norm is not None else None
        if applied := approve(grad_norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, applied


class TensorParallelBackend(AccelerateBackend):
    """Tensor parallelism: each rank of a `tp_size` group holds one shard of every matrix, the embedding and the head,
    as DTensors laid out by the model's TP plan (`base_model_tp_plan`, the one `from_pretrained(tp_plan="auto")` uses),
    and the group's ranks read the same batch. With more processes than `tp_size`, the groups are data parallel through
    FSDP2 (`fsdp_size x tp_size`, transformers' `DistributedConfig`): parameters sharded over the groups as well,
    gradients averaged across them.

    Accelerate takes DTensor models only through its `ParallelismConfig`, which it refuses on CPU (MULTI_CPU), so the
    model stays out of `accelerator.prepare` (no DDP wrapper: the plan's collectives already make every gradient whole
    within a group). Accelerate still runs autocast, clipping (DTensor-aware) and the RNG states; weights, optimizer
    and schedule are checkpointed with torch.distributed.checkpoint, each rank writing its shards.
    """

    name = "tensor parallel"
    STATE_SUBDIR = "tp_state"

    @property
    def tp_size(self) -> int:
        return self.args.tp_size

    @property
    def data_world(self) -> int:
        return self.accelerator.num_processes // self.tp_size

    @property
    def data_rank(self) -> int:
        return self.accelerator.process_index // self.tp_size

    @property
    def replicas(self) -> int:
        return self.tp_size

    def shard_model(self, model, staging_dir: Path):
        # transformers lays the TP plan out while it loads a folder (a model already built in memory has its tied
        # head and embedding joined, which its sharding pass does not take), so the seeded initial weights go through
        # a save_pretrained folder: every rank then starts from the weights one process would.
        acc = self.accelerator
        if self.data_world > 1:
            # The TP plan's gathered logits are a view; FSDP2 warns that an in-place op on a view would skip its
            # backward hook. Nothing here writes into model outputs in place.
            warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor", category=UserWarning)
        if acc.is_main_process:
            shutil.rmtree(staging_dir, ignore_errors=True)
            model.save_pretrained(staging_dir)
        acc.wait_for_everyone()
        layout = DistributedConfig(tp_size=self.tp_size, fsdp_size=self.data_world)
        sharded = type(model).from_pretrained(staging_dir, distributed_config=layout,
                                              dtype=torch.float32, attn_implementation=model.config._attn_implementation)
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(staging_dir, ignore_errors=True)
        return sharded.to(acc.device)

    def prepare(self, model, plan: BatchPlan):
        self.model = model
        self.optimizer, self.scheduler = self.make_optimizer_and_scheduler(model, plan)
        return self.model, self.optimizer, self.scheduler

    def unwrapped_model(self):
        return self.model

    @contextlib.contextmanager
    def no_sync(self, last: bool):
        # FSDP2 across TP groups: reduce-scatter the gradients once per step, not once per micro-batch.
        set_sync = getattr(self.model, "set_requires_gradient_sync", None)
        if set_sync is None or last:
            yield
            return
        set_sync(False)
        try:
            yield
        finally:
            set_sync(True)

    def gather_state_dict(self) -> dict:
        # Full tensors on the main process, nothing elsewhere (torch gathers each DTensor's shards).
        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def write_pretrained(self, folder: Path, state_dict: dict) -> None:
        # A TP model's save_pretrained ends at a barrier of all ranks; given full tensors it gathers nothing itself
        # (with FSDP2 across groups it gathers its own copy: every rank takes part either way).
        acc = self.accelerator
        weights = drop_tied_copies(self.model, state_dict) if acc.is_main_process else {}
        self.model.save_pretrained(folder, state_dict=weights, safe_serialization=True, is_main_process=acc.is_main_process)

    def _sharded_state(self) -> dict:
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optimizer_state, "scheduler": self.scheduler.state_dict()}

    def save_state(self, folder: Path) -> None:
        self.accelerator.save_state(str(folder))  # RNG states, one file per rank
        dcp.save(self._sharded_state(), checkpoint_id=str(folder / self.STATE_SUBDIR))

    def load_state(self, folder: Path) -> None:
        self.accelerator.load_state(str(folder))
        state = self._sharded_state()
        dcp.load(state, checkpoint_id=str(folder / self.STATE_SUBDIR))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class DeepSpeedBackend(TrainingBackend):
    """DeepSpeed ZeRO through Accelerate; ZeRO owns the optimizer."""

    name = "DeepSpeed"

    @property
    def plugin(self):
        return self.accelerator.state.deepspeed_plugin

    @contextlib.contextmanager
    def model_init_context(self):
        """Build the model whole unless the config sets `zero3_init_flag`: Accelerate registers the ZeRO-3 config with
        transformers regardless, which would build it partitioned (another RNG order). Built whole, ZeRO-3 starts from
        the weights 1 process or DDP get; the flag is for models too big for that."""
        plugin = self.plugin
        if plugin is None or plugin.zero3_init_flag or plugin.deepspeed_config.get("zero_optimization", {}).get("stage") != 3:
            yield
            return
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config  # lazily: DeepSpeed is optional

        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            plugin.set_deepspeed_weakref()  # generate() and saving under ZeRO-3 need it back

    def configure(self, plan: BatchPlan) -> None:
        """Batch sizes, accumulation and clipping come from the recipe (one source of truth), not the DeepSpeed config;
        ZeRO-3 must gather full weights at save time, as every checkpoint holds a `save_pretrained` folder."""
        acc, config = self.accelerator, self.plugin.deepspeed_config
        wanted = {"train_micro_batch_size_per_gpu": plan.per_device_train_batch_size, "gradient_accumulation_steps": plan.gradient_accumulation_steps,
                  "train_batch_size": plan.sequences_per_step, "gradient_clipping": float(self.args.max_grad_norm)}
        for key, value in wanted.items():
            if config.get(key, "auto") not in ("auto", value):
                print_main(acc, f"note: DeepSpeed {key} {config[key]} replaced by the recipe's {value}")
            config[key] = value
        if (zero := config.setdefault("zero_optimization", {})).get("stage") == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        acc.gradient_accumulation_steps = plan.gradient_accumulation_steps  # what Accelerate checks against the config

    def prepare(self, model, plan: BatchPlan):
        # deepspeed.initialize takes model, optimizer and schedule together; ZeRO then owns the optimizer.
        self.configure(plan)
        self.accumulation_divisor = plan.gradient_accumulation_steps  # DeepSpeed divides by its accumulation steps itself
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, *self.make_optimizer_and_scheduler(model, plan))
        return self.model, self.optimizer, self.scheduler

    def no_sync(self, last: bool):
        # The engine reduces the gradients at the boundary (ZeRO-2/3 have no no_sync); the step comes in `step`.
        self.model.set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)

    def step(self, approve: Callable[[float | None], bool]) -> tuple[float | None, bool]:
        """`engine.step()` clips, checks and updates in one call and only then knows the norm, so the verdict comes after:
        DeepSpeed skips non-finite gradients itself; a finite spike is logged and counts towards `max_consecutive_skips`,
        but the update it judged has already been applied."""
        self.model.step()
        grad_norm = self.model.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        approve(grad_norm)
        return grad_norm, self.model.was_step_applied()


def resolve_optimizer(args: TrainConfig, engine: DistributedType) -> TrainConfig:
    """`optimizer: auto` made concrete for this launch: Muon where every rank holds whole matrices (one process, DDP),
    AdamW where ZeRO, FSDP2 or tensor parallelism hand each rank slices of them (Muon orthogonalises whole matrices).
    For one config that runs under several engines (README, "Optimizer, FP8 and the GPU check")."""
    if args.optimizer != "auto":
        return args
    sharded = args.tp_size > 1 or engine in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    return dataclasses.replace(args, optimizer="adamw" if sharded else "muon")


def make_backend(accelerator, args: TrainConfig) -> TrainingBackend:
    engine = accelerator.distributed_type
    args = resolve_optimizer(args, engine)
    if args.tp_size > 1:
        if engine in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            raise ConfigError(f"tp_size {args.tp_size} runs over plain processes (FSDP2 across the groups comes with it), "
                              f"not {engine.value}; launch with torchrun / accelerate launch without a DeepSpeed or FSDP config")
        if accelerator.num_processes % args.tp_size:
            raise ConfigError(f"tp_size {args.tp_size} must divide the number of processes, this launch has "
                              f"{accelerator.num_processes}; launch a multiple of {args.tp_size} processes (each "
                              f"{args.tp_size} form one tensor-parallel group, the groups are data parallel)")
        return TensorParallelBackend(accelerator, args)
    if args.optimizer == "muon" and engine in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        # Muon orthogonalises whole matrices; ZeRO flattens and FSDP2 shards them, so each rank would see a slice.
        raise ConfigError(f"optimizer muon runs on one process or DDP, not {engine.value} (which shards the matrices Muon "
                          "orthogonalises); use optimizer adamw with this engine")
    if engine == DistributedType.DEEPSPEED:
        if args.mixed_precision == "fp8":
            raise ConfigError("mixed_precision fp8 is not supported with DeepSpeed (ZeRO flattens the float8 linears' weights); "
                              "use FSDP2 or DDP for fp8, or mixed_precision bf16 with DeepSpeed")
        return DeepSpeedBackend(accelerator, args)
    return AccelerateBackend(accelerator, args)
