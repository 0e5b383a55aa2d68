"""What a finished run prints: the files produced, the quality reached, a sample, the next commands."""

from __future__ import annotations

from pathlib import Path


def print_summary(result) -> None:
    if result.final_dir is None or not result.is_main_process:
        return
    final, m = Path(result.final_dir), result.metrics
    lines = ["", "=" * 78, f"done: {m.get('steps')} steps, {m.get('tokens_seen', 0):,} tokens in {m.get('train_time_s', 0):.0f}s "
             f"({m.get('tokens_per_second', 0):,.0f} tokens/s), {m.get('skipped_steps', 0)} skipped steps"]
    if "val_loss" in m:
        lines.append(f"validation: loss {m['val_loss']:.4f} nats/token | perplexity {m['val_perplexity']:.2f} | {m['val_bits_per_byte']:.4f} bits/byte")
    lines.append(f"model folder: {final}  (AutoModelForCausalLM.from_pretrained works on it)")
    lines += [f"  {name}" for name in sorted(p.name for p in final.iterdir())]
    lines.append(f"checkpoints: {result.output_dir / 'checkpoints'}   tensorboard: tensorboard --logdir {result.output_dir / 'logs'}")
    if result.sample:
        lines.append(f"sample: {result.sample[:300]!r}")
    lines += ["next:", f"  chat:  hfscratch chat {final}",
              f"  eval:  hfscratch eval {final} --tasks arc_easy,hellaswag   (add --data_dir DIR for the offline copies)",
              f"  SFT:   hfscratch sft --model_name_or_path {final}", "=" * 78]
    print("\n".join(lines), flush=True)
