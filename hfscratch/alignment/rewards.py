"""Verifiable rewards for math answers (GRPO, TRL's ``f(prompts, completions, **dataset_columns) -> list[float]``)
and the answer extraction the metrics share. Two answers match when they are the same number (commas, ``$`` and a
trailing ``.`` ignored); anything else (``\\frac{3}{4}`` vs ``0.75``) is compared with ``math-verify``."""

from __future__ import annotations

import re
import threading
from fractions import Fraction

MARKER = re.compile(r"####\s*([^\n]+)")
NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_PLAIN_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
# The format the synthetic and GSM8K solutions use: working lines, then a last line "#### <number>".
FORMAT = re.compile(r"\S[^\n]*\n(?:[^\n]*\n)*#### -?[\d,]+(?:\.\d+)?\s*$")


def completion_text(completion) -> str:
    """Text of a completion given as a string or as TRL conversational messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    return "".join(str(m.get("content") or "") for m in completion if m.get("role", "assistant") == "assistant")


def _normalise(answer: str) -> str:
    return answer.strip().replace(",", "").replace("$", "").rstrip(".").strip()


def extract_final_answer(text: str) -> str | None:
    """The answer after the last ``####``, else the last number in the text, normalised; None if neither."""
    if (marked := MARKER.findall(text)) and (answer := _normalise(marked[-1])):
        number = NUMBER.match(answer)
        return _normalise(number.group(0)) if number and number.end() == len(answer) else answer
    numbers = NUMBER.findall(text)
    return _normalise(numbers[-1]) if numbers else None


def answers_match(predicted: str | None, gold: str) -> bool:
    if predicted is None:
        return False
    pred, ref = _normalise(predicted), _normalise(str(gold))
    if _PLAIN_NUMBER.match(pred) and _PLAIN_NUMBER.match(ref):
        return Fraction(pred) == Fraction(ref)  # fast path: most answers are numbers
    return _math_verify_equal(pred, ref)


def _math_verify_equal(pred: str, ref: str) -> bool:
    # lazily: math-verify pulls in sympy, seconds to import, and most answers never need it
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # math-verify times out with signal.alarm, which only works on the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    try:
        gold = parse(ref, extraction_config=configs, parsing_timeout=timeout)
        guess = parse(pred, extraction_config=configs, parsing_timeout=timeout)
        return bool(gold) and bool(guess) and bool(verify(gold, guess, timeout_seconds=timeout))
    except Exception:  # a malformed model output is simply not a match
        return False


def correctness_reward(completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion's final answer equals the dataset's ``answer`` column, else 0.0."""
    return [float(answers_match(extract_final_answer(completion_text(c)), a)) for c, a in zip(completions, answer, strict=True)]


def format_reward(completions, **kwargs) -> list[float]:
    """1.0 for worked lines followed by a last line ``#### <number>`` (the format that makes answers checkable)."""
    return [float(FORMAT.match(completion_text(c).strip()) is not None) for c in completions]

