"""The embedded synthetic math corpus: disjoint splits, correct arithmetic, determinism, difficulty knobs, DPO pairs."""

import ast
import hashlib
import random
import re
from fractions import Fraction

import pytest

from hfscratch.data.synthetic_math import (
    HELDOUT_PERCENT,
    generate_problems,
    iter_problems,
    problem_to_text,
    restated_solution,
    to_chat,
    to_grpo,
    to_preference,
)
from hfscratch.errors import ConfigError

ANNOTATION = re.compile(r"<<([^=<>]+)=(-?\d+)>>(-?\d+)")
N = 10_000


def independent_eval(expr: str) -> Fraction:
    """Written apart from the generator's evaluator on purpose: integers and + - * / only."""
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b}

    def ev(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.left), ev(node.right))
        raise AssertionError(f"unexpected syntax in {expr!r}")

    return ev(ast.parse(expr, mode="eval").body)


def check_solution(question: str, answer: str) -> tuple[list[bool], int]:
    """Per annotation: is it arithmetically right? Also checks the chain and returns the #### answer."""
    question_numbers = {int(x) for x in re.findall(r"\d+", question)}
    known = set(question_numbers) | {100}  # percentages divide by 100
    correct = []
    annotations = ANNOTATION.findall(answer)
    assert annotations, answer
    for expr, claimed, shown in annotations:
        assert claimed == shown, answer
        operands = [int(x) for x in re.findall(r"\d+", expr)]
        # Every operand comes from the question or from an earlier result: the solution really solves this problem.
        assert all(x in known for x in operands), (expr, question, answer)
        value = independent_eval(expr)
        correct.append(value == int(claimed))
        known.add(int(claimed))
    final = re.search(r"\n#### (-?\d+)$", answer)
    assert final, answer
    assert int(final.group(1)) == int(annotations[-1][1])
    return correct, int(final.group(1))


@pytest.fixture(scope="module")
def train():
    return generate_problems(N, split="train", seed=0)


@pytest.fixture(scope="module")
def heldout():
    return generate_problems(N, split="heldout", seed=0)


def test_train_and_heldout_are_disjoint(train, heldout):
    train_questions = {p["question"] for p in train}
    heldout_questions = {p["question"] for p in heldout}
    assert not train_questions & heldout_questions
    # The split is a function of the canonical question text alone (recomputed here independently).
    for split, problems in (("heldout", heldout[:2000]), ("train", train[:2000])):
        for p in problems:
            canonical = " ".join(p["question"].lower().split())
            bucket = int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big") % 100
            assert (bucket < HELDOUT_PERCENT) == (split == "heldout")
    # Other seeds of the training stream never reach held-out questions either.
    other = generate_problems(3000, split="train", seed=123)
    assert not {p["question"] for p in other} & heldout_questions
    # Both splits are varied: many distinct questions and every topic present.
    assert len(train_questions) > 0.95 * N and len(heldout_questions) > 0.95 * N
    assert {p["topic"] for p in heldout} == {p["topic"] for p in train} and len({p["topic"] for p in train}) >= 6


def test_answers_are_arithmetically_correct(train, heldout):
    for p in train + heldout[:2000]:
        correct, final = check_solution(p["question"], p["answer"])
        assert all(correct), p["answer"]
        assert str(final) == p["final_answer"] and final >= 0
        assert len(correct) == p["steps"]


def test_seeded_determinism():
    a = generate_problems(200, seed=7)
    assert a == generate_problems(200, seed=7)
    assert a != generate_problems(200, seed=8)
    stream = iter_problems(seed=7)
    assert [next(stream) for _ in range(200)] == a
    # Unbounded: far past anything a template list could hold.
    assert len({next(stream)["question"] for _ in range(5000)}) > 4900


def test_difficulty_knobs_change_steps_values_and_operations():
    easy = generate_problems(500, min_steps=1, max_steps=1, max_value=10, operations=("+", "-"), seed=1)
    hard = generate_problems(500, min_steps=4, max_steps=4, max_value=100, seed=1)
    assert all(p["answer"].count("<<") == 1 for p in easy)
    assert all(p["answer"].count("<<") == 4 for p in hard)
    assert all(int(x) <= 10 for p in easy for x in re.findall(r"\d+", p["question"]))
    assert all(not re.search(r"<<[^>]*[*/]", p["answer"]) for p in easy)
    assert max(int(p["final_answer"]) for p in hard) > 100
    mixed = generate_problems(2000, min_steps=1, max_steps=4, seed=2)
    steps = {p["steps"] for p in mixed}
    assert steps == {1, 2, 3, 4}
    used = {op for p in mixed for op in "+-*/" if re.search(r"<<[^>]*\%s" % op, p["answer"])}
    assert used == {"+", "-", "*", "/"}
    only_mul = generate_problems(200, min_steps=2, max_steps=2, operations=("*",), seed=3)
    assert all(not re.search(r"<<[^>]*[-+/]", p["answer"]) for p in only_mul)


def test_impossible_or_bad_difficulty_is_a_config_error():
    with pytest.raises(ConfigError, match="operations"):
        generate_problems(1, operations=("^",))
    with pytest.raises(ConfigError, match="min_steps"):
        generate_problems(1, min_steps=3, max_steps=2)
    with pytest.raises(ConfigError, match="cannot build problems"):
        generate_problems(5, min_steps=4, max_steps=4, max_value=2, operations=("/",))


def test_rejected_solutions_are_plausible_and_wrong(train):
    rng = random.Random(0)
    for p in train[:3000]:
        pair = to_preference(p, rng)
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert pair["prompt"] == [{"role": "user", "content": p["question"]}]
        assert chosen == p["answer"] and rejected != chosen
        correct, final = check_solution(p["question"], rejected)
        assert str(final) != p["final_answer"]
        assert correct.count(False) == 1  # one arithmetic slip, every later step follows from it
        assert rejected.count("<<") == chosen.count("<<")
    assert to_preference(train[0], 5) == to_preference(train[0], 5)


def test_style_pairs_reject_the_same_correct_solution_with_a_redundant_line(train):
    for p in train[:2000]:
        pair = to_preference(p, random.Random(0), kind="style")
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert chosen == p["answer"] and rejected != chosen
        # Same working and final answer; only the closing sentence before "#### N" differs.
        final = p["final_answer"]
        assert rejected == chosen.replace(f"\n#### {final}", f"\nThe answer is {final}.\n#### {final}")
        assert rejected.endswith(f"\n#### {final}") and rejected.count("<<") == chosen.count("<<")
    with pytest.raises(ConfigError, match="unknown preference kind"):
        to_preference(train[0], 0, kind="length")


def test_output_formats(train):
    p = train[0]
    assert problem_to_text(p) == f"Question: {p['question']}\nAnswer: {p['answer']}"
    assert to_chat(p) == {"messages": [{"role": "user", "content": p["question"]},
                                       {"role": "assistant", "content": p["answer"]}]}
    restated = to_chat(p, restated=True)["messages"][1]["content"]
    body = p["answer"].rsplit("\n#### ", 1)[0]
    assert restated == restated_solution(p["answer"]) == f"{body}\nThe answer is {p['final_answer']}.\n#### {p['final_answer']}"
    assert to_grpo(p) == {"prompt": [{"role": "user", "content": p["question"]}], "answer": p["final_answer"]}
