"""`hfscratch merge ADAPTER OUT`: fold a LoRA adapter into its base (an adapter of another base is refused) and write
a standalone checkpoint that, checked by default, greedy-generates token for token what base + adapter generated."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..atomic import replace_folder_atomically
from ..errors import CheckpointError
from .lora import check_base_fingerprint, check_checkpoint_path

VERIFY_PROMPTS = [
    "Maya has 3 apples. She finds 4 more apples. How many apples does Maya have now?",
    "A store has 12 toys in stock. It sells 5 toys in the morning. How many toys are left in the store?",
]


@torch.no_grad()
def _greedy(model, tokenizer, max_new_tokens: int) -> list[list[int]]:
    outputs = []
    for prompt in VERIFY_PROMPTS:
        chat = [{"role": "user", "content": prompt}]
        ids = (tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
               if getattr(tokenizer, "chat_template", None) else tokenizer(prompt)["input_ids"])
        input_ids = torch.tensor([ids], device=next(model.parameters()).device)
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        outputs.append(out[0, len(ids):].tolist())
    return outputs


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path, base_model: str | None = None, verify: bool = True,
                  trust_remote_code: bool = False, verify_tokens: int = 32) -> Path:
    """Merge `adapter_dir` into its base (or `base_model`) and save to `output_dir` atomically; returns output_dir."""
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{adapter_dir} is not a LoRA adapter (no adapter_config.json); pass the folder a use_peft run saved")
    if output_dir.resolve() == adapter_dir.resolve():
        raise CheckpointError("the output folder must differ from the adapter folder (merging must not overwrite the adapter)")
    adapter_config = json.loads(config_file.read_text())
    base = base_model or adapter_config.get("base_model_name_or_path")
    if not base:
        raise CheckpointError(f"{config_file} names no base model; pass it with --base")
    check_checkpoint_path(base, "base model")
    has_tokenizer = any((adapter_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer else base, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, trust_remote_code=trust_remote_code)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    check_base_fingerprint(adapter_dir, model, base)
    try:
        peft_model = PeftModel.from_pretrained(model, adapter_dir)
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"adapter {adapter_dir} does not fit base {base} ({str(err).splitlines()[0][:160]}); "
                              "pass the base it was trained on with --base") from None
    peft_model.eval()
    expected = _greedy(peft_model, tokenizer, verify_tokens) if verify else None
    merged = peft_model.merge_and_unload()

    def write(tmp: Path):
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "merged_from.json").write_text(json.dumps({"base": str(base), "adapter": str(adapter_dir)}, indent=2) + "\n")

    replace_folder_atomically(write, output_dir)
    if verify:
        reloaded = AutoModelForCausalLM.from_pretrained(output_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
        if _greedy(reloaded.eval(), tokenizer, verify_tokens) != expected:
            print(f"warning: the merged model in {output_dir} greedy-generates differently from base + adapter "
                  "(numerical rounding in a low-precision merge); compare outputs before relying on it")
        else:
            print(f"verified: {output_dir} generates the same {verify_tokens} greedy tokens as base + adapter")
    return output_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="LoRA adapter folder (e.g. outputs/sft-lora/final)")
    parser.add_argument("output", help="where to write the merged standalone checkpoint")
    parser.add_argument("--base", default=None, help="base model (default: the one named in adapter_config.json)")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the greedy-generation equality check")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow custom modeling code from the base")


def run(args: argparse.Namespace) -> int:
    out = merge_adapter(args.adapter, args.output, base_model=args.base, verify=args.verify, trust_remote_code=args.trust_remote_code)
    print(f"merged model written to {out}")
    return 0
