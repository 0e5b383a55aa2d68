"""GGUF export checked and timed in llama.cpp (llama-cpp-python) next to hfscratch's `generate`, batch 1.

Builds the 6.5M-parameter model of `bench_serve.py`, exports it with `hfscratch export ... --to gguf` (f32),
then for a few prompts: llama.cpp's tokenization vs `tokenizers`', greedy tokens vs transformers', and decode
tokens/s of both (128 new tokens, batch 1, 2 threads), as a ratio.

    pip install 'hfscratch[llamacpp]'      # compiles llama.cpp (a few minutes)
    python benchmarks/bench_gguf.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import llama_cpp
import torch
from bench_serve import QUESTIONS, build_model

from hfscratch.export import export_gguf
from hfscratch.loading import load_for_inference

NEW_TOKENS = 128


def main() -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        build_model(Path(scratch))
        folder = Path(scratch) / "model"
        gguf_file = export_gguf(folder, Path(scratch) / "model.gguf")
        model, tokenizer = load_for_inference(str(folder), device="cpu")
        llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=1024, n_threads=2, n_batch=256, verbose=False)
        text = " ".join(QUESTIONS) * 20
        same_tokens = llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer(
            text, add_special_tokens=False)["input_ids"]
        rates_hf, rates_cpp, equal, partings = [], [], 0, []
        for question in QUESTIONS:
            ids = tokenizer(question)["input_ids"]
            start = time.perf_counter()
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id)
            rates_hf.append(NEW_TOKENS / (time.perf_counter() - start))
            expected = out[0, len(ids):].tolist()
            got, start = [], time.perf_counter()
            for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
                got.append(token)
                if len(got) == NEW_TOKENS:
                    break
            rates_cpp.append(NEW_TOKENS / (time.perf_counter() - start))
            equal += got == expected
            if got != expected:  # where they part, and how close transformers' top two choices were there
                at = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
                with torch.no_grad():
                    logits = model(torch.tensor([ids + expected[:at]])).logits[0, -1]
                top = logits.topk(2).values
                partings.append(f"{question!r}: token {at} of {NEW_TOKENS}, top-2 logit gap {float(top[0] - top[1]):.2e}")
        size = gguf_file.stat().st_size / 2**20
        llm.close()
    print(f"# GGUF export in llama.cpp {llama_cpp.__version__} vs hfscratch generate (6.5M model, f32, batch 1, "
          f"{NEW_TOKENS} new tokens, 2 threads)\n")
    print("| | value |\n|---|---|")
    print(f"| GGUF file | {size:.1f} MiB |")
    print(f"| tokenization of {len(text):,} characters equal to `tokenizers` | {same_tokens} |")
    print(f"| greedy tokens equal to transformers' | {equal} / {len(QUESTIONS)} prompts |")
    print(f"| hfscratch `generate` tokens/s (median) | {statistics.median(rates_hf):,.0f} |")
    print(f"| llama.cpp tokens/s (median) | {statistics.median(rates_cpp):,.0f} |")
    print(f"| **llama.cpp / hfscratch** | **{statistics.median(rates_cpp) / statistics.median(rates_hf):.2f}x** |")
    for parting in partings:
        print(f"\ngreedy paths part at {parting}")


if __name__ == "__main__":
    main()
