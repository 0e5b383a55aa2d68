"""Evaluate a model with lm-eval (`simple_evaluate` + `HFLM`, which batch, left-pad and use the KV cache).

lm-eval keeps only the last `context - max_gen_toks` prompt tokens, so a generate_until task whose `max_gen_toks`
leaves no room for its longest prompt gets it lowered to `context - longest prompt` (announced, and recorded in
results["hfscratch"]["generation_budget"]); below MIN_FITTED_GEN_TOKS that is a one-line ConfigError instead.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..loading import load_for_inference
from .intrinsic import model_max_length, read_text_file, score_texts
from .reports import (
    add_eval_to_model_card,
    flatten_results,
    record_training_eval,
    training_progress,
    write_eval_results,
)
from .tasks import load_planned_tasks, plan_tasks

# A fitted generation budget below this many tokens is refused: the answer would be cut off before it starts.
MIN_FITTED_GEN_TOKS = 16

# lm-eval logs a generic "Custom kwargs can be passed to --metadata" warning for every custom_dataset task.
logging.getLogger("lm_eval.api.task").addFilter(lambda rec: "Custom kwargs can be passed" not in rec.getMessage())
# HFLM warns twice whenever it is handed a loaded model, which is how every evaluation here runs: that model arguments
# given as strings are ignored (none are given) and that it skips its own multi-process setup (one process here).
LOADED_MODEL_NOTES = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model")
logging.getLogger("lm_eval.models.huggingface").addFilter(
    lambda rec: not rec.getMessage().startswith(LOADED_MODEL_NOTES))


def fit_generation_budget(task: str, longest_prompt: int, requested: int, context: int,
                          context_source: str = "max_position_embeddings") -> int:
    """`requested` if the longest prompt still fits beside it in `context`, else `context - longest_prompt` if that is
    at least MIN_FITTED_GEN_TOKS (or `requested`, if smaller); otherwise a ConfigError naming the fixes."""
    room = context - longest_prompt
    if requested <= room:
        return requested
    if room >= min(MIN_FITTED_GEN_TOKS, requested):
        return room
    where = f"the {context}-token context ({context_source})"
    problem = (f"is longer than {where}" if room <= 0
               else f"leaves only {room} of {where} for the answer (at least {min(MIN_FITTED_GEN_TOKS, requested)} needed)")
    longer = "a larger --max_length" if context_source == "--max_length" else "a model with a longer context"
    raise ConfigError(f"task {task}: its longest prompt ({longest_prompt} tokens, few-shot examples and any chat "
                      f"template included) {problem}; use fewer few-shot examples (--num_fewshot 0), a zero-shot "
                      f"variant of the task, or {longer}")


@functools.cache  # one class per process, built on first use: importing lm-eval's HF model costs seconds
def _budget_fitting_hflm():
    """lm-eval's HFLM whose generate_until first fits each task's max_gen_toks to the context (`fit_generation_budget`)."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.utils import normalize_gen_kwargs

    class BudgetFittingHFLM(HFLM):
        context_source = "max_position_embeddings"
        announce = True

        def generate_until(self, requests, disable_tqdm: bool = False):
            by_task: dict[str, list] = {}
            for request in requests:
                by_task.setdefault(str(request.task_name), []).append(request)
            budgets = self.__dict__.setdefault("generation_budgets", {})
            for task, task_requests in by_task.items():
                longest = max(len(self.tok_encode(r.args[0])) for r in task_requests)
                requested = max(int(normalize_gen_kwargs(r.args[1], self.max_gen_toks)["max_gen_toks"])
                                for r in task_requests)
                used = fit_generation_budget(task, longest, requested, self.max_length, self.context_source)
                if used < requested:
                    for r in task_requests:
                        r.args[1]["max_gen_toks"] = used  # the request's own copy of the task's generation_kwargs
                    if self.announce:
                        print(f"info: {task}: max_gen_toks {requested} -> {used}, so its longest prompt ({longest} tokens) "
                              f"fits the {self.max_length}-token context ({self.context_source})", file=sys.stderr, flush=True)
                budgets[task] = {"max_gen_toks": used, "requested_max_gen_toks": requested, "longest_prompt_tokens": longest,
                                 "context": self.max_length, "lowered": used < requested}
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    return BudgetFittingHFLM


def evaluate_model(model_or_path, tokenizer=None, tasks: list[str] | str = (), limit: int | float | None = None,
                   num_fewshot: int | None = None, batch_size: int | str = 8,
                   data_dir: str | os.PathLike | None = None, apply_chat_template: bool = False,
                   output_dir: str | os.PathLike | None = None, device: str | None = None, *,
                   gen_kwargs: dict | None = None, include_path: list[str | os.PathLike] | None = None,
                   bpb_files: list[str | os.PathLike] | None = None, max_length: int | None = None,
                   stride: int | None = None, dtype: str | None = None, trust_remote_code: bool = False,
                   log_samples: bool = False, bootstrap_iters: int = 1000, seed: int = 1234,
                   update_model_card: bool = False, training_tokens: int | None = None, verbose: bool = True) -> dict:
    """Run lm-eval tasks (and optionally bits-per-byte on text files) on one model; returns lm-eval's results dict,
    plus an "hfscratch" entry: the tasks run (stock names mapped to local copies), intrinsic metrics, training
    progress and the files written."""
    from lm_eval import simple_evaluate

    if isinstance(limit, float) and limit.is_integer() and limit >= 1:
        limit = int(limit)
    if limit is not None and limit <= 0:
        raise ConfigError(f"--limit must be positive (a count, or a fraction below 1), got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise ConfigError(f"--num_fewshot must be 0 or more, got {num_fewshot}")
    task_list = [t for t in (tasks.split(",") if isinstance(tasks, str) else list(tasks)) if t.strip()]
    if not task_list and not bpb_files:
        raise ConfigError("nothing to evaluate: pass --tasks (e.g. gsm8k_local,hellaswag_local) and/or --bpb FILE")

    # Check names, YAMLs and data before loading a model: those mistakes should cost no time.
    plan = loaded = None
    if task_list:
        plan = plan_tasks(task_list, data_dir=data_dir, include_path=include_path)
        loaded = load_planned_tasks(plan)

    model, tok = load_for_inference(model_or_path, tokenizer, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    if apply_chat_template and not getattr(tok, "chat_template", None):
        raise ConfigError("--apply_chat_template needs a tokenizer with a chat template; this one has none (aligned models from `hfscratch sft` have one)")
    context = max_length or model_max_length(model)

    info: dict[str, Any] = {"model": str(model_or_path) if isinstance(model_or_path, (str, Path)) else type(model_or_path).__name__}
    if plan is not None:
        info.update(tasks=plan.names, renamed=plan.renamed, data_dir=str(plan.data_dir) if plan.data_dir else None)

    was_training = getattr(model, "training", False)
    # lm-eval bounds each generation by max_length = prompt + budget; a max_new_tokens saved in the model's
    # generation config (pretraining writes 256) would take precedence over that budget, so it is set aside here.
    generation_config = getattr(model, "generation_config", None)
    saved_max_new_tokens = getattr(generation_config, "max_new_tokens", None)
    results: dict[str, Any] = {}
    try:
        if saved_max_new_tokens is not None:
            generation_config.max_new_tokens = None
        if plan is not None:
            lm = _budget_fitting_hflm()(pretrained=model, tokenizer=tok, backend="causal", batch_size=batch_size,
                                        max_length=max_length)
            lm.context_source, lm.announce = ("--max_length" if max_length else "max_position_embeddings"), verbose
            results = simple_evaluate(
                model=lm, tasks=list(loaded["tasks"].values()) if not loaded["groups"] else plan.names,
                task_manager=plan.task_manager, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
                apply_chat_template=apply_chat_template, fewshot_as_multiturn=apply_chat_template, gen_kwargs=gen_kwargs,
                log_samples=log_samples, bootstrap_iters=bootstrap_iters, random_seed=seed, numpy_random_seed=seed,
                torch_random_seed=seed, fewshot_random_seed=seed, verbosity="WARNING" if not verbose else None,
            ) or {}
            budgets = getattr(lm, "generation_budgets", None)
            if budgets:  # what was generated with; lm-eval's config copy still shows the task's own max_gen_toks
                info["generation_budget"] = budgets
                for task, budget in budgets.items():
                    generation_kwargs = (results.get("configs", {}).get(task) or {}).get("generation_kwargs")
                    if budget["lowered"] and isinstance(generation_kwargs, dict):
                        generation_kwargs["max_gen_toks"] = budget["max_gen_toks"]
        if bpb_files:
            intrinsic = {}
            for path in bpb_files:
                text = read_text_file(path)
                window = int(max_length or min(context, 2048))
                step = int(stride or max(1, window // 2))
                scores = score_texts(model, tok, [text], max_length=window, stride=step, batch_size=4, progress=verbose)
                intrinsic[Path(path).name] = {**scores.as_dict(), "max_length": window, "stride": step, "file": str(path)}
            info["intrinsic"] = intrinsic
    finally:
        model.train(was_training)
        if saved_max_new_tokens is not None:
            generation_config.max_new_tokens = saved_max_new_tokens

    if training_tokens is not None:
        info["training_tokens"] = int(training_tokens)
    elif isinstance(model_or_path, (str, Path)) and Path(model_or_path).is_dir():
        info.update({f"training_{k}": v for k, v in training_progress(model_or_path).items()})
    results["hfscratch"] = info
    if output_dir is not None:
        info["files"] = [str(p) for p in write_eval_results(results, output_dir)]
    if update_model_card:
        if not (isinstance(model_or_path, (str, Path)) and Path(model_or_path).is_dir()):
            raise ConfigError("--write_model_card needs a local model folder to write README.md into")
        info["model_card"] = str(add_eval_to_model_card(model_or_path, results))
    return results


def run_training_eval(model, tokenizer, tasks: list[str], limit: int, data_dir: str | None, *,
                      step: int | None = None, tokens: int | None = None, run_dir: str | os.PathLike | None = None,
                      writer=None, batch_size: int = 8, max_gen_toks: int | None = None) -> dict[str, float]:
    """The pretraining loop's hook: a small lm-eval suite with `limit` rows per task on the live (unwrapped) model.
    Returns {"hellaswag_local/acc_norm": x, ...}, also logged to `writer` and added to run_dir/eval_history.jsonl."""
    gen_kwargs = {"max_gen_toks": max_gen_toks} if max_gen_toks else None
    # evaluate_model restores the model's train/eval mode
    results = evaluate_model(model, tokenizer, tasks=tasks, limit=limit, batch_size=batch_size, data_dir=data_dir,
                             gen_kwargs=gen_kwargs, bootstrap_iters=0, verbose=False)
    flat = flatten_results(results)
    if writer is not None:
        for name, value in flat.items():
            writer.add_scalar(f"eval/{name}", value, global_step=step)
    if run_dir is not None:
        record_training_eval(run_dir, flat, step=step, tokens=tokens)
    return flat
