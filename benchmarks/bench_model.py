"""hfscratch vs transformers' LlamaForCausalLM of the identical shape, alternated in one process.

Measures training tokens/s (fp32 and bf16 autocast; forward + backward + AdamW step), peak memory of a
training step, and generation tokens/s with the KV cache (batch 1 and 8). Prints a table with the
hfscratch/Llama ratios. Two hfscratch columns are reported honestly:
  * `eager`: the same training step as Llama (same optimizer); the models are numerically identical, so
    this ratio shows framework overhead only and should sit at ~1.0;
  * `recipe`: what `recipes/pretrain.py` runs (fused AdamW, torch.compile of the model when --compile).

    python benchmarks/bench_model.py                  # default 6-layer, 256-wide model
    python benchmarks/bench_model.py --quick          # fewer steps
    python benchmarks/bench_model.py --compile        # also time torch.compile (slow to warm up on CPU)
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hfscratch import HfscratchConfig, HfscratchForCausalLM


def shapes(args):
    return dict(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3 // 64 * 64 + 64,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048, tie_word_embeddings=True,
    )


def build(kind, args):
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shapes(args), head_dim=args.hidden // args.heads))
    else:
        model = HfscratchForCausalLM(HfscratchConfig(**shapes(args)))
    model.config._attn_implementation = "sdpa"
    return model


def make_optimizer(model, fused):
    # torch's fused AdamW kernel runs on CPU since 2.4; the default (foreach) is what a plain script gets.
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)


def train_tokens_per_s(model, args, dtype, fused, steps):
    model.train()
    optimizer = make_optimizer(model, fused)
    x = torch.randint(0, args.vocab, (args.batch, args.seq))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up (and compilation)
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return args.batch * args.seq / statistics.median(times)


def peak_train_memory_mb(model, args):
    """Peak bytes allocated by one fp32 training step, from torch's CPU allocator profiler."""
    model.train()
    x = torch.randint(0, args.vocab, (args.batch, args.seq))
    optimizer = make_optimizer(model, fused=False)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    # walk allocation events in order to get the high-water mark of live bytes
    events = sorted((e for e in prof.events() if e.cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def generate_tokens_per_s(model, args, batch, new_tokens):
    model.eval()
    prompt = torch.randint(3, args.vocab, (batch, 16))
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
        t0 = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
        elapsed = time.perf_counter() - t0
    return batch * (out.shape[1] - prompt.shape[1]) / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv_heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two models")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile for the recipe column")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds, args.new_tokens = 3, 1, 24

    results: dict[str, dict[str, list[float]]] = {"llama": {}, "hfscratch": {}, "hfscratch-recipe": {}}

    def record(kind, metric, value):
        results[kind].setdefault(metric, []).append(value)

    for _ in range(args.rounds):
        for kind in ("llama", "hfscratch"):
            model = build(kind, args)
            for dtype in ("fp32", "bf16"):
                record(kind, f"train tok/s {dtype}", train_tokens_per_s(model, args, dtype, fused=False, steps=args.steps))
            for batch in (1, 8):
                record(kind, f"generate tok/s b{batch}", generate_tokens_per_s(model, args, batch, args.new_tokens))
            del model
            gc.collect()
        model = build("hfscratch", args)
        for dtype in ("fp32", "bf16"):
            record("hfscratch-recipe", f"train tok/s {dtype}", train_tokens_per_s(model, args, dtype, fused=True, steps=args.steps))
        if args.compile:
            compiled = build("hfscratch", args)
            compiled.forward = torch.compile(compiled.forward)
            for dtype in ("fp32", "bf16"):
                record("hfscratch-recipe", f"train tok/s {dtype} compiled", train_tokens_per_s(compiled, args, dtype, fused=True, steps=args.steps))
        del model
        gc.collect()
    for kind in ("llama", "hfscratch"):
        record(kind, "peak train MB", peak_train_memory_mb(build(kind, args), args))

    n_params = sum(p.numel() for p in build("hfscratch", args).parameters())
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"model: {n_params/1e6:.1f}M params, hidden {args.hidden}, layers {args.layers}, heads {args.heads}/{args.kv_heads} kv, "
          f"vocab {args.vocab}; train batch {args.batch}x{args.seq}; medians over {args.rounds} alternations\n")
    header = f"| {'metric':<28} | {'llama':>10} | {'hfscratch':>10} | {'ratio':>6} | {'hfscratch recipe':>16} | {'ratio':>6} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    metrics = list(results["llama"])
    metrics += [m for m in results["hfscratch-recipe"] if m not in metrics]
    for metric in metrics:
        base = statistics.median(results["llama"][metric]) if metric in results["llama"] else None
        ours = statistics.median(results["hfscratch"][metric]) if metric in results["hfscratch"] else None
        recipe = statistics.median(results["hfscratch-recipe"][metric]) if metric in results["hfscratch-recipe"] else None
        base_for_recipe = base if base is not None else statistics.median(results["llama"][metric.replace(" compiled", "")])
        fmt = lambda v: f"{v:10.1f}" if v is not None else f"{'':>10}"  # noqa: E731
        ratio = f"{ours / base:6.2f}" if (ours and base) else f"{'':>6}"
        if metric == "peak train MB":
            ratio = f"{ours / base:6.2f}"
        rratio = f"{recipe / base_for_recipe:6.2f}" if recipe else f"{'':>6}"
        print(f"| {metric:<28} | {fmt(base)} | {fmt(ours)} | {ratio} | {(f'{recipe:16.1f}' if recipe else ' ' * 16)} | {rratio} |")
    print(f"\n(max RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
