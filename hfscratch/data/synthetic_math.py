"""Procedural grade-school math word problems in the GSM8K format: the embedded, offline default corpus.

Each problem is a short story (`synthetic_math_themes.yaml`) built from a chain of arithmetic steps, solved GSM8K-style
(``She has 3 + 4 = <<3+4=7>>7 apples.``) and ending with ``#### <integer answer>``. Hand-written because no library
generates verifiable math word problems with controllable difficulty (`SyntheticMathConfig`) and a provably
disjoint held-out split, and the corpus must exist offline on a fresh machine.

Held-out split: a problem's split is a pure function of its question text (`problem_split`: sha256 of the
lower-cased, space-normalised text, bucket < HELDOUT_PERCENT → "heldout"). Generators keep only candidates of the
requested split, so one question text has exactly one split whatever the seed, difficulty or process: a held-out
question can never be produced by the training generator.

Output formats: ``problem_to_text`` (pretraining), ``to_chat`` (SFT), ``to_preference`` (DPO) and ``to_grpo``
(``prompt`` + verifiable ``answer``), all in TRL's conversational format.
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import yaml

from ..errors import ConfigError
from ..options import option

__all__ = ["SyntheticMathConfig", "HELDOUT_PERCENT", "OPERATIONS", "generate_problems", "iter_problems", "problem_split",
           "problem_to_text", "to_chat", "restated_solution", "to_preference", "PREFERENCE_KINDS", "to_grpo",
           "rejected_answer", "evaluate_expression"]

HELDOUT_PERCENT = 10  # share of the problem space (by question hash) reserved for the held-out split
OPERATIONS = ("+", "-", "*", "/")
SPLITS = ("train", "heldout")
# Story themes, names and percentages are data: they live in a YAML file next to this module.
_TABLES = yaml.safe_load(Path(__file__).with_name("synthetic_math_themes.yaml").read_text(encoding="utf-8"))
THEMES: dict[str, dict] = _TABLES["themes"]
NAMES = [tuple(entry) for entry in _TABLES["names"]]
PRONOUNS = {gender: tuple(forms) for gender, forms in _TABLES["pronouns"].items()}
PERCENTS = tuple(_TABLES["percents"])
_MAX_ATTEMPTS = 2000  # consecutive failed draws before the difficulty settings are declared impossible

# --- Safe arithmetic: the only expressions ever evaluated are the ones this module writes. ---
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_BINOPS = dict(zip((ast.Add, ast.Sub, ast.Mult, ast.Div), _APPLY.values()))
_SIMPLE = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*(?:([*/])\s*(\d+)\s*)?$")


def evaluate_expression(expr: str) -> Fraction:
    """Exact value of an arithmetic expression made of integers, + - * / and parentheses."""
    # Fast path for the shapes this module writes ("a op b", "a * b / c"), evaluated left to right, which is
    # exact for them; anything else goes through the AST walk below.
    simple = _SIMPLE.match(expr)
    if simple and (simple.group(4) is None or simple.group(2) in "*/"):
        x, op, y, op2, z = simple.groups()
        value = _APPLY[op](Fraction(int(x)), int(y))
        return _APPLY[op2](value, int(z)) if op2 else value

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ValueError(f"unsupported expression {expr!r}")

    return walk(ast.parse(expr, mode="eval"))


# event kind -> (operators it needs, steps it costs)
_EVENTS = {
    "add": ({"+"}, 1), "sub": ({"-"}, 1), "mul": ({"*"}, 1), "div": ({"/"}, 1), "final_div": ({"/"}, 1),
    "groups_add": ({"*", "+"}, 2), "groups_sub": ({"*", "-"}, 2),
    "pct_add": ({"*", "/", "+"}, 2), "pct_sub": ({"*", "/", "-"}, 2),
}
_EVENT_WEIGHTS = {"add": 3, "sub": 3, "mul": 2, "div": 2, "final_div": 2, "groups_add": 2, "groups_sub": 2, "pct_add": 1, "pct_sub": 2}
_SIMPLE_OPS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "final_div": "/"}


def _whole(value: Fraction) -> int | None:
    """Every quantity in a problem is a non-negative whole number; None for anything else."""
    return int(value) if value.denominator == 1 and value >= 0 else None


class _Program:
    """Literals, ordered calculations and text templates of one problem, so it can be re-evaluated with a slip."""

    def __init__(self):
        self.env: dict[str, int] = {}  # literal name -> value (question numbers)
        self.calcs: list[tuple[str, str]] = []  # (result name, expression template over env names)
        self.question: list[str] = []
        self.solution: list[str] = []
        self.values: dict[str, int] = {}  # literals and computed results

    def literal(self, value: int) -> str:
        name = f"n{len(self.env)}"
        self.env[name] = self.values[name] = value
        return "{" + name + "}"

    def calc(self, expr: str) -> str | None:
        """Record a calculation and return its result's name; None if the result is not a whole number >= 0."""
        value = _whole(evaluate_expression(expr.format_map(self.values)))
        if value is None:
            return None
        name = f"v{len(self.calcs)}"
        self.calcs.append((name, expr))
        self.values[name] = value
        return name

    def to_json(self) -> str:
        return json.dumps({"env": self.env, "calcs": self.calcs, "question": self.question, "solution": self.solution},
                          separators=(",", ":"))


def _render_solution(program: dict, values: dict[str, int]) -> tuple[str, int]:
    calcs = dict(program["calcs"])

    def annotate(match):  # "[[v3]]" -> "a * b = <<a*b=c>>c" with the expression as written by the builder
        name = match.group(1)
        spaced = re.sub(r"\s*([-+*/])\s*", r" \1 ", calcs[name]).strip()
        return f"{spaced} = <<{calcs[name].replace(' ', '')}={{{name}}}>>{{{name}}}"

    lines = [re.sub(r"\[\[(v\d+)\]\]", annotate, line).format_map(values) for line in program["solution"]]
    final = values[program["calcs"][-1][0]]
    return "\n".join(lines) + f"\n#### {final}", final


def problem_split(question: str) -> str:
    """The split a question text belongs to (a pure function of the text; see the module docstring)."""
    canonical = " ".join(question.lower().split())
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % 100 < HELDOUT_PERCENT else "train"


@dataclass
class SyntheticMathConfig:
    """The generator's difficulty and seed: defined once here, nested by the data and alignment stage configs."""

    min_steps: int = option(1, "fewest arithmetic steps (<<...>> annotations) per problem")
    max_steps: int = option(4, "most arithmetic steps per problem")
    max_value: int = option(100, "largest operand (intermediate values stay <= 10 x this)")
    operations: list[str] = option(list(OPERATIONS), "allowed operators, a non-empty subset of + - * /")
    seed: int = option(0, "seed of the problem stream")

    def __post_init__(self):
        self.operations = list(dict.fromkeys(self.operations))
        if not (isinstance(self.min_steps, int) and isinstance(self.max_steps, int) and 1 <= self.min_steps <= self.max_steps):
            raise ConfigError(f"need 1 <= min_steps <= max_steps, got min_steps={self.min_steps}, max_steps={self.max_steps}")
        if not isinstance(self.max_value, int) or self.max_value < 2:
            raise ConfigError(f"max_value must be an integer >= 2, got {self.max_value!r}")
        if not self.operations or any(op not in OPERATIONS for op in self.operations):
            raise ConfigError(f"operations must be a non-empty subset of {OPERATIONS}, got {tuple(self.operations)!r}")


class _Generator:
    def __init__(self, rng: random.Random, split: str, config: SyntheticMathConfig):
        self.rng, self.split, self.min_steps, self.max_steps = rng, split, config.min_steps, config.max_steps
        self.max_value, self.ops, self.cap = config.max_value, set(config.operations), 10 * config.max_value
        self.small = max(2, min(10, config.max_value))  # multipliers, divisors and group counts stay small

    def one(self) -> dict | None:
        rng = self.rng
        theme_name = rng.choice(list(THEMES))
        theme = THEMES[theme_name]
        target = rng.randint(self.min_steps, self.max_steps)
        people = rng.sample(NAMES, 6)  # people[0] is the subject, later ones join in ages problems, the last is a friend
        text = {"unit": rng.choice(theme["units"]), "F": people[-1][0]}
        if "things" in theme:
            text["thing"] = rng.choice(theme["things"])
            text["things"] = rng.choice(theme["plural_things"])

        def fields_of(i):
            name, gender = people[i]
            p, pos, obj = PRONOUNS[gender]
            return {**text, "P": name, "p": p, "pos": pos, "obj": obj}

        prog = _Program()
        subject, steps, final_question, fields = 0, 0, None, fields_of(0)
        if "start_groups" in theme and "*" in self.ops and rng.random() < 0.5:
            k, m = rng.randint(2, self.small), rng.randint(2, self.max_value)
            kn, mn = prog.literal(k), prog.literal(m)
            current, steps = prog.calc(f"{mn}*{kn}"), 1
            q, s = rng.choice(theme["start_groups"])
            prog.question.append(q.format(**fields, k=kn, m=mn))
            prog.solution.append(s.format(**fields, c=f"[[{current}]]"))
        else:
            current = prog.literal(rng.randint(2, self.max_value))[1:-1]
            prog.question.append(rng.choice(theme["start"]).format(**fields, a="{" + current + "}"))

        while steps < target:
            remaining = target - steps
            kinds = [k for k, (need, cost) in _EVENTS.items()
                     if k in theme and need <= self.ops and cost <= remaining and (k != "final_div" or cost == remaining)]
            rng.shuffle(kinds)
            kinds.sort(key=lambda k: -_EVENT_WEIGHTS[k] * rng.random())
            for kind in kinds:
                done = self._event(prog, theme, kind, current, fields, people, subject)
                if done is not None:
                    current, subject, cost = done
                    steps += cost
                    if kind == "final_div":
                        final_question = ""  # the event's sentence already asks the question
                    fields = fields_of(subject)
                    break
            else:
                break
        if steps < self.min_steps or not prog.calcs:
            return None
        if final_question is None:
            final_question = rng.choice(theme["final"]).format(**fields)
        if final_question:
            prog.question.append(final_question)
        question = " ".join(prog.question).format_map(prog.values)
        if problem_split(question) != self.split:
            return {"question": question, "wrong_split": True}  # cheap reject: no solution rendering
        program = prog.to_json()
        answer, final = _render_solution(json.loads(program), prog.values)
        return {"question": question, "answer": answer, "final_answer": str(final), "steps": len(prog.calcs),
                "topic": theme_name, "program": program}

    def _event(self, prog: _Program, theme, kind, current, fields, people, subject):
        rng, a = self.rng, prog.values[current]
        cur = "{" + current + "}"
        q, s = rng.choice(theme[kind])
        nxt = subject
        if theme.get("new_subject", False):
            nxt = subject + 1
            if nxt >= len(people) - 1:  # the last person is the friend; keep names distinct
                return None
            fields = {**fields, "Q": people[nxt][0]}
        extra = {}
        cap = min(self.cap, max(theme.get("max_result", self.cap), self.max_value))
        if kind in _SIMPLE_OPS:
            if kind == "add":
                b = rng.randint(1, self.max_value)
                choices = [b] if a + b <= cap else []
            elif kind == "sub":
                choices = [rng.randint(1, min(a - 1, self.max_value))] if a >= 2 else []
            elif kind == "mul":
                choices = [b for b in range(2, self.small + 1) if a * b <= cap]
            else:
                choices = [b for b in range(2, min(a, self.small) + 1) if a % b == 0 and (b < a or kind == "final_div")]
            if not choices:
                return None
            extra["b"] = prog.literal(choices[0] if kind in ("add", "sub") else rng.choice(choices))
            calcs = [f"{cur}{_SIMPLE_OPS[kind]}{extra['b']}"]
        elif kind in ("groups_add", "groups_sub"):
            k = rng.randint(2, self.small)
            limit = self.max_value if kind == "groups_add" else min(self.max_value, (a - 1) // k)
            if limit < 2:
                return None
            m = rng.randint(2, limit)
            if kind == "groups_add" and a + k * m > cap:
                return None
            extra.update(k=prog.literal(k), m=prog.literal(m))
            calcs = [f"{extra['k']}*{extra['m']}", f"{cur}{'+' if kind == 'groups_add' else '-'}" + "{T}"]
        else:  # pct_add / pct_sub
            choices = [p for p in PERCENTS if (a * p) % 100 == 0 and (kind == "pct_sub" or a + a * p // 100 <= cap)]
            if not choices:
                return None
            extra["pct"] = prog.literal(rng.choice(choices))
            calcs = [f"{cur}*{extra['pct']}/100", f"{cur}{'+' if kind == 'pct_add' else '-'}" + "{T}"]
        names = []
        for expr in calcs:
            result = prog.calc(expr.replace("{T}", "{" + names[0] + "}") if names else expr)
            if result is None:
                return None
            names.append(result)
        prog.question.append(q.format(**fields, a=cur, **extra))
        if len(names) == 2:
            extra["t"] = f"[[{names[0]}]]"
        prog.solution.append(s.format(**fields, a=cur, c=f"[[{names[-1]}]]", **extra))
        return names[-1], nxt, len(names)


def iter_problems(split: str = "train", config: SyntheticMathConfig | None = None, **difficulty) -> Iterator[dict]:
    """Unbounded, seeded stream of problems of one split; `difficulty` keywords are `SyntheticMathConfig` fields.

    Items: ``question``, ``answer`` (worked solution ending ``#### N``), ``final_answer`` (str), ``steps``,
    ``topic`` and ``program`` (JSON used to build wrong solutions).
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    c = config or SyntheticMathConfig(**difficulty)
    gen = _Generator(random.Random(f"hfscratch-synthetic-math:{split}:{c.seed}"), split, c)
    failures = 0
    while True:
        problem = gen.one()
        if problem is None or "wrong_split" in problem:
            failures += problem is None
            if failures > _MAX_ATTEMPTS:
                raise ConfigError(
                    f"cannot build problems with min_steps={c.min_steps}, max_steps={c.max_steps}, "
                    f"max_value={c.max_value}, operations={tuple(c.operations)}; allow more operations (e.g. '+' and '-') or raise max_value")
            continue
        failures = 0
        yield problem


def generate_problems(n: int, split: str = "train", config: SyntheticMathConfig | None = None, **difficulty) -> list[dict]:
    """The first ``n`` problems of ``iter_problems`` (same config -> same list)."""
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    stream = iter_problems(split, config, **difficulty)
    return [next(stream) for _ in range(n)]


def problem_to_text(p: dict) -> str:
    """GSM8K-style document for pretraining text."""
    return f"Question: {p['question']}\nAnswer: {p['answer']}"


def restated_solution(answer: str) -> str:
    """The solution with a redundant closing sentence: ``...\n#### 7`` -> ``...\nThe answer is 7.\n#### 7``."""
    body, final = answer.rsplit("\n#### ", 1)
    return f"{body}\nThe answer is {final}.\n#### {final}"


def to_chat(p: dict, restated: bool = False) -> dict:
    answer = restated_solution(p["answer"]) if restated else p["answer"]
    return {"messages": [{"role": "user", "content": p["question"]}, {"role": "assistant", "content": answer}]}


def rejected_answer(p: dict, rng: random.Random | int | None = None) -> tuple[str, str]:
    """(solution text, wrong final answer): one calculation slips by a small amount and the error flows to the end."""
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    program = json.loads(p["program"])
    calcs = program["calcs"]
    correct = int(p["final_answer"])
    order = list(range(len(calcs)))
    rng.shuffle(order)
    for slip_at in order:
        deltas = [d for d in range(-3, 4) if d] + [10, -10]
        rng.shuffle(deltas)
        for delta in deltas:
            values: dict[str, int | None] = dict(program["env"])
            for i, (name, expr) in enumerate(calcs):
                values[name] = _whole(evaluate_expression(expr.format_map(values)) + (delta if i == slip_at else 0))
                if values[name] is None:
                    break
            else:
                if values[calcs[-1][0]] != correct:
                    text, final = _render_solution(program, values)
                    return text, str(final)
    raise ValueError(f"could not build a wrong solution for {p['question']!r}")  # unreachable: a +-1 slip on the last step works


PREFERENCE_KINDS = ("slip", "style")


def to_preference(p: dict, rng: random.Random | int | None = None, kind: str = "slip") -> dict:
    """TRL conversational preference row; chosen is always the correct, concise GSM8K-format solution.

    Rejected: ``kind="slip"``, one arithmetic slip flowing to a wrong final answer; ``kind="style"``, the same
    solution with a redundant ``The answer is N.`` line (a preference SFT on a mix of both styles does not encode).
    """
    if kind == "slip":
        wrong, _ = rejected_answer(p, rng)
    elif kind == "style":
        wrong = restated_solution(p["answer"])
    else:
        raise ConfigError(f"unknown preference kind {kind!r}; use one of {', '.join(PREFERENCE_KINDS)}")
    return {"prompt": [{"role": "user", "content": p["question"]}],
            "chosen": [{"role": "assistant", "content": p["answer"]}],
            "rejected": [{"role": "assistant", "content": wrong}]}


def to_grpo(p: dict) -> dict:
    return {"prompt": [{"role": "user", "content": p["question"]}], "answer": p["final_answer"]}
