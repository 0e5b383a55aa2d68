"""hfscratch vs transformers' LlamaForCausalLM of the identical shape, interleaved step by step in one process.

Measures training tokens/s (fp32 and bf16 autocast; forward + backward + AdamW step), peak memory of a
training step, and generation tokens/s with the KV cache (batch 1 and 8). Prints a table with the
hfscratch/Llama ratios. Three hfscratch variants are timed against the same Llama steps:
  * `eager`: the same training step as Llama (same optimizer, logits + cross-entropy); the models are
    numerically identical, so this ratio shows framework overhead only and should sit at ~1.0;
  * `recipe`: what `recipes/pretrain.py` runs: fused AdamW and the chunked linear+cross-entropy loss
    (`skip_logits=True`: no (tokens x vocab) logits tensor);
  * `recipe+compile` (with --compile): the same plus `torch.compile` of the model (`torch_compile: true`).
Steps get `input_ids` and `labels` only (one document per row; with packed documents both models need a document
mask). Every variant runs one step in turn (the order rotates each round) and each ratio is the median of the per-round
ratios, so a change of machine load hits all of them alike instead of skewing one column.

    python benchmarks/bench_model.py                  # default 6-layer, 256-wide model, 20 training rounds, 40 generate calls
    python benchmarks/bench_model.py --quick          # 4 rounds, shorter generation
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
import transformers  # Llama is taken from it after `import hfscratch`, whose log filter drops torchao's import notes

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
        model = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(**shapes(args), head_dim=args.hidden // args.heads))
    else:
        model = HfscratchForCausalLM(HfscratchConfig(**shapes(args)))
    model.config._attn_implementation = "sdpa"
    return model


def make_optimizer(model, fused):
    # torch's fused AdamW kernel runs on CPU since 2.4; the default (foreach) is what a plain script gets.
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)


def make_train_step(model, args, dtype, recipe):
    """A closure running one full training step (forward, backward, AdamW) on a fixed random batch."""
    model.train()
    optimizer = make_optimizer(model, fused=recipe)
    x = torch.randint(0, args.vocab, (args.batch, args.seq))
    extra = {"skip_logits": True} if recipe else {}

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = model(input_ids=x, labels=x, **extra).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def peak_train_memory_mb(model, args, recipe=False):
    """Peak bytes allocated by one fp32 training step, from torch's CPU allocator profiler."""
    step = make_train_step(model, args, "fp32", recipe)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # walk allocation events in order to get the high-water mark of live bytes
    events = sorted((e for e in prof.events() if e.cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def generate_tokens_per_s(model, args, batch, new_tokens):
    model.eval()
    prompt = torch.randint(3, args.vocab, (batch, 16), generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
        elapsed = time.perf_counter() - t0
    return batch * (out.shape[1] - prompt.shape[1]) / elapsed


def interleaved(fns: dict, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each fn for every round, calling them one after another, rotating the order each round."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def paired_ratios(times: dict[str, list[float]], name: str) -> list[float]:
    """Llama's time / `name`'s time within each round: calls made seconds apart see the same machine load, so the
    round-to-round swings of a shared VM (+-15 % per generate call here) cancel instead of landing in one column."""
    return sorted(llama / other for llama, other in zip(times["llama"], times[name]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv_heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20, help="timed steps per variant (interleaved)")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--generation_rounds", type=int, default=40, help="generate calls per model and batch size (interleaved)")
    parser.add_argument("--compile", action="store_true", help="also time the recipe with torch.compile")
    parser.add_argument("--compile_mode", default=None,
                        help="torch.compile mode for --compile, e.g. max-autotune-no-cudagraphs (inductor's CPU GEMM templates)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.new_tokens, args.generation_rounds = 4, 24, 8

    variants = {"llama": ("llama", False, False), "hfscratch": ("hfscratch", False, False), "recipe": ("hfscratch", True, False)}
    if args.compile:
        variants["recipe+compile"] = ("hfscratch", True, True)
    models = {}
    for name, (kind, _, compiled) in variants.items():
        models[name] = build(kind, args)
        if compiled:
            models[name].forward = torch.compile(models[name].forward, mode=args.compile_mode)

    table: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, list[float]]] = {}  # per metric and variant: the sorted per-round ratios
    for dtype in ("fp32", "bf16"):
        steps = {name: make_train_step(models[name], args, dtype, recipe) for name, (_, recipe, _) in variants.items()}
        times = interleaved(steps, args.rounds, warmup=2)
        table[f"train tok/s {dtype}"] = {name: args.batch * args.seq / statistics.median(t) for name, t in times.items()}
        ratios[f"train tok/s {dtype}"] = {name: paired_ratios(times, name) for name in times if name != "llama"}
        del steps
        gc.collect()
    for batch in (1, 8):
        gens = {name: (lambda m=models[name], b=batch: generate_tokens_per_s(m, args, b, args.new_tokens)) for name in ("llama", "hfscratch")}
        # Generation is a few ms of small GEMVs and Python per token: one call swings +-15 % on a shared VM, so it
        # gets more rounds than training to pin the median ratio down.
        times = interleaved(gens, max(2, args.generation_rounds), warmup=1)
        # tokens/s from the median wall time of one generate call
        table[f"generate tok/s b{batch}"] = {name: batch * args.new_tokens / statistics.median(t) for name, t in times.items()}
        ratios[f"generate tok/s b{batch}"] = {"hfscratch": paired_ratios(times, "hfscratch")}
    del models
    gc.collect()
    table["peak train MB (fp32 step)"] = {
        "llama": peak_train_memory_mb(build("llama", args), args),
        "hfscratch": peak_train_memory_mb(build("hfscratch", args), args),
        "recipe": peak_train_memory_mb(build("hfscratch", args), args, recipe=True),
    }

    n_params = sum(p.numel() for p in build("hfscratch", args).parameters())
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"model: {n_params/1e6:.1f}M params, hidden {args.hidden}, layers {args.layers}, heads {args.heads}/{args.kv_heads} kv, "
          f"vocab {args.vocab}; train batch {args.batch}x{args.seq}; medians of {args.rounds} interleaved steps\n")
    columns = [name for name in variants if name != "llama"]
    header = f"| {'metric':<26} | {'llama':>9} | " + " | ".join(f"{c:>14} | {'ratio':>5}" for c in columns) + " |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for metric, row in table.items():
        cells = []
        for c in columns:
            if c in row:
                # timed metrics: the median of the per-round ratios; memory: the plain ratio of one measurement each
                ratio = statistics.median(ratios[metric][c]) if metric in ratios else row[c] / row["llama"]
                cells.append(f"{row[c]:14.1f} | {ratio:5.2f}")
            else:
                cells.append(f"{'':>14} | {'':>5}")
        print(f"| {metric:<26} | {row['llama']:9.1f} | " + " | ".join(cells) + " |")
    print("\nratio = median over rounds of Llama's time / the variant's time in the same round; spread of those ratios "
          "(quartiles, with the share of rounds the variant was faster):")
    for metric, by_variant in ratios.items():
        for c, rs in by_variant.items():
            q1, _, q3 = statistics.quantiles(rs, n=4)
            print(f"  {metric:<26} {c:<15} {q1:.2f}-{q3:.2f}  faster in {sum(r > 1 for r in rs)}/{len(rs)} rounds")
    print(f"\n(max RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
