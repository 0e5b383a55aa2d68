"""The alignment stages' configuration trees: model (what to load, LoRA) + data (dataset, held-out metrics) + train
(TRL's own SFTConfig / DPOConfig / GRPOConfig / RewardConfig, every field of which works from YAML or the command line)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import trl

from ..data.synthetic_math import SyntheticMathConfig
from ..errors import ConfigError
from ..options import option

# TRL 1.16's configs default to `gradient_checkpointing=True`, a field transformers 5.24 renamed
# (`activation_checkpointing`): every TRL config built warns, whatever the user wrote. The fix is TRL's.
warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)

DEFAULT_CHECKPOINT = "outputs/pretrain-tiny/final"


@dataclass
class AlignmentModelConfig:
    model_name_or_path: str = option(DEFAULT_CHECKPOINT, "checkpoint folder or Hub id to start from")
    tokenizer_name_or_path: str | None = option(None, "tokenizer (default: the model's)")
    adapter_name_or_path: str | None = option(None, "a LoRA adapter folder to continue from (DPO/GRPO on top of a LoRA-SFT run)")
    use_hfscratch_chat_template: bool = option(False, "give a tokenizer without a (generation-marked) chat template the hfscratch one")
    dtype: str = option("auto", "auto | float32 | bfloat16 | float16")
    attn_implementation: str | None = option(None, "sdpa | eager | flash_attention_2 (default: sdpa)")
    use_peft: bool = option(False, "train a LoRA adapter instead of all weights")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = option(0.05, "dropout on the LoRA input")
    lora_target_modules: list[str] = option(["all-linear"], "module names (q_proj k_proj v_proj o_proj gate_proj up_proj down_proj) or all-linear")
    lora_modules_to_save: list[str] = option([], "modules trained in full next to LoRA")
    load_in_4bit: bool = option(False, "QLoRA: load the base in 4-bit (needs a CUDA GPU + bitsandbytes)")
    merge_lora: bool = option(False, "after training, also write <output_dir>/merged (a standalone model)")


@dataclass
class AlignmentDataConfig:
    dataset_name: str = option("synthetic_math", "synthetic_math, a local file/folder or a Hub id")
    dataset_config: str | None = option(None, "Hub dataset config name")
    dataset_train_split: str = option("train", "training split")
    dataset_test_split: str | None = option(None, "held-out split/file for before/after metrics (synthetic_math: its heldout split)")
    eval_dataset_name: str | None = option(None, "a different dataset for held-out metrics")
    dataset_column_map: str | None = option(None, 'JSON rename map, e.g. {"query": "question"}')
    max_train_samples: int | None = option(None, "cap on training rows")
    skip_train_samples: int = option(0, "skip the first N training rows (before max_train_samples): e.g. a judge reward model trained on pairs disjoint from the first one's")
    synthetic_train_size: int = option(2000, "rows drawn from the synthetic generator")
    synthetic: SyntheticMathConfig = field(default_factory=SyntheticMathConfig)
    synthetic_restated_fraction: float = option(0.5, "SFT: share of synthetic solutions ending with a redundant 'The answer is N.' line")
    synthetic_style_fraction: float = option(0.5, "DPO: share of synthetic pairs that reject the correct solution with that redundant line (the rest reject a solution with an arithmetic slip); dpo_synthetic_math.yaml uses 1.0")
    eval_samples: int = option(100, "held-out rows for before/after metrics (0 to skip)")
    eval_from_train: bool = option(False, "dpo/reward/grpo/rlhf: hold out the last eval_samples rows of the training data for the metrics and train on the rows before them (a dataset with one split, e.g. one file)")
    max_prompt_tokens: int | None = option(None, "grpo/rlhf: leave out training and held-out prompts longer than this many tokens (chat template applied): TRL does not truncate prompts, and a long conversation (hh-rlhf) can outgrow the model's positions")
    eval_max_new_tokens: int = option(96, "greedy generation length for exact-match")
    eval_num_samples: int = option(8, "GRPO: sampled completions (temperature 1) per held-out prompt for the sampled reward (0 to skip)")

    def __post_init__(self):
        for name in ("skip_train_samples", "eval_samples", "eval_num_samples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_train_samples", "max_prompt_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (or unset for no limit), got {getattr(self, name)}")

    def synthetic_styles(self) -> dict:
        return {"restated_fraction": self.synthetic_restated_fraction, "style_fraction": self.synthetic_style_fraction}


@dataclass
class SFTStageConfig:
    """Supervised fine-tuning with TRL's SFTTrainer (held-out metrics before and after)."""

    model: AlignmentModelConfig = field(default_factory=AlignmentModelConfig)
    data: AlignmentDataConfig = field(default_factory=AlignmentDataConfig)
    train: trl.SFTConfig = field(default_factory=trl.SFTConfig)


@dataclass
class DPOStageConfig:
    """Direct preference optimisation with TRL's DPOTrainer (held-out margin and win rate before and after)."""

    model: AlignmentModelConfig = field(default_factory=AlignmentModelConfig)
    data: AlignmentDataConfig = field(default_factory=AlignmentDataConfig)
    train: trl.DPOConfig = field(default_factory=trl.DPOConfig)


@dataclass
class GRPOModelConfig(AlignmentModelConfig):
    reward_model_name_or_path: str | None = option(None, "a reward model (`hfscratch reward` output) scoring every completion: RLHF; its weight is the last of train.reward_weights")
    verifiable_reward: bool = option(True, "with a reward model: also score the verifiable math reward (correct answer + format)")
    judge_model_name_or_path: str | None = option(None, "a second reward model, trained on pairs disjoint from the first's, scored on held-out completions only (never trained on): the independent check for reward hacking")


@dataclass
class GRPOStageConfig:
    """GRPO with a verifiable math reward, TRL's GRPOTrainer (held-out reward and exact match before and after)."""

    model: GRPOModelConfig = field(default_factory=GRPOModelConfig)
    data: AlignmentDataConfig = field(default_factory=AlignmentDataConfig)
    train: trl.GRPOConfig = field(default_factory=trl.GRPOConfig)


@dataclass
class RLHFStageConfig(GRPOStageConfig):
    """RLHF: online GRPO against a learned reward model (optionally plus the verifiable reward), KL to the starting
    model; held-out learned reward, exact match, length and an independent judge before and after."""


@dataclass
class RewardStageConfig:
    """A reward model (scalar `score` head on the checkpoint's backbone) with TRL's RewardTrainer on preference pairs
    (held-out pairwise accuracy and margin before and after, next to a length-only baseline)."""

    model: AlignmentModelConfig = field(default_factory=AlignmentModelConfig)
    data: AlignmentDataConfig = field(default_factory=AlignmentDataConfig)
    train: trl.RewardConfig = field(default_factory=trl.RewardConfig)
