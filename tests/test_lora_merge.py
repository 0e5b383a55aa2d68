"""LoRA SFT with PEFT, `hfscratch merge`, and the bad-input paths of adapters and QLoRA."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig

from hfscratch.alignment.config import AlignmentModelConfig
from hfscratch.alignment.lora import BASE_FINGERPRINT_FILE, qlora_unavailable_reason
from hfscratch.alignment.merge import merge_adapter
from hfscratch.alignment.sft import run_sft
from hfscratch.cli import main as cli_main
from hfscratch.errors import CheckpointError, ConfigError
from tests.alignment_setup import CPU_TRAINER, pretrained_base, root, script_args

_LORA: dict = {}


def lora_sft() -> dict:
    if not _LORA:
        args = SFTConfig(output_dir=str(root() / "sft-lora"), max_steps=15, per_device_train_batch_size=16, learning_rate=5e-3,
                         lr_scheduler_type="constant", logging_steps=5, assistant_only_loss=True, max_length=256, seed=0, **CPU_TRAINER)
        model_args = AlignmentModelConfig(model_name_or_path=str(pretrained_base()), use_peft=True, lora_r=8, lora_alpha=16,
                                    lora_dropout=0.0, lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                    merge_lora=True)
        _LORA.update(run_sft(model_args, script_args(eval_samples=16), args))
    return _LORA


@torch.no_grad()
def greedy(model, tokenizer, prompts):
    out = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=False)
        x = torch.tensor([ids])
        out.append(model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=40, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)[0].tolist())
    return out


def test_lora_sft_saves_an_adapter_that_learns():
    result = lora_sft()
    final = Path(result["final"])
    assert result["adapter"] is True
    assert (final / "adapter_config.json").is_file() and (final / BASE_FINGERPRINT_FILE).is_file()
    assert not (final / "model.safetensors").exists()  # only the adapter, not a copy of the base
    config = json.loads((final / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert result["after"]["answer_loglik"] > result["before"]["answer_loglik"]


def test_merged_checkpoint_generates_exactly_what_base_plus_adapter_generates(tmp_path):
    result = lora_sft()
    adapter, merged_dir = Path(result["final"]), Path(result["merged"])
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(pretrained_base())
    with_adapter = PeftModel.from_pretrained(base, adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()  # plain transformers, no PEFT
    assert not any("lora" in name for name, _ in merged.named_parameters())
    prompts = ["Maya has 7 marbles. She finds 2 more marbles. How many marbles does Maya have now?",
               "A store has 9 lamps in stock. It sells 4 lamps in the morning. How many lamps are left in the store?",
               "Omar is 8 years old. Nora is 3 years younger than Omar. How old is Nora?"]
    assert greedy(merged, tokenizer, prompts) == greedy(with_adapter, tokenizer, prompts)
    # The CLI does the same and refuses to write over the adapter.
    assert cli_main(["merge", str(adapter), str(tmp_path / "merged-cli")]) == 0
    assert (tmp_path / "merged-cli" / "model.safetensors").is_file()
    assert cli_main(["merge", str(adapter), str(adapter)]) == 2


def test_adapter_for_a_different_base_is_refused(tmp_path, capsys):
    from hfscratch import HfscratchForCausalLM

    adapter = Path(lora_sft()["final"])
    other = tmp_path / "other-base"
    model = HfscratchForCausalLM.from_pretrained(pretrained_base())
    torch.manual_seed(1)
    model.model.embed_tokens.weight.data.normal_()  # same shapes, different weights: only the fingerprint can tell
    model.save_pretrained(other)
    with pytest.raises(CheckpointError, match="different model"):
        merge_adapter(adapter, tmp_path / "out", base_model=str(other))
    # Without the fingerprint file, a base of another shape still fails in one line.
    stripped = tmp_path / "adapter-no-fp"
    shutil.copytree(adapter, stripped)
    (stripped / BASE_FINGERPRINT_FILE).unlink()
    from tests.helpers import tiny_config

    small = HfscratchForCausalLM(tiny_config(hidden_size=32, intermediate_size=64, vocab_size=600))
    small.save_pretrained(tmp_path / "small")
    assert cli_main(["merge", str(stripped), str(tmp_path / "out2"), "--base", str(tmp_path / "small")]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_qlora_needs_gpu_and_bitsandbytes():
    reason = qlora_unavailable_reason()
    if reason is None:
        pytest.skip("a CUDA GPU and bitsandbytes are present: QLoRA runs for real (checked on GPU machines)")
    with pytest.raises(ConfigError, match="QLoRA"):
        from hfscratch.alignment.common import load_model_and_tokenizer

        load_model_and_tokenizer(AlignmentModelConfig(model_name_or_path=str(pretrained_base()), use_peft=True, load_in_4bit=True))
