"""The pretraining configuration tree: `PretrainConfig` = model + data (the data stage's `DataConfig`, nested, not
mirrored) + train, filled by `hfscratch.options.parse_config`. Defaults are the tiny CPU run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..data.config import DataConfig
from ..errors import ConfigError
from ..options import option

# Model size presets; "gpt2_*" use GPT-2's architecture (learned positions, LayerNorm, GELU), the rest Llama's.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512),
    "small": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=1024),
    "gpt2_124m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                      max_position_embeddings=1024, style="gpt2"),
    "llama_124m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048),
    "350m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=2048),
    # Llama-3.2-1B shape (hidden 2048, 16 layers, GQA 32/8, SwiGLU 8192): ~1.0B with a 50k vocab.
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, max_position_embeddings=2048, rope_theta=500000.0),
}


@dataclass
class ModelConfig:
    """Which model to build: a size preset, explicit `HfscratchConfig` fields, or an existing checkpoint."""

    model_size: str = option("tiny", f"size preset: {', '.join(MODEL_PRESETS)} (explicit fields below override it)")
    architecture: str | None = option(None, "llama (RoPE, RMSNorm, SwiGLU) or gpt2 (learned positions, LayerNorm, GELU); default: the preset's")
    init_from: str | None = option(None, "continue pretraining from this save_pretrained folder instead of a fresh model")
    hidden_size: int | None = option(None, "width of the residual stream")
    intermediate_size: int | None = option(None, "MLP hidden width (default: 8/3 x hidden rounded to 64 for SwiGLU, 4 x hidden for GELU)")
    num_hidden_layers: int | None = option(None, "transformer blocks")
    num_attention_heads: int | None = option(None, "query heads")
    num_key_value_heads: int | None = option(None, "key/value heads (fewer than query heads: grouped-query attention)")
    head_dim: int | None = option(None, "width of one head (default: hidden_size / num_attention_heads)")
    max_position_embeddings: int | None = option(None, "longest sequence the model takes (block_size must fit)")
    position_embedding_type: str | None = option(None, "rope | learned")
    norm_type: str | None = option(None, "rmsnorm | layernorm")
    mlp_type: str | None = option(None, "swiglu | gelu")
    qk_norm: bool | None = option(None, "per-head RMSNorm on queries/keys (Qwen3)")
    tie_word_embeddings: bool | None = option(None, "share the input embedding with lm_head")
    rope_theta: float | None = option(None, "RoPE base frequency")
    initializer_range: float | None = option(None, "std of the normal weight initialisation")
    model_vocab_size: int | None = option(None, "embedding rows; default: the tokenizer's size rounded up to pad_vocab_to_multiple_of")
    pad_vocab_to_multiple_of: int = option(64, "round the embedding table up (tensor-core friendly); 1 = exact")
    attn_implementation: str = option("sdpa", "sdpa | eager | flex_attention | flash_attention_2")

    def __post_init__(self):
        if self.init_from is None and self.model_size not in MODEL_PRESETS:
            raise ConfigError(f"unknown model_size {self.model_size!r}; choose one of {', '.join(MODEL_PRESETS)}")
        if self.architecture not in (None, "llama", "gpt2"):
            raise ConfigError(f"architecture must be llama or gpt2, got {self.architecture!r}")
        if self.pad_vocab_to_multiple_of < 1:
            raise ConfigError("pad_vocab_to_multiple_of must be >= 1")


@dataclass
class TrainConfig:
    """How to train: budget, batch, optimiser, schedule, precision, logging, checkpoints, stability."""

    output_dir: str | None = option(None, "default: outputs/<run_name>")
    run_name: str = option("pretrain-tiny", "name of the run (output folder, trackers)")
    overwrite_output_dir: bool = option(False, "replace a previous run in output_dir")
    seed: int = option(42, "seed of the weights, the data order and sampling")
    # budget
    max_steps: int | None = option(None, "optimizer steps (or give max_tokens)")
    max_tokens: int | None = option(None, "token budget; steps = ceil(max_tokens / tokens per step)")
    # batch
    per_device_train_batch_size: int = option(16, "sequences per device per forward/backward")
    gradient_accumulation_steps: int | None = option(None, "default: from global_batch_size, else 1")
    global_batch_size: int | None = option(None, "sequences per optimizer step over all devices (= micro x accum x world)")
    # optimiser and schedule
    optimizer: str = option("adamw", "adamw | muon (torch.optim.Muon on the hidden matrices, AdamW on embeddings, head, norms "
                            "and biases) | auto (muon on one process or DDP, adamw under ZeRO, FSDP2 and tp_size > 1, "
                            "which hand each rank matrix slices)")
    learning_rate: float = option(3e-3, "peak learning rate (AdamW; Muon too unless muon_learning_rate is set)")
    min_lr_ratio: float = option(0.1, "final LR as a fraction of the peak")
    lr_schedule: str = option("cosine", "cosine | wsd | constant (all after linear warmup)")
    warmup_steps: int | None = option(None, "default: warmup_ratio x max_steps")
    warmup_ratio: float = option(0.1, "linear warmup as a fraction of max_steps")
    wsd_decay_ratio: float = option(0.2, "WSD: fraction of steps spent decaying at the end")
    weight_decay: float = option(0.1, "applied to weight matrices only (not norms, biases)")
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.95, "AdamW beta2")
    adam_epsilon: float = option(1e-8, "AdamW epsilon")
    muon_learning_rate: float | None = option(None, "peak LR of the Muon matrices (default: learning_rate, which match_rms_adamw makes equivalent)")
    muon_momentum: float = option(0.95, "Muon's Nesterov momentum")
    muon_lr_adjust: str = option("match_rms_adamw", "match_rms_adamw (Muon's update at AdamW's RMS: AdamW's LR and decay carry over) | "
                                 "original (Keller Jordan's scaling: LR near 0.02)")
    max_grad_norm: float = option(1.0, "clip the global gradient norm; 0 = off")
    z_loss: float = option(0.0, "weight of the z-loss (logsumexp^2) that keeps logits from drifting; 1e-4 is typical")
    # precision and speed
    mixed_precision: str = option("auto", "auto (bf16 on GPUs that have it, else fp32) | bf16 | fp16 | fp8 (torchao float8 linears "
                                  "inside the blocks, bf16 elsewhere) | no")
    fp8_emulate: bool | None = option(None, "fp8: run the float8 matmuls in emulation (default: only where the hardware has no FP8, "
                                      "e.g. CPUs and GPUs before compute capability 8.9)")
    torch_compile: bool = option(False, "compile the model with torch.compile")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (less memory, ~30% more compute)")
    allow_tf32: bool = option(True, "TF32 matmuls on Ampere+ GPUs")
    dataloader_num_workers: int = option(0, "DataLoader worker processes")
    tp_size: int = option(1, "tensor parallelism: shard each block's matmuls, the embedding and the head over groups of this "
                          "many processes with the model's TP plan (DTensor); more processes than that make the groups "
                          "data parallel through FSDP2")
    # evaluation
    eval_steps: int = option(100, "validate every N steps (and at the end); 0 = only at the end")
    eval_max_batches: int | None = option(20, "validate on the first eval_max_batches x per_device_train_batch_size blocks, split over processes (None = the whole split)")
    sample_prompt: str = option("", "prompt for the sample generation logged at each validation")
    sample_max_new_tokens: int = option(64, "length of the logged sample")
    eval_harness_tasks: list[str] = option([], "lm-eval tasks run every eval_harness_steps")
    eval_harness_steps: int = option(0, "run eval_harness_tasks every N steps (0 = never)")
    eval_harness_limit: int = option(100, "examples per lm-eval task")
    eval_harness_data_dir: str | None = option(None, "folder with the local task data (as hfscratch eval --data_dir)")
    # logging
    logging_steps: int = option(10, "log train metrics every N steps")
    report_to: str = option("tensorboard", "tensorboard | wandb | trackio | none (comma-separated for several)")
    peak_flops: float | None = option(None, "peak FLOP/s per device for MFU (default: known GPU table, or measured on CPU)")
    # checkpoints
    save_steps: int = option(100, "checkpoint every N steps (0 = only at the end)")
    keep_last_k: int = option(2, "checkpoints to keep (older ones are deleted)")
    resume_from_checkpoint: str | None = option(None, "latest | PATH to a checkpoint folder")
    # stability
    spike_zscore: float = option(6.0, "skip a step whose loss or grad norm is this many std above the running mean; 0 = off")
    spike_warmup_steps: int = option(20, "steps of statistics gathered before spikes are judged")
    max_consecutive_skips: int = option(5, "stop training after this many skipped steps in a row")
    # publishing
    push_to_hub: bool = option(False, "push checkpoints (step branches) and the final model (main) to the Hub")
    hub_model_id: str | None = option(None, "user/name of the Hub repo")
    hub_private: bool = option(False, "create the Hub repo private")

    def __post_init__(self):
        if self.max_steps is not None and self.max_tokens is not None:
            raise ConfigError("give max_steps or max_tokens, not both")
        for name in ("per_device_train_batch_size", "keep_last_k", "logging_steps", "max_consecutive_skips",
                     "sample_max_new_tokens", "max_steps", "max_tokens", "gradient_accumulation_steps",
                     "global_batch_size", "tp_size"):  # max_steps .. global_batch_size may be None
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.tp_size > 1:
            # Muon orthogonalises whole matrices (a TP rank holds a slice); torchao's float8 linears and the live
            # lm-eval run (main process only) have no tensor-parallel path here.
            clashes = {"optimizer muon": (self.optimizer == "muon", "use optimizer adamw"),
                       "mixed_precision fp8": (self.mixed_precision == "fp8", "use mixed_precision bf16"),
                       "eval_harness_steps": (bool(self.eval_harness_tasks and self.eval_harness_steps),
                                              "set eval_harness_steps 0 and run hfscratch eval on the final folder")}
            for setting, (clash, fix) in clashes.items():
                if clash:
                    raise ConfigError(f"tp_size {self.tp_size} does not combine with {setting}; {fix}")
        if self.lr_schedule not in ("cosine", "wsd", "constant"):
            raise ConfigError(f"lr_schedule must be cosine, wsd or constant, got {self.lr_schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.mixed_precision not in ("auto", "bf16", "fp16", "fp8", "no", "fp32"):
            raise ConfigError(f"mixed_precision must be auto, bf16, fp16, fp8 or no, got {self.mixed_precision!r}")
        if self.fp8_emulate is not None and self.mixed_precision != "fp8":
            raise ConfigError("fp8_emulate applies to mixed_precision fp8 only; drop it or set mixed_precision fp8")
        if self.optimizer not in ("auto", "adamw", "muon"):
            raise ConfigError(f"optimizer must be auto, adamw or muon, got {self.optimizer!r}")
        if self.muon_lr_adjust not in ("match_rms_adamw", "original"):
            raise ConfigError(f"muon_lr_adjust must be match_rms_adamw or original, got {self.muon_lr_adjust!r}")
        if self.muon_learning_rate is not None and self.muon_learning_rate <= 0:
            raise ConfigError(f"muon_learning_rate must be positive, got {self.muon_learning_rate}")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError(f"muon_momentum must be in [0, 1), got {self.muon_momentum}")
        for name in ("eval_steps", "save_steps", "eval_harness_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("--push_to_hub needs --hub_model_id user/name")
        for tracker in self.trackers():
            if tracker not in ("tensorboard", "wandb", "trackio"):
                raise ConfigError(f"report_to: unknown tracker {tracker!r}; use tensorboard, wandb, trackio or none")

    def trackers(self) -> list[str]:
        names = [t.strip() for t in self.report_to.split(",") if t.strip()]
        return [] if names in ([], ["none"]) else names

    def resolve_output_dir(self) -> str:
        return self.output_dir or f"outputs/{self.run_name}"


@dataclass
class PretrainConfig:
    """Pretrain a causal LM from scratch: which model to build, which data to read, how to train."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class BatchPlan:
    """Batch arithmetic resolved against the world size; every number a log line or resume needs."""

    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    block_size: int
    max_steps: int
    warmup_steps: int

    @property
    def sequences_per_step(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size

    @property
    def tokens_per_step(self) -> int:
        return self.sequences_per_step * self.block_size


def plan_batches(args: TrainConfig, world_size: int, block_size: int, train_sequences: int | None = None) -> BatchPlan:
    """Resolve accumulation and the step budget; raise ConfigError when sizes do not divide."""
    micro, accum = args.per_device_train_batch_size, args.gradient_accumulation_steps
    if args.global_batch_size is not None:
        per_step = micro * world_size
        if args.global_batch_size % per_step != 0:
            raise ConfigError(
                f"global_batch_size {args.global_batch_size} is not divisible by per_device_train_batch_size {micro} x "
                f"{world_size} processes = {per_step}; pick a global batch that is a multiple of {per_step}"
            )
        derived = args.global_batch_size // per_step
        if accum is not None and accum != derived:
            raise ConfigError(
                f"global_batch_size {args.global_batch_size} != per_device_train_batch_size {micro} x gradient_accumulation_steps "
                f"{accum} x {world_size} processes; drop one of the three settings"
            )
        accum = derived
    accum = accum or 1
    tokens_per_step = micro * accum * world_size * block_size
    if args.max_steps is not None:
        max_steps = args.max_steps
    elif args.max_tokens is not None:
        max_steps = max(1, math.ceil(args.max_tokens / tokens_per_step))
    elif train_sequences is not None:
        max_steps = max(1, train_sequences // (micro * accum * world_size))  # one epoch
    else:
        raise ConfigError("set max_steps or max_tokens")
    warmup = args.warmup_steps if args.warmup_steps is not None else int(round(args.warmup_ratio * max_steps))
    if warmup >= max_steps and args.lr_schedule != "constant":
        raise ConfigError(f"warmup_steps ({warmup}) must be smaller than the run's {max_steps} steps; lower warmup_steps")
    return BatchPlan(micro, accum, world_size, block_size, max_steps, warmup)


def flat_config(config, prefix: str = "") -> dict[str, Any]:
    """Every field of a config tree as {dotted name: JSON/tracker-friendly value}."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value, name = getattr(config, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            out.update(flat_config(value, name + "."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
        else:
            out[name] = list(value) if isinstance(value, (list, tuple)) else str(value)
    return out
