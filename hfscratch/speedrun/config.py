"""The speedrun's configuration tree (one `StageSettings` per stage), its stage names, the folders the stages hand
on, and what the estimate and the report both print: the machine found and durations."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError
from ..options import option

STAGES = ("data", "pretrain", "sft", "reward", "rlhf", "eval")
STATE_FILE = "speedrun.json"  # marks an output root as a speedrun's and records each stage's command and time
REPORT = "REPORT.md"
# The options each stage's wiring sets (input and output folders): the chain breaks if an override changes them.
WIRED = {"data": ("output_root", "name"), "pretrain": ("dataset_path", "tokenizer_path", "block_size", "output_dir"),
         "sft": ("model_name_or_path", "output_dir"), "reward": ("model_name_or_path", "output_dir"),
         "rlhf": ("model_name_or_path", "reward_model_name_or_path", "output_dir"),
         "eval": ("output_dir", "write_model_card")}


@dataclass
class StageSettings:
    base_config: str | None = option(None, "the stage's own YAML (a shipped name or a file) the overrides apply to; None = the command's default")
    args: dict = option({}, "overrides passed to the stage as --key value (true: a bare flag; lists: several values); see `hfscratch STAGE --help`")
    seconds_per_step: float = option(0.0, "measured seconds per step (eval: per row) on the config's reference machine, for the estimate")
    overhead_s: float = option(0.0, "measured seconds besides the steps (imports, loading, held-out metrics), for the estimate")


def _stage(base: str | None) -> StageSettings:
    return field(default_factory=lambda: StageSettings(base_config=base))


@dataclass
class SpeedrunConfig:
    """The whole chain in one command, each stage on the previous one's folder, with a report card."""

    output_root: str = option("outputs/speedrun", "every stage writes <output_root>/<stage>/; REPORT.md and the plots go here")
    force: bool = option(False, "rerun every stage even where its folder is complete")
    redo: list[str] = option([], "rerun these stages and every stage after them (they read the redone output)")
    stages: list[str] = option(list(STAGES), "run only these stages; the folders of the others must already be there")
    estimate_only: bool = option(False, "print the plan and the time estimate, run nothing")
    cpu_threads: int = option(0, "torch CPU threads per stage (OMP_NUM_THREADS); 0 = torch's default, every core")
    reference_machine: str = option("", "where the stages' seconds_per_step were measured (printed with the estimate)")
    reference_cpu_cores: int = option(2, "CPU cores of the reference machine (a CPU estimate scales by reference / found cores)")
    reference_gpu: str | None = option(None, "GPU the rates are for (a GPU estimate scales by its peak bf16 FLOP/s / the found GPU's)")
    gpu_dollars_per_hour: float = option(0.0, "assumed price of one GPU-hour, for the cost estimate (0: no cost line)")
    data: StageSettings = _stage("data_synthetic_math")
    pretrain: StageSettings = _stage("pretrain_tiny")
    sft: StageSettings = _stage("sft_synthetic_math")
    reward: StageSettings = _stage("reward_synthetic_math")
    rlhf: StageSettings = _stage("rlhf_synthetic_math")
    eval: StageSettings = _stage(None)

    def __post_init__(self):
        for name in (*self.redo, *self.stages):
            if name not in STAGES:
                raise ConfigError(f"unknown stage {name!r} in --redo/--stages; choose from {', '.join(STAGES)}")
        if not self.stages:
            raise ConfigError("--stages is empty; name at least one of " + ", ".join(STAGES))
        if self.reference_cpu_cores < 1 or self.gpu_dollars_per_hour < 0 or self.cpu_threads < 0:
            raise ConfigError("reference_cpu_cores must be >= 1, gpu_dollars_per_hour and cpu_threads >= 0")
        for name in STAGES:
            settings = getattr(self, name)
            clash = sorted(set(settings.args) & set(WIRED[name]))
            if clash:
                raise ConfigError(f"{name}.args sets {', '.join(clash)}, which the speedrun wires from stage to stage; "
                                  f"remove it (outputs go to <output_root>/{name})")
            if settings.seconds_per_step < 0 or settings.overhead_s < 0:
                raise ConfigError(f"{name}: seconds_per_step and overhead_s must be >= 0")

    @property
    def root(self) -> Path:
        return Path(self.output_root)


# ---------------------------------------------------------------- the stages' folders


def stage_dir(config: SpeedrunConfig, stage: str) -> Path:
    return config.root / stage


def product(config: SpeedrunConfig, stage: str) -> Path:
    """The folder the next stage reads (and whose completeness decides reuse)."""
    return stage_dir(config, stage) / ("" if stage in ("data", "eval") else "final")


def machine() -> tuple[str, float]:
    """(what this machine is, how much faster than the reference machine it should be) - for the estimate."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return name, 1.0  # scaled against the reference GPU in estimate()
    cores = os.cpu_count() or 1
    return f"{cores} CPU cores (no GPU)", float(cores)


def format_duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
