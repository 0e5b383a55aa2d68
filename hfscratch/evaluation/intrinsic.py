"""Intrinsic metrics on held-out text: perplexity (per token) and bits-per-byte (summed NLL in bits / UTF-8 bytes,
so tokenizer-independent), with a sliding window. Hand-written because `evaluate`'s Hub `perplexity` needs the Hub,
truncates long texts and has no bytes variant; the `evaluate` modules in `metrics/` call this file.

Each document is scored from a prefix token (BOS, else EOS), so every byte is paid for. Windows of `max_length`
tokens advance by `stride`, each scoring only new tokens, so every scored token sees >= `max_length - stride` context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import evaluate
import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from ..loading import load_for_inference


@dataclass
class TextScores:
    """Summed negative log-likelihood (nats) of the scored tokens, with token and byte counts."""

    nll: float = 0.0
    tokens: int = 0
    bytes: int = 0
    per_text_nll: list[float] = field(default_factory=list)
    per_text_tokens: list[int] = field(default_factory=list)
    per_text_bytes: list[int] = field(default_factory=list)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (math.log(2) * self.bytes)

    @property
    def bits_per_token(self) -> float:
        return self.nll / (math.log(2) * self.tokens)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def per_text_perplexity(self) -> list[float]:
        return [math.exp(n / t) if t else float("nan") for n, t in zip(self.per_text_nll, self.per_text_tokens)]

    def as_dict(self) -> dict[str, float]:
        return {"bits_per_byte": self.bits_per_byte, "bits_per_token": self.bits_per_token,
                "perplexity": self.perplexity, "nll_nats": self.nll, "tokens": self.tokens, "bytes": self.bytes}


def sliding_windows(num_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(input_start, score_start, end) per window over a sequence whose position 0 is the prefix token: tokens
    score_start..end-1 are scored from inputs input_start..end-1, so positions 1..num_tokens-1 are each scored once."""
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2 tokens to score anything, got {max_length}")
    if stride < 1:
        raise ConfigError(f"stride must be a positive number of tokens, got {stride}")
    step = min(stride, max_length - 1)  # a window of L tokens predicts at most L-1 of its own tokens
    windows = []
    score_start = 1
    end = min(num_tokens, max_length)
    while score_start < num_tokens:
        windows.append((max(0, end - max_length), score_start, end))
        score_start, end = end, min(num_tokens, end + step)
    return windows


def _prefix_token_id(tokenizer) -> int:
    for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ConfigError("the tokenizer has neither a BOS nor an EOS token to condition the first token on; add one (tokenizer.add_special_tokens)")


def model_max_length(model) -> int:
    config = model.config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


@torch.no_grad()
def score_texts(model, tokenizer, texts: list[str] | str, max_length: int | None = None, stride: int | None = None,
                batch_size: int = 4, device: str | torch.device | None = None, progress: bool = True) -> TextScores:
    """Summed token log-likelihoods of each text under `model` (see the module docstring for the windowing)."""
    texts = [t for t in ([texts] if isinstance(texts, str) else texts) if t]
    if not texts:
        raise DataError("no text to score: every given text is empty; pass a non-empty file or string")
    limit = model_max_length(model)
    max_length = int(max_length or limit)
    if max_length > limit and getattr(model.config, "position_embedding_type", "rope") == "learned":
        raise ConfigError(f"max_length {max_length} exceeds the model's {limit} learned positions; pass --max_length {limit} or less")
    stride = int(stride or max(1, max_length // 2))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    prefix = _prefix_token_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix

    scores = TextScores()
    jobs = []  # (text index, input ids, number of leading inputs not scored)
    for index, text in enumerate(texts):
        ids = [prefix] + tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        scores.per_text_nll.append(0.0)
        scores.per_text_tokens.append(len(ids) - 1)
        scores.per_text_bytes.append(len(text.encode("utf-8")))
        for input_start, score_start, end in sliding_windows(len(ids), max_length, stride):
            jobs.append((index, ids[input_start:end], score_start - input_start))

    was_training = model.training
    model.eval()
    try:
        for first in tqdm(range(0, len(jobs), batch_size), desc="scoring text", unit="batch", disable=not progress):
            batch = jobs[first:first + batch_size]
            # Right padding: causal attention keeps real positions blind to the padding after them.
            sequences = [torch.tensor(ids) for _, ids, _ in batch]
            input_ids = pad_sequence(sequences, batch_first=True, padding_value=pad_id)
            lengths = torch.tensor([len(seq) for seq in sequences])
            attention = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
            targets = input_ids[:, 1:].to(device).unsqueeze(-1)
            token_logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets).squeeze(-1)
            for row, (index, ids, context) in enumerate(batch):
                # logits at i predict token i+1: scored tokens context..len-1 use logits context-1..len-2
                nll = -token_logprobs[row, context - 1: len(ids) - 1].sum().item()
                scores.per_text_nll[index] += nll
    finally:
        model.train(was_training)
    scores.nll = sum(scores.per_text_nll)
    scores.tokens = sum(scores.per_text_tokens)
    scores.bytes = sum(scores.per_text_bytes)
    return scores


def bits_per_byte(model, tokenizer, texts: list[str] | str, max_length: int | None = None, stride: int | None = None,
                  batch_size: int = 4, device=None) -> float:
    return score_texts(model, tokenizer, texts, max_length, stride, batch_size, device, progress=False).bits_per_byte


def perplexity(model, tokenizer, texts: list[str] | str, max_length: int | None = None, stride: int | None = None,
               batch_size: int = 4, device=None) -> float:
    return score_texts(model, tokenizer, texts, max_length, stride, batch_size, device, progress=False).perplexity


def read_text_file(path: str | Path, max_chars: int | None = None) -> str:
    """A held-out text file as one document (WikiText-2 test, the TinyShakespeare tail, anything UTF-8)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"text file {path} not found; pass --bpb a UTF-8 text file (e.g. shared/data/wikitext-2/test.txt)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); convert it to UTF-8") from None
    if max_chars is not None and max_chars > 0:
        text = text[-max_chars:]
    if not text.strip():
        raise DataError(f"{path} is empty; bits-per-byte needs some text")
    return text


# The arguments of both `evaluate` modules in metrics/ (each adds its "Returns:").
METRIC_ARGS_DESCRIPTION = """
Args:
    predictions (list of str): texts to score; each is one document.
    model (str or PreTrainedModel): model folder, Hub id, or loaded model.
    tokenizer (optional): tokenizer or its path (default: the model's).
    max_length (int, optional): window size in tokens (default: the model's max_position_embeddings).
    stride (int, optional): tokens the window advances by (default: max_length // 2).
    batch_size (int, optional): windows per forward pass (default 4).
    device (str, optional): where to run a model loaded from a path (default: cuda if available).
Returns:
"""


def metric_module_info(description: str, inputs_description: str, reference_url: str):
    """The `evaluate.MetricInfo` of the intrinsic metric modules in metrics/ (texts in, scores out)."""
    return evaluate.MetricInfo(module_type="metric", description=description, citation="", inputs_description=inputs_description,
                               features=datasets.Features({"predictions": datasets.Value("string")}), reference_urls=[reference_url])


def score_predictions(predictions, model, tokenizer=None, max_length=None, stride=None, batch_size=4, device=None) -> TextScores:
    """What the metric modules' `_compute` does: load (or take) the model, then score the texts."""
    model, tokenizer = load_for_inference(model, tokenizer, device=device)
    return score_texts(model, tokenizer, list(predictions), max_length=max_length, stride=stride, batch_size=batch_size, progress=False)
