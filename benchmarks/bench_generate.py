"""Decoding speed of plain `model.generate`: hfscratch's lean loop vs transformers' LlamaForCausalLM, same weights.

Four models answer the same `generate` calls, interleaved round by round so machine noise hits all alike:
`llama` (transformers' LlamaForCausalLM with the hfscratch weights), `hfscratch-reference` (hfscratch with
`lean_decoding = False`: transformers' own per-token loop, what `generate` ran before), `hfscratch` (the lean loop
before its step is compiled: what runs for the first `compile_decoding_after` steps of a kind) and
`hfscratch-compiled` (the lean loop with its one-token step compiled, as every long-running use gets; its one-time
compile is timed apart). Measured at batch 1 and batch 8 (left-padded prompts of different lengths): new tokens/s
over `--new_tokens` greedy tokens and time to first token (a 1-token `generate`), each the median over rounds, with
Llama's time / the variant's time as the ratio. Greedy tokens must be equal across all four, seeded sampling equal
between transformers' loop and the lean loop, and reproducible compiled; the script exits 1 otherwise.

The bounds: per token the model reads every weight once (the batch-1 floor: one streaming pass over the same bytes,
a `sum` over all the matrices laid end to end; the BLAS matrix-vector products on the same matrices are timed too,
they read the weights at about half that rate on CPU) and does 2 FLOPs per parameter (the compute bound, at the
machine's measured GEMM rate).

    python benchmarks/bench_generate.py                        # 6.5M model, batch 1 and 8, 128 new tokens
    python benchmarks/bench_generate.py --gsm8k --grpo         # also lm-eval GSM8K (100 problems) and GRPO steps, lean on/off
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers  # Llama is taken from it after `import hfscratch`, whose log filter drops torchao's import notes

from hfscratch import HfscratchConfig, HfscratchForCausalLM

BENCHMARKS = Path(__file__).resolve().parent
GENERATED = "## Generated\n"
REPO = BENCHMARKS.parent


def build_models(args) -> dict:
    config = HfscratchConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                             num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                             max_position_embeddings=1024, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                             eos_token_id=2)
    torch.manual_seed(0)
    hfscratch = HfscratchForCausalLM(config).eval()
    llama_fields = transformers.LlamaConfig().to_dict()
    llama_config = transformers.LlamaConfig(**{k: v for k, v in config.to_dict().items() if k in llama_fields})
    llama = transformers.LlamaForCausalLM(llama_config).eval()
    missing = llama.load_state_dict(hfscratch.state_dict(), strict=False)
    assert not missing.missing_keys, missing
    reference = HfscratchForCausalLM(config).eval()
    reference.load_state_dict(hfscratch.state_dict())
    reference.lean_decoding = False
    hfscratch.compile_decoding_after = None
    compiled = HfscratchForCausalLM(config).eval()
    compiled.load_state_dict(hfscratch.state_dict())
    compiled.compile_decoding_after = 0
    return {"llama": llama, "hfscratch-reference": reference, "hfscratch": hfscratch, "hfscratch-compiled": compiled}


def compile_seconds(model: HfscratchForCausalLM, args) -> dict[int, float]:
    """The first call at each benchmarked batch size compiles that step: its time less a compiled call's."""
    seconds = {}
    for batch in (1, 8):
        ids, mask = prompts(batch, args.vocab)
        first = timed_generate(model, ids, mask, args.new_tokens, do_sample=False)[0]
        seconds[batch] = first - timed_generate(model, ids, mask, args.new_tokens, do_sample=False)[0]
    return seconds


def prompts(batch: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` prompts of 16 tokens; from batch 2 on, left-padded rows of 16, 12, 8, ... real tokens."""
    ids = torch.randint(3, vocab, (batch, 16), generator=torch.Generator().manual_seed(batch))
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, : 4 * (row % 4)] = 0
    return ids.masked_fill(mask == 0, 0), mask


def timed_generate(model, ids, mask, new_tokens: int, **kwargs) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         pad_token_id=0, **kwargs)
    return time.perf_counter() - start, out


def interleaved(models: dict, call, rounds: int) -> dict[str, list[float]]:
    names, times = list(models), {name: [] for name in models}
    for name in names:  # warm-up
        call(models[name])
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            times[name].append(call(models[name]))
    return times


def median_ratio(times: dict, name: str) -> float:
    return statistics.median(llama / variant for llama, variant in zip(times["llama"], times[name]))


def check_tokens(models: dict, args) -> list[str]:
    """Greedy tokens equal across all four models; seeded sampling equal between transformers' loop and the lean
    loop, and the same twice from the compiled step."""
    problems = []
    for batch in (1, 8):
        ids, mask = prompts(batch, args.vocab)
        outs = {name: timed_generate(m, ids, mask, args.new_tokens, do_sample=False)[1] for name, m in models.items()}
        for name, out in outs.items():
            if not torch.equal(out, outs["llama"]):
                problems.append(f"greedy batch {batch}: {name} differs from llama")
        sampled = {}
        for name in ("hfscratch-reference", "hfscratch"):
            torch.manual_seed(7)
            sampled[name] = timed_generate(models[name], ids, mask, args.new_tokens, do_sample=True, temperature=0.9,
                                           top_k=50, top_p=0.95)[1]
        if not torch.equal(sampled["hfscratch"], sampled["hfscratch-reference"]):
            problems.append(f"seeded sampling batch {batch}: the lean loop differs from transformers' loop")
        twice = []
        for _ in range(2):
            torch.manual_seed(7)
            twice.append(timed_generate(models["hfscratch-compiled"], ids, mask, args.new_tokens, do_sample=True,
                                        temperature=0.9, top_k=50, top_p=0.95)[1])
        if not torch.equal(*twice):
            problems.append(f"seeded sampling batch {batch}: the compiled step is not reproducible")
    return problems


def bounds(model: HfscratchForCausalLM, rounds: int = 200) -> dict:
    """Per-token floor of batch-1 decoding: one streaming read of every Linear's weights (a sum over them laid end
    to end), every Linear's BLAS matrix-vector product once, and the FLOP bound at the GEMM rate this machine
    reaches on a (256 x hidden) @ (hidden x 4 hidden) product."""
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    vectors = {w.shape[1]: torch.randn(1, 1, w.shape[1]) for w in weights}
    for _ in range(20):
        for w in weights:
            torch.nn.functional.linear(vectors[w.shape[1]], w)
    start = time.perf_counter()
    for _ in range(rounds):
        for w in weights:
            torch.nn.functional.linear(vectors[w.shape[1]], w)
    matvec_s = (time.perf_counter() - start) / rounds
    end_to_end = torch.cat([w.flatten() for w in weights])
    for _ in range(20):
        end_to_end.sum()
    start = time.perf_counter()
    for _ in range(rounds):
        end_to_end.sum()
    read_s = (time.perf_counter() - start) / rounds
    hidden = model.config.hidden_size
    a, b = torch.randn(256, hidden), torch.randn(hidden, 4 * hidden)
    for _ in range(5):
        a @ b
    start = time.perf_counter()
    for _ in range(50):
        a @ b
    gflops = 2 * 256 * hidden * 4 * hidden * 50 / (time.perf_counter() - start) / 1e9
    flops = 2 * sum(w.numel() for w in weights)
    return {"read_s": read_s, "matvec_s": matvec_s, "gflops": gflops, "flops": flops, "compute_s": flops / (gflops * 1e9),
            "weight_mb": sum(w.numel() * w.element_size() for w in weights) / 1e6}


def decode_table(models: dict, args) -> list[str]:
    variants = ["hfscratch-reference", "hfscratch", "hfscratch-compiled"]
    lines = ["| batch | metric | llama | " + " | ".join(f"{name} | ratio" for name in variants) + " |",
             "|---|---|--:|" + "--:|--:|" * len(variants)]
    for batch in (1, 8):
        ids, mask = prompts(batch, args.vocab)
        decode = interleaved(models, lambda m: timed_generate(m, ids, mask, args.new_tokens, do_sample=False)[0], args.rounds)
        first = interleaved(models, lambda m: timed_generate(m, ids, mask, 1, do_sample=False)[0], args.rounds)
        rate = {name: batch * args.new_tokens / statistics.median(t) for name, t in decode.items()}
        ttft = {name: 1e3 * statistics.median(t) for name, t in first.items()}
        lines.append(f"| {batch} | new tokens/s | {rate['llama']:.0f} | " + " | ".join(
            f"{rate[name]:.0f} | **{median_ratio(decode, name):.2f}**" for name in variants) + " |")
        lines.append(f"| {batch} | time to first token, ms | {ttft['llama']:.1f} | " + " | ".join(
            f"{ttft[name]:.1f} | {median_ratio(first, name):.2f}" for name in variants) + " |")
        print(lines[-2], lines[-1], sep="\n", file=sys.stderr)
    return lines


def gsm8k_lines(args) -> list[str]:
    """lm-eval's HFLM.generate_until on the 5-shot GSM8K requests of `bench_eval_gsm8k.py`: transformers' loop, the
    lean loop uncompiled, and the lean loop compiling its step at once (the compile counted in its time)."""
    sys.path.insert(0, str(BENCHMARKS))
    from bench_eval_gsm8k import build_checkpoint, gsm8k_requests, load

    eval_args = argparse.Namespace(data_dir=args.data_dir, vocab=4096, hidden=256, layers=4, heads=4, kv_heads=2,
                                   dtype="float32", device="cpu", batch_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_checkpoint(eval_args, Path(tmp))
        requests = gsm8k_requests(args.data_dir, args.gsm8k_limit, 128)
        lms = {name: load("hfscratch", path, eval_args) for name in ("transformers' loop", "lean loop", "compiled step")}
        lms["transformers' loop"].model.lean_decoding = False
        lms["lean loop"].model.compile_decoding_after = None
        lms["compiled step"].model.compile_decoding_after = 0
        outputs = {}

        def run(lm):
            start = time.perf_counter()
            outputs[id(lm)] = lm.generate_until(requests, disable_tqdm=True)
            return time.perf_counter() - start

        times = interleaved({name: lm for name, lm in lms.items()}, run, 1)
    same = sum(len(set(texts)) == 1 for texts in zip(*(outputs[id(lm)] for lm in lms.values())))
    before, lean, compiled = (min(times[name]) for name in lms)
    return [f"GSM8K through lm-eval ({args.gsm8k_limit} problems, 5-shot, batch 8, 128 new tokens each, 4.2M-parameter "
            f"model of bench_eval_gsm8k.py): transformers' loop {before:.1f} s, lean loop {lean:.1f} s "
            f"(**{before / lean:.2f}x**), lean loop with its step compiled at once {compiled:.1f} s, compile included "
            f"(**{before / compiled:.2f}x**); identical generations in all three {same}/{len(requests)}."]


def grpo_lines(args) -> list[str]:
    """Seconds per TRL GRPO step (8 prompts x 4 completions of up to 64 tokens, synthetic math) on a tiny model:
    transformers' loop, the lean loop uncompiled, and the lean loop compiling its step at once (compile included);
    the same seed, so every run sees the same prompts."""
    from trl import GRPOConfig, GRPOTrainer

    from hfscratch.alignment.datasets import synthetic_dataset
    from hfscratch.alignment.rewards import correctness_reward, format_reward
    from hfscratch.tokenizer import ensure_chat_template, train_tokenizer

    rows = synthetic_dataset("grpo", 64)
    texts = [m["content"] for r in rows for m in r["prompt"]] + [str(r["answer"]) for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = ensure_chat_template(train_tokenizer(texts * 20, 1024, Path(tmp) / "tok", show_progress=False))
        seconds = {}
        for variant in ("transformers' loop", "lean loop", "compiled step") * 2:
            # A config per run: transformers' Trainer sets use_cache=False on the config of the model it trains,
            # and a shared one would send every later run's generation down the cacheless path.
            config = HfscratchConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=704,
                                     num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
                                     pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
            torch.manual_seed(0)
            model = HfscratchForCausalLM(config)
            model.lean_decoding = variant != "transformers' loop"
            model.compile_decoding_after = 0 if variant == "compiled step" else None
            training = GRPOConfig(output_dir=str(Path(tmp) / "grpo"), max_steps=args.grpo_steps, seed=0,
                                  per_device_train_batch_size=32, num_generations=4, max_completion_length=64,
                                  learning_rate=1e-5, logging_steps=1, report_to=[], save_strategy="no",
                                  disable_tqdm=True, use_cpu=True, bf16=False)
            trainer = GRPOTrainer(model=model, reward_funcs=[correctness_reward, format_reward], args=training,
                                  train_dataset=rows, processing_class=tokenizer)
            start = time.perf_counter()
            trainer.train()
            seconds.setdefault(variant, []).append((time.perf_counter() - start) / args.grpo_steps)
    before, lean, compiled = (min(seconds[name]) for name in seconds)
    return [f"TRL GRPO step (32 completions of up to 64 tokens, 6.5M-shape model, {args.grpo_steps} steps, best of 2): "
            f"transformers' loop {before:.2f} s/step, lean loop {lean:.2f} s/step (**{before / lean:.2f}x**), compiled "
            f"step {compiled:.2f} s/step (**{before / compiled:.2f}x**)."]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=704)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv_heads", type=int, default=4)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved generate calls per model and setting")
    parser.add_argument("--gsm8k", action="store_true", help="also time lm-eval GSM8K generation, each loop")
    parser.add_argument("--gsm8k_limit", type=int, default=100)
    parser.add_argument("--grpo", action="store_true", help="also time TRL GRPO steps, each loop")
    parser.add_argument("--grpo_steps", type=int, default=3)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--results", default=str(BENCHMARKS / "RESULTS_generate.md"), help="'' to print only")
    args = parser.parse_args(argv)

    models = build_models(args)
    compiling = compile_seconds(models["hfscratch-compiled"], args)
    problems = check_tokens(models, args)
    limits = bounds(models["hfscratch"])
    lines = [f"### `model.generate` decoding ({args.new_tokens} new greedy tokens, fp32, "
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads)",
             "", f"Model: {args.layers} layers, hidden {args.hidden}, {args.heads}/{args.kv_heads} heads, vocab {args.vocab} "
             f"({sum(p.numel() for p in models['hfscratch'].parameters()) / 1e6:.1f}M parameters, {limits['weight_mb']:.1f} MB "
             f"of matrices read per decoding step). Medians over {args.rounds} interleaved rounds; ratio = Llama's time / "
             "the variant's.", ""]
    lines += decode_table(models, args)
    batch1 = next(line.split("|") for line in lines if line.startswith("| 1 | new tokens/s"))
    per_token = {"lean loop": 1 / float(batch1[6]), "compiled step": 1 / float(batch1[8])}
    gb_s = {key: limits["weight_mb"] / 1e3 / limits[key] for key in ("read_s", "matvec_s")}
    lines += ["", f"Bounds per token at batch 1: one streaming read of the weights takes {1e3 * limits['read_s']:.2f} ms "
              f"({1 / limits['read_s']:.0f} tok/s; {gb_s['read_s']:.0f} GB/s), the BLAS matrix-vector products on them "
              f"{1e3 * limits['matvec_s']:.2f} ms ({1 / limits['matvec_s']:.0f} tok/s; {gb_s['matvec_s']:.0f} GB/s), "
              f"the {limits['flops'] / 1e6:.1f} MFLOP at this machine's {limits['gflops']:.0f} GFLOP/s GEMM rate "
              f"{1e3 * limits['compute_s']:.2f} ms. " + " ".join(
                  f"The {name} takes {1e3 * seconds:.2f} ms a token: {seconds / limits['read_s']:.2f}x the weight-read "
                  f"floor, {seconds / limits['matvec_s']:.2f}x the BLAS products, {seconds / limits['compute_s']:.0f}x "
                  "the compute bound." for name, seconds in per_token.items()),
              "", "One-time compile of the step (first call's time less a compiled call's; torch.compile's on-disk cache "
              "makes it shorter in later processes): "
              + ", ".join(f"batch {batch} {seconds:.1f} s" for batch, seconds in compiling.items()) + ".",
              "", "Token checks: " + ("greedy tokens equal to Llama's at batch 1 and 8; seeded sampling equal to "
                                      "transformers' loop (lean) and reproducible (compiled)." if not problems else "; ".join(problems))]
    if args.gsm8k:
        lines += [""] + gsm8k_lines(args)
    if args.grpo:
        lines += [""] + grpo_lines(args)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.results:  # the hand-written summary above "## Generated" is kept
        path = Path(args.results)
        previous = path.read_text() if path.exists() else ""
        kept = previous.split(GENERATED)[0] + GENERATED if GENERATED in previous else ""
        path.write_text(kept + text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
