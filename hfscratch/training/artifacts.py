"""What a run leaves besides checkpoints: `run_config.json` (marks a run folder), `metrics.json` and `final/`
(save_pretrained + tokenizer, generation config, model card, loss curve, `training_metrics.json`; written to
`.tmp-final` and renamed when complete).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from ..atomic import save_figure_atomically, write_file_atomically
from ..errors import ConfigError
from ..hub import push_folder
from ..model_card import write_model_card
from . import checkpoint as ckpt
from .config import TrainConfig, flat_config

RUN_MARKER = "run_config.json"


def prepare_output_dir(output_dir: Path, args: TrainConfig, is_main: bool) -> None:
    """Refuse to mix two runs in one folder; `--overwrite_output_dir` removes only this tool's artifacts."""
    if args.resume_from_checkpoint:
        return
    holds_run = any((output_dir / name).exists() for name in (RUN_MARKER, ckpt.CHECKPOINT_DIR, "final"))
    if holds_run and not args.overwrite_output_dir:
        raise ConfigError(f"{output_dir} already holds a run; pass --overwrite_output_dir to replace it, "
                          "--resume_from_checkpoint latest to continue it, or --run_name NEW for a separate run")
    if holds_run and is_main:
        for name in (ckpt.CHECKPOINT_DIR, "final", ".tmp-final", "logs"):
            shutil.rmtree(output_dir / name, ignore_errors=True)
        for name in (RUN_MARKER, "metrics.json"):
            (output_dir / name).unlink(missing_ok=True)


def write_run_config(trainer) -> None:
    """`run_config.json`: every argument, the batch plan and the model config (main process)."""
    if trainer.accelerator.is_main_process:
        config = {**dataclasses.asdict(trainer.config), "plan": dataclasses.asdict(trainer.plan),
                  "world_size": trainer.accelerator.num_processes, "model_config": trainer.unwrapped.config.to_dict()}
        write_file_atomically(trainer.output_dir / RUN_MARKER, json.dumps(config, indent=1, default=str))


def final_metrics(trainer) -> dict[str, float]:
    """The last validation metrics (`val_*`), the last finite training loss and the run's totals."""
    metrics = {k.replace("eval/", "val_"): v for k, v in trainer.last_eval.items()}
    finite = [v for _, v in trainer.loss_history if v is not None]
    return {**metrics, "train_loss": finite[-1] if finite else float("nan"), "steps": trainer.step, "tokens_seen": trainer.tokens_seen,
            "train_time_s": round(trainer.train_time, 2), "skipped_steps": len(trainer.skipped_steps),
            "tokens_per_second": round(trainer.tokens_seen / max(trainer.train_time, 1e-9), 1)}


def save_final(trainer) -> Path | None:
    """`<output_dir>/final/`: save_pretrained + tokenizer + generation config + model card + loss curve."""
    acc, args, tokenizer = trainer.accelerator, trainer.args, trainer.tokenizer
    final, tmp = trainer.output_dir / "final", trainer.output_dir / ".tmp-final"
    backend, model = trainer.backend, trainer.unwrapped
    gen = model.generation_config  # sampling defaults for chat/serve, written by save_pretrained
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    gen.do_sample, gen.temperature, gen.top_k, gen.max_new_tokens = True, 0.8, 50, 256
    state_dict = backend.gather_state_dict()
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    try:
        backend.write_pretrained(tmp, state_dict)  # every rank: a tensor-parallel save ends at a barrier
    except OSError as err:
        failure = err
    else:
        failure = None
    if not acc.is_main_process:
        acc.wait_for_everyone()
        return final
    metrics = trainer.final_metrics()
    try:
        if failure is not None:
            raise failure
        tokenizer.save_pretrained(tmp)
        png = plot_loss_curve([(s, v) for s, v in trainer.loss_history if v is not None], trainer.validation_history, tmp / "loss_curve.png",
                              title=f"{args.run_name}: {trainer.tokens_seen:,} tokens", tokens_per_step=trainer.plan.tokens_per_step)
        (tmp / "training_metrics.json").write_text(json.dumps({"metrics": metrics, "loss_history": trainer.loss_history, "validation_history": trainer.validation_history, "skipped_steps": trainer.skipped_steps}, indent=1), encoding="utf-8")
        training_config = {**flat_config(trainer.config), **{f"plan_{k}": v for k, v in dataclasses.asdict(trainer.plan).items()}, "world_size": acc.num_processes}
        write_model_card(tmp, training_config=training_config, metrics=metrics, data=card_data_summary(trainer.data.manifest),
                         loss_curve_png=str(png), extra={"model_name": args.run_name, "repo_id": args.hub_model_id or f"path/to/{final.name}",
                                                "sample generation": repr(trainer.last_sample[:300])})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_file_atomically(trainer.output_dir / "metrics.json", json.dumps(metrics, indent=1))
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ckpt.disk_write_error(err, final, (ckpt.list_checkpoints(trainer.output_dir) or [None])[-1]) from None
    finally:
        acc.wait_for_everyone()
    if args.push_to_hub:
        push_folder(str(final), args.hub_model_id, private=args.hub_private, commit_message=f"final model: {trainer.tokens_seen:,} tokens", run_as_future=True)
    return final


def card_data_summary(manifest: dict | None) -> dict | None:
    """The facts of a prepared-data manifest a model card reader wants (not the whole manifest)."""
    if not manifest:
        return None
    splits, tokenizer, sources = manifest.get("splits") or {}, manifest.get("tokenizer") or {}, manifest.get("sources") or []
    summary = {
        "dataset": manifest.get("name"),
        "sources": ", ".join(str(s.get("path", s) if isinstance(s, dict) else s) for s in sources)
        or "embedded synthetic math (hfscratch.data.synthetic_math)",
        "train tokens": f"{splits['train']['tokens']:,}" if "tokens" in splits.get("train", {}) else None,
        "validation tokens": f"{splits['validation']['tokens']:,}" if "tokens" in splits.get("validation", {}) else None,
        "block size": (manifest.get("pack") or {}).get("block_size"),
        "tokenizer": f"byte-level BPE, vocab {tokenizer['vocab_size']}" if "vocab_size" in tokenizer else None,
        "bytes per token (held out)": round(tokenizer["bytes_per_token"], 3) if "bytes_per_token" in tokenizer else None,
    }
    return {k: v for k, v in summary.items() if v is not None}


def plot_loss_curve(train: list[tuple[int, float]], validation: list[tuple[int, float]], path: str | Path, title: str = "",
                    tokens_per_step: int | None = None) -> Path:
    import matplotlib  # lazily: slow to import, and the headless Agg backend must be chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, lw=0.8, alpha=0.45, color="tab:blue", label="train loss (per step)")
        window = max(1, len(losses) // 50)
        if window > 1:
            smooth = [sum(chunk) / len(chunk) for chunk in (losses[max(0, i - window + 1) : i + 1] for i in range(len(losses)))]
            ax.plot(steps, smooth, lw=1.6, color="tab:blue", label=f"train loss ({window}-step mean)")
    if validation:
        steps, losses = zip(*validation)
        ax.plot(steps, losses, "o-", lw=1.6, ms=4, color="tab:orange", label="validation loss")
    ax.set_xlabel("optimizer step" + (f" ({tokens_per_step:,} tokens each)" if tokens_per_step else ""))
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title or "pretraining loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure_atomically(fig, path)
    plt.close(fig)
    return Path(path)
