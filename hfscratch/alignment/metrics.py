"""Held-out measurements for the alignment stages, computed the same way before and after training.

* ``generation_metrics``: greedy generation through the chat template -> exact-match of the final answer,
  the share of answers that end with eos (the model stops by itself), the share in ``#### N`` format and the
  mean GRPO reward (correctness + weighted format), on prompts with a verifiable ``answer``.
* ``gsm8k_format_metrics``: exact-match on the same questions as plain ``Question: ...\nAnswer:`` prompts (lm-eval's
  gsm8k prompt, no chat template).
* ``sampled_generation_metrics``: the same reward and exact-match over ``k`` *sampled* completions per prompt
  (temperature 1, seeded): the quantity GRPO optimises, which greedy decoding only shows at its argmax.
* ``completion_logprobs``: summed log-probability of an assistant completion given its prompt.
* ``preference_metrics``: DPO's chosen-minus-rejected log-probability margin and win rate on held-out pairs
  (win rate = share of pairs with log p(chosen) > log p(rejected); also per ``pair_kind`` when rows have one).
* ``answer_loglik``: mean per-token log-likelihood of reference assistant answers (eos included).
"""

from __future__ import annotations

import re

import torch

from .rewards import MARKER, answers_match, extract_final_answer, format_reward

_CALCULATOR = re.compile(r"<<[^<>\n]*=[^<>\n]*>>")  # a GSM8K calculator annotation <<a+b=c>>
_RESTATED = re.compile(r"^The answer is [^\n]*\.$", re.MULTILINE)  # the redundant closing line DPO's style pairs reject


def _unwrap(model):
    return getattr(model, "module", model)


def _prompt_ids(tokenizer, prompt_messages) -> list[int]:
    return tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=True, return_dict=False)


@torch.no_grad()
def generate_completions(model, tokenizer, prompts, max_new_tokens: int = 128, batch_size: int = 32, num_samples: int = 0,
                         temperature: float = 1.0, seed: int = 0) -> list[tuple[str, bool]]:
    """Completions for chat prompts: (text without special tokens, whether generation ended with eos).

    Greedy when ``num_samples`` is 0; otherwise ``num_samples`` completions per prompt (prompt-major order), sampled
    from the full distribution at ``temperature`` with a private seeded RNG (the caller's RNG state is untouched)."""
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results: list[tuple[str, bool]] = []
    sampling = {"do_sample": False} if num_samples <= 0 else {
        "do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0, "num_return_sequences": num_samples}
    if num_samples > 0:
        batch_size = max(1, batch_size // num_samples)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            batch = [_prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
            results += _generate_batch(model, tokenizer, batch, device, max_new_tokens, sampling)
    model.train(was_training)
    return results


def _generate_batch(model, tokenizer, batch: list[list[int]], device, max_new_tokens, sampling) -> list[tuple[str, bool]]:
    eos_id = tokenizer.eos_token_id
    width = max(len(ids) for ids in batch)
    # Left padding so every prompt ends where generation starts.
    input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        attention_mask[i, width - len(ids) :] = 1
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), max_new_tokens=max_new_tokens,
                         eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id, **sampling)
    results = []
    for row in out[:, width:].tolist():
        stopped = eos_id in row
        if stopped:
            row = row[: row.index(eos_id)]
        results.append((tokenizer.decode(row, skip_special_tokens=True), stopped))
    return results


def generation_metrics(model, tokenizer, examples, max_new_tokens: int = 128, format_weight: float = 0.2,
                       batch_size: int = 32) -> dict:
    """Exact match, calculator-annotation and restated-line rates, eos-stop rate, format rate and mean reward (greedy decoding) over rows
    with ``prompt`` (messages) and ``answer``."""
    prompts = [row["prompt"] for row in examples]
    answers = [str(row["answer"]) for row in examples]
    outputs = generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    texts = [text for text, _ in outputs]
    correct = [float(answers_match(extract_final_answer(t), a)) for t, a in zip(texts, answers)]
    formatted = format_reward(texts)
    n = max(len(examples), 1)
    return {
        "exact_match": sum(correct) / n,
        "annotated_rate": sum(bool(_CALCULATOR.search(t)) for t in texts) / n,
        "restated_rate": sum(bool(_RESTATED.search(t)) for t in texts) / n,
        "eos_rate": sum(stopped for _, stopped in outputs) / n,
        "format_rate": sum(formatted) / n,
        "mean_reward": sum(c + format_weight * f for c, f in zip(correct, formatted)) / n,
        "n": len(examples),
        "samples": [{"prompt": p[-1]["content"], "completion": t, "answer": a} for p, t, a in list(zip(prompts, texts, answers))[:3]],
    }


GSM8K_PROMPT = "Question: {question}\nAnswer:"  # lm-eval's gsm8k doc_to_text (eval/tasks/gsm8k_local.yaml), zero-shot


@torch.no_grad()
def gsm8k_format_metrics(model, tokenizer, examples, max_new_tokens: int = 128, batch_size: int = 32) -> dict:
    """Exact-match on the same questions as plain-text GSM8K prompts (``Question: ...\nAnswer:``, no chat template).

    This is the prompt lm-eval's gsm8k task uses (zero-shot here: the tiny checkpoints have 256-token contexts),
    and the format of the pretraining corpus. Greedy; the answer is cut at eos or at the next ``Question:`` (lm-eval's
    stop sequence); ``strict`` needs a ``#### N`` line, ``flexible`` also takes the last number."""
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    questions = [row["prompt"][-1]["content"] for row in examples]
    texts = []
    for start in range(0, len(questions), batch_size):
        batch = [bos + tokenizer(GSM8K_PROMPT.format(question=q), add_special_tokens=False)["input_ids"]
                 for q in questions[start : start + batch_size]]
        texts += [text.split("Question:")[0] for text, _ in _generate_batch(model, tokenizer, batch, device, max_new_tokens,
                                                                             {"do_sample": False})]
    model.train(was_training)
    answers = [str(row["answer"]) for row in examples]
    n = max(len(examples), 1)
    strict = sum(bool(MARKER.search(t)) and answers_match(extract_final_answer(t), a) for t, a in zip(texts, answers))
    flexible = sum(answers_match(extract_final_answer(t), a) for t, a in zip(texts, answers))
    return {"gsm8k_format_exact_match": strict / n, "gsm8k_format_flexible_match": flexible / n}


def sampled_generation_metrics(model, tokenizer, examples, num_samples: int = 8, temperature: float = 1.0,
                               max_new_tokens: int = 128, format_weight: float = 0.2, seed: int = 0, batch_size: int = 128) -> dict:
    """Mean reward and exact-match over ``num_samples`` sampled completions per prompt (what RL optimises)."""
    prompts = [row["prompt"] for row in examples]
    answers = [str(row["answer"]) for row in examples for _ in range(num_samples)]
    outputs = generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   num_samples=num_samples, temperature=temperature, seed=seed)
    texts = [text for text, _ in outputs]
    correct = [float(answers_match(extract_final_answer(t), a)) for t, a in zip(texts, answers)]
    formatted = format_reward(texts)
    n = max(len(texts), 1)
    tag = f"t{temperature:g}".replace(".", "")
    return {f"sampled_reward_{tag}": sum(c + format_weight * f for c, f in zip(correct, formatted)) / n,
            f"sampled_exact_match_{tag}": sum(correct) / n}


def _completion_token_logprobs(model, tokenizer, prompts, completions, batch_size: int = 32) -> list[torch.Tensor]:
    """Per-token log-probs of each assistant completion (its eos included), conditioned on the prompt."""
    model = _unwrap(model)
    device = next(model.parameters()).device
    pieces = []
    for prompt, completion in zip(prompts, completions):
        prompt_ids = _prompt_ids(tokenizer, prompt)
        full = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=True, return_dict=False)
        if full[: len(prompt_ids)] != prompt_ids:
            raise ValueError("the chat template is not prefix-preserving: the prompt tokens change when an answer follows")
        pieces.append((full, len(prompt_ids)))
    out = []
    for start in range(0, len(pieces), batch_size):
        batch = pieces[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, (ids, _) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention_mask[i, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        for i, (ids, prompt_len) in enumerate(batch):
            out.append(logprobs[i, prompt_len - 1 : len(ids) - 1].cpu())
    return out


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts, completions, batch_size: int = 32) -> torch.Tensor:
    """Summed log p(completion | prompt) for conversational prompts/completions."""
    return torch.stack([lp.sum() for lp in _completion_token_logprobs(model, tokenizer, prompts, completions, batch_size)])


@torch.no_grad()
def preference_metrics(model, tokenizer, pairs, batch_size: int = 32) -> dict:
    """Mean chosen-minus-rejected log-prob margin and the share of pairs where chosen is more likely."""
    was_training = _unwrap(model).training
    _unwrap(model).eval()
    prompts = [row["prompt"] for row in pairs]
    chosen = completion_logprobs(model, tokenizer, prompts, [row["chosen"] for row in pairs], batch_size)
    rejected = completion_logprobs(model, tokenizer, prompts, [row["rejected"] for row in pairs], batch_size)
    _unwrap(model).train(was_training)
    margin = chosen - rejected
    result = {"margin": margin.mean().item(), "win_rate": (margin > 0).float().mean().item(),
              "chosen_logp": chosen.mean().item(), "rejected_logp": rejected.mean().item(), "n": len(pairs)}
    if "pair_kind" in pairs.column_names:  # per kind of pair (synthetic: "slip" = correctness, "style" = annotations)
        kinds = pairs["pair_kind"]
        for kind in sorted(set(kinds)):
            mask = torch.tensor([k == kind for k in kinds])
            result[f"win_rate_{kind}"] = (margin[mask] > 0).float().mean().item()
            result[f"margin_{kind}"] = margin[mask].mean().item()
    return result


@torch.no_grad()
def answer_loglik(model, tokenizer, chats, batch_size: int = 32) -> float:
    """Mean per-token log-likelihood of the final assistant message (eos included) of each chat."""
    was_training = _unwrap(model).training
    _unwrap(model).eval()
    prompts = [row["messages"][:-1] for row in chats]
    answers = [row["messages"][-1:] for row in chats]
    token_lps = _completion_token_logprobs(model, tokenizer, prompts, answers, batch_size)
    _unwrap(model).train(was_training)
    return (torch.cat(token_lps).sum() / sum(len(t) for t in token_lps)).item()
