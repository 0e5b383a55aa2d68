"""Shared, cached builders for the alignment tests: a tiny tokenizer + model pretrained on synthetic math, and
the SFT run the DPO/GRPO/LoRA tests start from. Cached at module level so every alignment test file in one
pytest process reuses them (a session fixture per file would rebuild them)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import torch

EASY = {"min_steps": 1, "max_steps": 1, "max_value": 10, "operations": ("+", "-")}
_ROOT = Path(tempfile.mkdtemp(prefix="hfscratch-align-"))
atexit.register(shutil.rmtree, _ROOT, True)
_CACHE: dict[str, object] = {}
# The seed of the shared base and SFT run; the asserted margins were checked with seeds 0, 1 and 2.
SEED = int(os.environ.get("HFSCRATCH_TEST_SEED", 0))
# Trainer settings every alignment test shares, as the CPU recipe YAMLs set them. TRL's configs default to bf16
# autocast and gradient checkpointing; for these ~330k-parameter models on a 2-core CPU small bf16 GEMMs run several
# times slower than fp32 and recomputing activations saves no memory worth having (measured: the 150-step SFT run
# took 140 s with TRL's defaults, 0.75 s of each 0.92 s step in backward).
CPU_TRAINER = dict(use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no",
                   disable_tqdm=True)


def root() -> Path:
    return _ROOT


def script_args(**overrides):
    from hfscratch.alignment.config import AlignmentDataConfig
    from hfscratch.data.synthetic_math import SyntheticMathConfig

    kwargs = dict(synthetic_train_size=800, eval_samples=64, eval_max_new_tokens=56,
                  synthetic=SyntheticMathConfig(min_steps=1, max_steps=1, max_value=10, operations=["+", "-"], seed=5),
                  # 3 of 4 SFT answers restate the result ("The answer is N."): this small model then leans to that
                  # style, which the DPO test's style pairs (concise preferred) have to overturn. At 50/50 the extra
                  # line's own log-prob already tips it to the concise answer (style win rate 1.0 before DPO).
                  synthetic_restated_fraction=0.75)
    kwargs.update(overrides)
    return AlignmentDataConfig(**kwargs)


def pretrained_base() -> Path:
    """Tokenizer (512 BPE with the chat template) + ~330k-param model pretrained on synthetic math text."""
    if "base" in _CACHE:
        return _CACHE["base"]
    from hfscratch import HfscratchConfig, HfscratchForCausalLM
    from hfscratch.data.synthetic_math import generate_problems, problem_to_text
    from hfscratch.tokenizer import train_tokenizer

    torch.manual_seed(SEED)
    texts = [problem_to_text(p) for p in generate_problems(2500, seed=11, **EASY)]
    mixed = [problem_to_text(p) for p in generate_problems(300, seed=12)]
    out = _ROOT / "base"
    tokenizer = train_tokenizer(texts + mixed, vocab_size=512, output_dir=out, show_progress=False)
    config = HfscratchConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = HfscratchForCausalLM(config)
    ids: list[int] = []
    for text in texts:
        ids += [tokenizer.bos_token_id, *tokenizer(text)["input_ids"], tokenizer.eos_token_id]
    block = 96
    blocks = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(SEED)
    steps = int(os.environ.get("HFSCRATCH_TEST_PRETRAIN_STEPS", 400))
    model.train()
    for step in range(steps):
        batch = blocks[torch.randint(0, len(blocks), (16,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * (1 - step / steps)
    _CACHE["pretrain_loss"] = loss.item()
    model.save_pretrained(out)
    _CACHE["base"] = out
    return out


def sft_run() -> dict:
    """Full SFT from the pretrained base on the easy held-out-checked set."""
    if "sft" in _CACHE:
        return _CACHE["sft"]
    from trl import SFTConfig

    from hfscratch.alignment.config import AlignmentModelConfig
    from hfscratch.alignment.sft import run_sft

    base = pretrained_base()
    args = SFTConfig(output_dir=str(_ROOT / "sft"), max_steps=int(os.environ.get("HFSCRATCH_TEST_SFT_STEPS", 150)), per_device_train_batch_size=16, learning_rate=2e-3,
                     lr_scheduler_type="constant", logging_steps=10, assistant_only_loss=True, max_length=256, seed=SEED, **CPU_TRAINER)
    result = run_sft(AlignmentModelConfig(model_name_or_path=str(base)), script_args(), args)
    _CACHE["sft"] = result
    return result


def reward_model_run(split: str = "train") -> dict:
    """A reward model from the SFT model on synthetic "slip" pairs (correct answer chosen, an arithmetic slip rejected)
    of the generator's `split`: "train" for the one RLHF trains against, "heldout" for the independent judge (its
    pairs share no problem with the first's)."""
    if f"reward-{split}" in _CACHE:
        return _CACHE[f"reward-{split}"]
    from trl import RewardConfig

    from hfscratch.alignment.config import AlignmentModelConfig
    from hfscratch.alignment.reward import run_reward

    data = script_args(dataset_name="synthetic_math", dataset_train_split=split, synthetic_train_size=480,
                       synthetic_style_fraction=0.0, eval_samples=0)
    args = RewardConfig(output_dir=str(_ROOT / f"reward-{split}"), max_steps=40, per_device_train_batch_size=16,
                        learning_rate=1e-3, lr_scheduler_type="constant", logging_steps=10, max_length=256, seed=SEED, **CPU_TRAINER)
    result = run_reward(AlignmentModelConfig(model_name_or_path=sft_run()["final"]), data, args)
    _CACHE[f"reward-{split}"] = result
    return result
