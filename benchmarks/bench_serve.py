"""Load test of `hfscratch serve`: N concurrent streamed chat requests through the official `openai` client.

Starts the server as a subprocess on a model folder (default: a fresh 6.5M-parameter hfscratch model, the shape
issue #16 measures, with a byte-level tokenizer trained on TinyShakespeare), fires `--requests` streamed
`/v1/chat/completions` at once, and reports completed requests, aggregate generated tokens/s, time to first token
and latency (p50/p95). The peer, timed in the same run: the same requests answered one after another by
transformers' `model.generate` in this process (what a server without batching does), as a ratio.

    python benchmarks/bench_serve.py                       # 32 requests x 64 new tokens
    python benchmarks/bench_serve.py --model outputs/pretrain-tiny/final --requests 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import torch

from hfscratch import HfscratchConfig, HfscratchForCausalLM
from hfscratch.loading import load_for_inference
from hfscratch.tokenizer import ensure_chat_template, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["Who goes there?", "What news from the court?", "Speak of the king.", "Where is the queen tonight?",
             "Why weeps the fool?", "When shall we meet again?", "How fares the army?", "What light is that?"]


def build_model(folder: Path) -> None:
    """A 6.5M-parameter model (6 layers, width 256) with a 4,096-token BPE from TinyShakespeare."""
    text = (REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    tokenizer = ensure_chat_template(train_tokenizer(iter(text.splitlines()), 4096, folder / "tok"))
    config = HfscratchConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=704, num_hidden_layers=6,
                             num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                             tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = HfscratchForCausalLM(config).eval()
    with torch.no_grad():  # never stop early on eos/role tokens: every request generates its full budget
        model.lm_head.weight[sorted(set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder))] = 0
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def one_request(client, messages, max_tokens: int) -> dict:
    start = time.perf_counter()
    first, pieces = None, 0
    stream = await client.chat.completions.create(model="bench", messages=messages, temperature=0, max_tokens=max_tokens,
                                                  stream=True, stream_options={"include_usage": True})
    tokens = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            pieces += 1
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "latency": end - start, "tokens": tokens, "end": end}


async def load_test(base: str, requests: int, max_tokens: int) -> tuple[list[dict], float]:
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=600)
    jobs = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(requests)]
    start = time.perf_counter()
    results = await asyncio.gather(*(one_request(client, m, max_tokens) for m in jobs), return_exceptions=True)
    return results, time.perf_counter() - start


def sequential_generate(folder: Path, requests: int, max_tokens: int) -> tuple[float, int]:
    model, tokenizer = load_for_inference(str(folder), device="cpu")
    total, start = 0, time.perf_counter()
    for i in range(requests):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                            add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        total += out.shape[1] - ids.shape[1]
    return time.perf_counter() - start, total


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: build the 6.5M-parameter one)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.model) if args.model else Path(scratch) / "model"
        if not args.model:
            build_model(Path(scratch))
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "hfscratch.cli", "serve", str(folder), "--port", str(port),
                                   "--served-model-name", "bench", "--device", "cpu"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            asyncio.run(load_test(base, 2, 4))  # warm-up
            results, wall = asyncio.run(load_test(base, args.requests, args.max_tokens))
        finally:
            server.terminate()
            server.wait(timeout=30)
        done = [r for r in results if isinstance(r, dict) and r["tokens"] > 0]
        failed = [r for r in results if not isinstance(r, dict)]
        tokens = sum(r["tokens"] for r in done)
        seq_wall, seq_tokens = sequential_generate(folder, args.requests, args.max_tokens)

    params = sum(p.numel() for p in HfscratchForCausalLM.from_pretrained(folder).parameters()) if args.model else 6.5e6
    print(f"# hfscratch serve load test: {args.requests} concurrent streamed chat requests x {args.max_tokens} new tokens")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"model {params / 1e6:.1f}M parameters\n")
    print("| | value |\n|---|---|")
    print(f"| requests completed / lost | {len(done)} / {args.requests - len(done)} ({len(failed)} errors) |")
    print(f"| wall time | {wall:.2f} s |")
    print(f"| generated tokens/s (all requests) | {tokens / wall:,.0f} |")
    print(f"| time to first token p50 / p95 | {quantile([r['ttft'] for r in done], .5):.2f} / "
          f"{quantile([r['ttft'] for r in done], .95):.2f} s |")
    print(f"| latency p50 / p95 | {quantile([r['latency'] for r in done], .5):.2f} / "
          f"{quantile([r['latency'] for r in done], .95):.2f} s |")
    print(f"| peer: the same requests one by one, `model.generate` in-process | {seq_tokens / seq_wall:,.0f} tokens/s "
          f"({seq_wall:.2f} s) |")
    print(f"| **ratio served / sequential generate** | **{(tokens / wall) / (seq_tokens / seq_wall):.2f}x** |")
    if failed:
        print("\nerrors:", *{repr(e)[:200] for e in failed}, sep="\n  ")


if __name__ == "__main__":
    main()
