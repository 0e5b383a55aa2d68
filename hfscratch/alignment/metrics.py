"""Held-out measurements for the alignment stages, computed the same way before and after training: greedy and
sampled generation on verifiable answers, GSM8K-format prompts, DPO preference margins, answer likelihood, reward-model
pairwise accuracy."""

from __future__ import annotations

import contextlib
import re

import torch

from ..errors import DataError
from .rewards import MARKER, answers_match, extract_final_answer, format_reward

_CALCULATOR = re.compile(r"<<[^<>\n]*=[^<>\n]*>>")  # a GSM8K calculator annotation <<a+b=c>>
_RESTATED = re.compile(r"^The answer is [^\n]*\.$", re.MULTILINE)  # the redundant closing line DPO's style pairs reject
GSM8K_PROMPT = "Question: {question}\nAnswer:"  # lm-eval's gsm8k doc_to_text (eval/tasks/gsm8k_local.yaml), zero-shot


@contextlib.contextmanager
def _evaluating(model):
    """The unwrapped model in eval mode, then back in the mode it was in (a caller may be mid-training)."""
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def chat_prompt_ids(tokenizer, prompt_messages) -> list[int]:
    return tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=True, return_dict=False)


def _scores(texts: list[str], answers: list[str], format_weight: float):
    """(correct, formatted, reward) per completion, the reward as GRPO computes it."""
    correct = [float(answers_match(extract_final_answer(t), a)) for t, a in zip(texts, answers)]
    formatted = format_reward(texts)
    return correct, formatted, [c + format_weight * f for c, f in zip(correct, formatted)]


@torch.no_grad()
def generate_completions(model, tokenizer, prompts, max_new_tokens: int = 128, batch_size: int = 32, num_samples: int = 0,
                         temperature: float = 1.0, seed: int = 0, encode=chat_prompt_ids) -> list[tuple[str, bool]]:
    """(text without special tokens, whether it ended with eos) per completion of the chat prompts (``encode`` makes
    their ids). Greedy when ``num_samples`` is 0, else that many per prompt (prompt-major) sampled at ``temperature``
    with a private seeded RNG (the caller's RNG is untouched)."""
    sampling = {"do_sample": False} if num_samples <= 0 else {
        "do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0, "num_return_sequences": num_samples}
    if num_samples > 0:
        batch_size = max(1, batch_size // num_samples)
    results: list[tuple[str, bool]] = []
    with _evaluating(model) as model:
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                batch = [encode(tokenizer, p) for p in prompts[start : start + batch_size]]
                results += _generate_batch(model, tokenizer, batch, max_new_tokens, sampling)
    return results


def _generate_batch(model, tokenizer, batch: list[list[int]], max_new_tokens, sampling) -> list[tuple[str, bool]]:
    eos_id = tokenizer.eos_token_id
    # left padding, so every prompt ends where generation starts
    padded = tokenizer.pad({"input_ids": batch}, padding_side="left", return_attention_mask=True, return_tensors="pt")
    out = model.generate(**padded.to(next(model.parameters()).device), max_new_tokens=max_new_tokens,
                         eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id, **sampling)
    rows = out[:, padded["input_ids"].shape[1] :].tolist()
    return [(tokenizer.decode(row[: row.index(eos_id)] if eos_id in row else row, skip_special_tokens=True), eos_id in row) for row in rows]


def generation_metrics(model, tokenizer, examples, max_new_tokens: int = 128, format_weight: float = 0.2,
                       batch_size: int = 32, outputs: list[tuple[str, bool]] | None = None) -> dict:
    """Greedy chat-template decoding of rows with ``prompt`` (messages) and ``answer``: exact-match, mean reward and
    the shares that end with eos, carry calculator annotations / a restated line, or are in ``#### N`` format.
    ``outputs``: the greedy completions, if already generated."""
    prompts, answers = [row["prompt"] for row in examples], [str(row["answer"]) for row in examples]
    if outputs is None:
        outputs = generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    texts = [text for text, _ in outputs]
    correct, formatted, rewards = _scores(texts, answers, format_weight)
    n = max(len(examples), 1)
    return {
        "exact_match": sum(correct) / n, "annotated_rate": sum(bool(_CALCULATOR.search(t)) for t in texts) / n,
        "restated_rate": sum(bool(_RESTATED.search(t)) for t in texts) / n,
        "eos_rate": sum(stopped for _, stopped in outputs) / n, "format_rate": sum(formatted) / n,
        "mean_reward": sum(rewards) / n, "n": len(examples),
        "samples": [{"prompt": p[-1]["content"], "completion": t, "answer": a} for p, t, a in list(zip(prompts, texts, answers))[:3]],
    }


@torch.no_grad()
def gsm8k_format_metrics(model, tokenizer, examples, max_new_tokens: int = 128, batch_size: int = 32) -> dict:
    """Greedy exact-match on the questions as plain-text GSM8K prompts, lm-eval's (zero-shot: the tiny checkpoints have
    256-token contexts) and the pretraining corpus's format. Answers end at eos or the next ``Question:`` (lm-eval's
    stop sequence); ``strict`` needs a ``#### N`` line, ``flexible`` also takes the last number."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []

    def encode(tokenizer, prompt) -> list[int]:
        return bos + tokenizer(GSM8K_PROMPT.format(question=prompt[-1]["content"]), add_special_tokens=False)["input_ids"]

    outputs = generate_completions(model, tokenizer, [row["prompt"] for row in examples], max_new_tokens, batch_size, encode=encode)
    texts = [text.split("Question:")[0] for text, _ in outputs]
    matches = [answers_match(extract_final_answer(t), str(row["answer"])) for t, row in zip(texts, examples)]
    n = max(len(examples), 1)
    strict = sum(bool(MARKER.search(t)) and match for t, match in zip(texts, matches))
    return {"gsm8k_format_exact_match": strict / n, "gsm8k_format_flexible_match": sum(matches) / n}


def sampled_generation_metrics(model, tokenizer, examples, num_samples: int = 8, temperature: float = 1.0,
                               max_new_tokens: int = 128, format_weight: float = 0.2, seed: int = 0, batch_size: int = 128) -> dict:
    """Mean reward and exact-match over ``num_samples`` sampled completions per prompt (what RL optimises)."""
    answers = [str(row["answer"]) for row in examples for _ in range(num_samples)]
    outputs = generate_completions(model, tokenizer, [row["prompt"] for row in examples], max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, num_samples=num_samples, temperature=temperature, seed=seed)
    correct, _, rewards = _scores([text for text, _ in outputs], answers, format_weight)
    n, tag = max(len(outputs), 1), f"t{temperature:g}".replace(".", "")
    return {f"sampled_reward_{tag}": sum(rewards) / n, f"sampled_exact_match_{tag}": sum(correct) / n}


def _completion_token_logprobs(model, tokenizer, prompts, completions, batch_size: int = 32) -> list[torch.Tensor]:
    """Per-token log-probs of each assistant completion (its eos included), conditioned on the prompt."""
    device = next(model.parameters()).device
    pieces = []
    for prompt, completion in zip(prompts, completions):
        prompt_ids = chat_prompt_ids(tokenizer, prompt)
        full = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=True, return_dict=False)
        if full[: len(prompt_ids)] != prompt_ids:
            raise ValueError("the chat template is not prefix-preserving: the prompt tokens change when an answer follows")
        pieces.append((full, len(prompt_ids)))
    out = []
    for start in range(0, len(pieces), batch_size):
        batch = pieces[start : start + batch_size]
        padded = tokenizer.pad({"input_ids": [ids for ids, _ in batch]}, padding_side="right",
                               return_attention_mask=True, return_tensors="pt").to(device)
        logits = model(**padded).logits.float()
        targets = padded["input_ids"][:, 1:].unsqueeze(-1)
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets).squeeze(-1)
        out += [logprobs[i, prompt_len - 1 : len(ids) - 1].cpu() for i, (ids, prompt_len) in enumerate(batch)]
    return out


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts, completions, batch_size: int = 32) -> torch.Tensor:
    """Summed log p(completion | prompt) for conversational prompts/completions."""
    return torch.stack([lp.sum() for lp in _completion_token_logprobs(model, tokenizer, prompts, completions, batch_size)])


@torch.no_grad()
def preference_metrics(model, tokenizer, pairs, batch_size: int = 32) -> dict:
    """Mean chosen-minus-rejected log-prob margin and the win rate (share of pairs where chosen is more likely),
    also per ``pair_kind`` when rows have one (synthetic: "slip" = correctness, "style" = annotations)."""
    prompts = [row["prompt"] for row in pairs]
    with _evaluating(model) as model:
        chosen = completion_logprobs(model, tokenizer, prompts, [row["chosen"] for row in pairs], batch_size)
        rejected = completion_logprobs(model, tokenizer, prompts, [row["rejected"] for row in pairs], batch_size)
    margin = chosen - rejected
    result = {"margin": margin.mean().item(), "win_rate": (margin > 0).float().mean().item(),
              "chosen_logp": chosen.mean().item(), "rejected_logp": rejected.mean().item(), "n": len(pairs)}
    kinds = pairs["pair_kind"] if "pair_kind" in pairs.column_names else []
    for kind in sorted(set(kinds)):
        mask = torch.tensor([k == kind for k in kinds])
        result[f"win_rate_{kind}"], result[f"margin_{kind}"] = (margin[mask] > 0).float().mean().item(), margin[mask].mean().item()
    return result


@torch.no_grad()
def answer_loglik(model, tokenizer, chats, batch_size: int = 32) -> float:
    """Mean per-token log-likelihood of the final assistant message (eos included) of each chat."""
    with _evaluating(model) as model:
        token_lps = _completion_token_logprobs(model, tokenizer, [row["messages"][:-1] for row in chats],
                                               [row["messages"][-1:] for row in chats], batch_size)
    return (torch.cat(token_lps).sum() / sum(len(t) for t in token_lps)).item()


def reward_input_ids(tokenizer, prompt, answer) -> list[int]:
    """Prompt + one answer tokenized as TRL's RewardTrainer does, so training and measuring see the same tokens: the
    chat template over the messages (conversational rows), else the text with eos appended to the answer."""
    if isinstance(answer, list):
        return tokenizer.apply_chat_template(list(prompt or []) + answer, tokenize=True, return_dict=True)["input_ids"]
    eos = tokenizer.eos_token
    return tokenizer((prompt or "") + (answer if answer.endswith(eos) else answer + eos))["input_ids"]


@torch.no_grad()
def sequence_rewards(model, tokenizer, sequences: list[list[int]], batch_size: int = 32) -> torch.Tensor:
    """The scalar reward of each token sequence, scored in batches of similar length (little padding)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    rewards = torch.empty(len(sequences))
    with _evaluating(model) as model:
        device = next(model.parameters()).device
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            padded = tokenizer.pad({"input_ids": [sequences[i] for i in batch]}, padding_side="right",
                                   return_attention_mask=True, return_tensors="pt").to(device)
            rewards[batch] = model(**padded).logits.float().squeeze(-1).cpu()
    return rewards


def reward_metrics(model, tokenizer, pairs, max_length: int | None = None, batch_size: int = 32) -> dict:
    """Pairwise accuracy (share of pairs with reward(chosen) > reward(rejected)) and mean margin of a reward model,
    next to the length-only baselines: the accuracy of always preferring the answer with more tokens (ties count half)
    or the one with fewer, and how often the model itself ranks the longer answer higher. Also per ``pair_kind`` when rows have one. Pairs
    longer than ``max_length`` tokens are left out, as the trainer leaves them out."""
    chosen = [reward_input_ids(tokenizer, row["prompt"], row["chosen"]) for row in pairs]
    rejected = [reward_input_ids(tokenizer, row["prompt"], row["rejected"]) for row in pairs]
    keep = [i for i in range(len(pairs)) if max_length is None or max(len(chosen[i]), len(rejected[i])) <= max_length]
    if not keep:
        raise DataError(f"no held-out pair fits max_length={max_length} tokens; raise max_length or use shorter pairs")
    n = len(keep)
    scores = sequence_rewards(model, tokenizer, [chosen[i] for i in keep] + [rejected[i] for i in keep], batch_size)
    margin = scores[:n] - scores[n:]
    # the prompt is shared, so the sequence length difference is the answers' token-count difference
    longer = torch.tensor([len(chosen[i]) - len(rejected[i]) for i in keep]).sign()
    baseline = (longer > 0).float() + 0.5 * (longer == 0).float()
    model_longer = (margin.sign() == longer)[longer != 0]
    result = {"accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item(),
              "length_baseline_accuracy": baseline.mean().item(), "shorter_baseline_accuracy": 1 - baseline.mean().item(),
              "prefers_longer_rate": model_longer.float().mean().item() if len(model_longer) else 0.5,
              "chosen_reward": scores[:n].mean().item(), "rejected_reward": scores[n:].mean().item(), "n": n}
    if (ties := longer == 0).any():  # where length says nothing, only the content can rank the pair
        result["equal_length_accuracy"] = (margin[ties] > 0).float().mean().item()
    if n < len(pairs):
        result["too_long_left_out"] = len(pairs) - n
    kinds = [pairs[i]["pair_kind"] for i in keep] if "pair_kind" in pairs.column_names else []
    for kind in sorted(set(kinds)):
        mask = torch.tensor([k == kind for k in kinds])
        result[f"accuracy_{kind}"], result[f"margin_{kind}"] = (margin[mask] > 0).float().mean().item(), margin[mask].mean().item()
        result[f"length_baseline_accuracy_{kind}"] = baseline[mask].mean().item()
    return result


def learned_reward_metrics(tokenizer, examples, outputs: list[tuple[str, bool]], reward_model, judge=None) -> dict:
    """RLHF's held-out view of the greedy completions: the mean score the trained-against reward model gives them,
    the mean score of an independent judge (a second reward model on disjoint pairs), and their length (tokens,
    characters), since a policy that games a reward model often does it by answer length."""
    sequences = [reward_input_ids(tokenizer, row["prompt"], [{"role": "assistant", "content": text}])
                 for row, (text, _) in zip(examples, outputs)]
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text, _ in outputs]
    n = max(len(outputs), 1)
    result = {"learned_reward": sequence_rewards(reward_model, tokenizer, sequences).mean().item(),
              "completion_tokens": sum(lengths) / n, "completion_chars": sum(len(text) for text, _ in outputs) / n}
    if judge is not None:
        result["judge_reward"] = sequence_rewards(judge, tokenizer, sequences).mean().item()
    return result


def make_measure(stage: str, tokenizer, held, max_new_tokens: int, format_weight: float = 0.2, num_samples: int = 0,
                 gsm8k_format: bool = False, max_length: int | None = None, reward_model=None, judge=None):
    """The held-out measurement for `stage` as a function of the model (the same code before and after training);
    ``num_samples`` > 0 adds temperature-1 sampled metrics, ``gsm8k_format`` the plain-text GSM8K-prompt ones;
    ``max_length`` is the reward trainer's (longer pairs are left out); ``reward_model`` (and ``judge``) add the
    learned-reward view of the greedy completions (RLHF)."""
    if held is None:
        return None

    def measure(model) -> dict:
        if stage == "reward":
            return reward_metrics(model, tokenizer, held, max_length)
        if stage == "dpo":
            result = preference_metrics(model, tokenizer, held)
            if "answer" in held.column_names:  # verifiable pairs (synthetic math): greedy exact-match must not fall
                greedy = generation_metrics(model, tokenizer, held, max_new_tokens=max_new_tokens, format_weight=format_weight)
                result.update({k: v for k, v in greedy.items() if k not in ("n", "samples")})
            return result
        outputs = generate_completions(model, tokenizer, [row["prompt"] for row in held], max_new_tokens=max_new_tokens)
        if "answer" not in held.column_names:  # prompts of preference pairs (RLHF): nothing to verify, only to score
            result = {"n": len(held), "eos_rate": sum(ended for _, ended in outputs) / max(len(outputs), 1),
                      **learned_reward_metrics(tokenizer, held, outputs, reward_model, judge)}
            if "messages" in held.column_names:
                result["answer_loglik"] = answer_loglik(model, tokenizer, held)
            return result
        result = generation_metrics(model, tokenizer, held, format_weight=format_weight, outputs=outputs)
        if reward_model is not None:
            result.update(learned_reward_metrics(tokenizer, held, outputs, reward_model, judge))
        if "messages" in held.column_names:
            result["answer_loglik"] = answer_loglik(model, tokenizer, held)
        if gsm8k_format:
            result.update(gsm8k_format_metrics(model, tokenizer, held, max_new_tokens=max_new_tokens))
        if num_samples > 0:
            result.update(sampled_generation_metrics(model, tokenizer, held, num_samples=num_samples, temperature=1.0,
                                                     max_new_tokens=max_new_tokens, format_weight=format_weight))
        return result

    return measure
