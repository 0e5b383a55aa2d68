"""Procedural grade-school math word problems in the GSM8K format: the embedded, offline default corpus.

Every problem is a short story (shopping, ages, travel, baking, a shop's stock with percentages, reading,
a collection) built from a chain of arithmetic *steps*. The solution shows each step GSM8K-style,
``She has 3 + 4 = <<3+4=7>>7 apples.``, and ends with ``#### <integer answer>``.

Why hand-written: no library generates verifiable math word problems with controllable difficulty and a
provably disjoint held-out split, and the corpus must exist offline on a fresh machine.

Difficulty knobs (the fields of `SyntheticMathConfig`, also accepted as keywords by the generators):
  * ``min_steps``/``max_steps``: number of arithmetic steps (= number of ``<<...>>`` annotations);
  * ``max_value``: operands are drawn from 1..max_value (intermediate values stay <= 10 * max_value);
  * ``operations``: the allowed operators, any subset of ``("+", "-", "*", "/")``; a step that needs an
    operator outside the set (a percentage needs ``*`` and ``/``) is never used. Every result is a whole number.

Held-out split, and why it can never overlap the training split
-----------------------------------------------------------------
A problem *is* its question text. Its split is a pure function of that text::

    bucket = int(sha256(canonical(question))[:8 bytes]) % 100      # canonical: lower case, single spaces
    split  = "heldout" if bucket < HELDOUT_PERCENT else "train"

Generators draw candidate problems from a seeded stream and keep only those whose bucket belongs to the
requested split. Because the bucket depends on nothing but the question text, one question text has
exactly one split, whatever the seed, difficulty or process: a held-out question can never be produced
by the training generator (``tests/test_synthetic_math.py`` checks it on 10k samples of each).

Output formats: ``problem_to_text`` (pretraining text), ``to_chat`` (SFT ``messages``; ``restated=True``
writes the same solution with a redundant closing sentence ``The answer is N.`` before ``#### N``),
``to_preference`` (DPO ``prompt/chosen/rejected``; the chosen answer is the correct, concise GSM8K-format
solution, the rejected one is either the solution with one arithmetic slip propagated to a wrong final answer
(``kind="slip"``) or the same correct solution with the redundant closing sentence (``kind="style"``)) and
``to_grpo`` (``prompt`` + verifiable ``answer``), all in TRL's conversational format.
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator

from ..errors import ConfigError

__all__ = [
    "SyntheticMathConfig",
    "HELDOUT_PERCENT",
    "OPERATIONS",
    "generate_problems",
    "iter_problems",
    "problem_split",
    "problem_to_text",
    "to_chat",
    "restated_solution",
    "to_preference",
    "PREFERENCE_KINDS",
    "to_grpo",
    "rejected_answer",
    "evaluate_expression",
]

HELDOUT_PERCENT = 10  # share of the problem space (by question hash) reserved for the held-out split
OPERATIONS = ("+", "-", "*", "/")
SPLITS = ("train", "heldout")
_MAX_ATTEMPTS = 2000  # consecutive failed draws before the difficulty settings are declared impossible

# ---------------------------------------------------------------------------------------------------
# Safe arithmetic: the only expressions ever evaluated are the ones this module writes.
# ---------------------------------------------------------------------------------------------------
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


_SIMPLE = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*(?:([*/])\s*(\d+)\s*)?$")
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


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


# ---------------------------------------------------------------------------------------------------
# Story themes. Placeholders: {P} subject name, {p} he/she, {pos} his/her, {obj} him/her, {F} a friend,
# {Q} a new person (ages), {unit}, {thing}; numbers {a} (current value), {b}, {k}, {m}, {pct};
# results {c} (the new value) and {t} (an intermediate result) render as "x op y = <<x op y=r>>r".
# Each event kind is a list of (question sentence, solution line) pairs.
# ---------------------------------------------------------------------------------------------------
_THEMES: dict[str, dict[str, Any]] = {
    "collection": {
        "units": ["marbles", "stickers", "trading cards", "seashells", "stamps", "apples", "pebbles", "comic books"],
        "start": ["{P} has {a} {unit}.", "{P} collects {unit} and owns {a} of them.", "There are {a} {unit} in {P}'s box."],
        "add": [("{P} finds {b} more {unit}.", "{P} now has {c} {unit}."),
                ("{F} gives {obj} {b} {unit}.", "After the gift {p} has {c} {unit}."),
                ("{P} buys another {b} {unit}.", "That makes {c} {unit}.")],
        "sub": [("{P} gives {b} {unit} to {F}.", "{P} is left with {c} {unit}."),
                ("{P} loses {b} of the {unit}.", "After losing some, {p} has {c} {unit}.")],
        "mul": [("Later {pos} collection grows to {b} times its size.", "The collection grows to {c} {unit}."),
                ("{F} then gives {obj} enough {unit} to make {b} times as many as {p} had.", "Now {p} has {c} {unit}.")],
        "div": [("{P} splits the {unit} equally into {b} boxes and keeps only one box.", "One box holds {c} {unit}."),
                ("{P} keeps only 1/{b} of the {unit} and donates the rest.", "{P} keeps {c} {unit}.")],
        "groups_add": [("{P} buys {k} packs with {m} {unit} in each pack.", "The packs hold {t} {unit}, so {p} has {c} {unit}.")],
        "groups_sub": [("{P} gives {k} friends {m} {unit} each.", "{P} gives away {t} {unit} and keeps {c} {unit}.")],
        "pct_sub": [("{P} trades away {pct}% of the {unit}.", "{pct}% of {a} is {t} {unit}, so {p} keeps {c} {unit}.")],
        "pct_add": [("{P}'s collection then grows by {pct}%.", "{pct}% of {a} is {t} {unit}, so {p} now has {c} {unit}.")],
        "final_div": [("{P} shares all the {unit} equally among {b} friends. How many {unit} does each friend get?",
                       "Each friend gets {c} {unit}.")],
        "final": ["How many {unit} does {P} have now?", "How many {unit} does {P} have at the end?"],
    },
    "baking": {
        "units": ["cookies", "muffins", "cupcakes", "bread rolls", "pancakes", "brownies"],
        "start": ["{P} bakes {a} {unit}.", "{P} has a tray of {a} {unit}."],
        "add": [("{P} bakes another batch of {b} {unit}.", "There are now {c} {unit}."),
                ("{F} brings {b} more {unit}.", "Together they have {c} {unit}.")],
        "sub": [("{P}'s family eats {b} of the {unit}.", "{c} {unit} are left."),
                ("{P} sells {b} {unit} at the bake sale.", "After the sale {p} has {c} {unit}.")],
        "mul": [("For a party, {P} bakes until there are {b} times as many {unit}.", "There are {c} {unit}.")],
        "div": [("{P} packs the {unit} equally into {b} boxes and gives away all but one box.", "One box has {c} {unit}.")],
        "groups_add": [("{P} bakes {k} more trays with {m} {unit} on each tray.", "The trays add {t} {unit}, making {c} {unit}.")],
        "groups_sub": [("{k} neighbours each take {m} {unit}.", "The neighbours take {t} {unit}, leaving {c} {unit}.")],
        "pct_sub": [("{pct}% of the {unit} are eaten at lunch.", "{pct}% of {a} is {t} {unit}, so {c} {unit} are left.")],
        "final_div": [("{P} shares the {unit} equally among {b} friends. How many {unit} does each friend get?",
                       "Each friend gets {c} {unit}.")],
        "final": ["How many {unit} are there now?", "How many {unit} does {P} have at the end?"],
    },
    "money": {
        "units": ["dollars"],
        "things": ["a book", "a toy car", "lunch", "a puzzle", "a scarf", "a board game", "paint"],
        "plural_things": ["notebooks", "pens", "tickets", "sandwiches", "T-shirts", "plants"],
        "start": ["{P} has ${a} in {pos} wallet.", "{P} has saved ${a}.", "{P} starts the week with ${a}."],
        "add": [("{P} earns ${b} mowing lawns.", "{P} now has {c} dollars."),
                ("{F} pays {obj} back ${b}.", "That brings {pos} money to {c} dollars.")],
        "sub": [("{P} spends ${b} on {thing}.", "{P} has {c} dollars left."),
                ("{P} donates ${b} to a charity.", "After the donation {p} has {c} dollars.")],
        "mul": [("By the end of the year {pos} savings have grown to {b} times as much.", "{P} then has {c} dollars.")],
        "div": [("{P} splits the money equally into {b} envelopes and keeps one envelope in {pos} wallet.",
                 "One envelope holds {c} dollars.")],
        "groups_add": [("{P} walks {k} dogs and earns ${m} for each one.", "{P} earns {t} dollars and now has {c} dollars.")],
        "groups_sub": [("{P} buys {k} {things} for ${m} each.", "The {things} cost {t} dollars, so {p} has {c} dollars left.")],
        "pct_sub": [("{P} spends {pct}% of {pos} money on {thing}.", "{pct}% of {a} is {t} dollars, so {p} has {c} dollars left.")],
        "pct_add": [("{P} gets a {pct}% bonus on {pos} money.", "The bonus is {t} dollars, so {p} has {c} dollars.")],
        "final_div": [("{P} shares all of it equally among {b} cousins. How many dollars does each cousin get?",
                       "Each cousin gets {c} dollars.")],
        "final": ["How many dollars does {P} have now?", "How much money, in dollars, does {P} have at the end?"],
    },
    "store": {
        "units": ["shirts", "toys", "books", "lamps", "chairs", "backpacks", "umbrellas"],
        "start": ["A store has {a} {unit} in stock.", "A shop starts the day with {a} {unit}."],
        "add": [("A delivery brings {b} more {unit}.", "The store now has {c} {unit}.")],
        "sub": [("It sells {b} {unit} in the morning.", "After the morning it has {c} {unit}."),
                ("{b} {unit} are returned to the factory.", "That leaves {c} {unit}.")],
        "div": [("The {unit} are split equally among {b} branches and this store keeps one share.",
                 "The store keeps {c} {unit}.")],
        "groups_add": [("It receives {k} boxes with {m} {unit} in each.", "The boxes hold {t} {unit}, so it has {c} {unit}.")],
        "groups_sub": [("{k} customers each buy {m} {unit}.", "The customers buy {t} {unit}, leaving {c} {unit}.")],
        "pct_sub": [("During a sale, {pct}% of the {unit} are sold.", "{pct}% of {a} is {t} {unit}, so {c} {unit} remain.")],
        "pct_add": [("The store increases its stock by {pct}%.", "{pct}% of {a} is {t} {unit}, so the stock becomes {c} {unit}.")],
        "final_div": [("The remaining {unit} are packed equally into {b} crates. How many {unit} go in each crate?",
                       "Each crate holds {c} {unit}.")],
        "final": ["How many {unit} does the store have now?", "How many {unit} are left in the store?"],
    },
    "travel": {
        "units": ["kilometers", "miles"],
        "start": ["{P} is {a} {unit} from home."],
        "start_groups": [("{P} drives away from home at {m} {unit} per hour for {k} hours.", "{P} covers {c} {unit}.")],
        "add": [("{P} then drives {b} more {unit} away from home.", "{P} is now {c} {unit} from home.")],
        "sub": [("{P} then drives {b} {unit} back toward home.", "{P} is now {c} {unit} from home.")],
        "groups_add": [("Next {p} drives away from home for {k} hours at {m} {unit} per hour.",
                        "That adds {t} {unit}, so {p} is {c} {unit} from home.")],
        "groups_sub": [("Then {p} heads back toward home for {k} hours at {m} {unit} per hour.",
                        "That brings {obj} {t} {unit} closer, so {p} is {c} {unit} from home.")],
        "final_div": [("{P} wants to cover that distance back in {b} equal legs. How many {unit} long is each leg?",
                       "Each leg is {c} {unit}.")],
        "final": ["How many {unit} from home is {P} now?", "How far from home, in {unit}, is {P} at the end?"],
    },
    "ages": {
        "units": ["years"],
        "start": ["{P} is {a} years old."],
        "max_result": 110,  # people's ages stay believable whatever max_value says
        "new_subject": True,  # every step introduces a new person whose age depends on the previous one
        "add": [("{Q} is {b} years older than {P}.", "{Q} is {c} years old.")],
        "sub": [("{Q} is {b} years younger than {P}.", "{Q} is {c} years old.")],
        "mul": [("{Q} is {b} times as old as {P}.", "{Q} is {c} years old.")],
        "div": [("{P} is {b} times as old as {Q}.", "{Q} is {c} years old.")],
        "final": ["How old is {P}?", "How many years old is {P}?"],
    },
    "reading": {
        "units": ["pages"],
        "start": ["{P}'s book has {a} pages left to read.", "{P} still has {a} pages of a novel to read."],
        "add": [("{P}'s teacher adds a chapter of {b} pages to the reading.", "Now {c} pages are left.")],
        "sub": [("{P} reads {b} pages on Monday.", "{c} pages are left."),
                ("On the bus {p} reads {b} pages.", "That leaves {c} pages.")],
        "groups_sub": [("Then {p} reads {m} pages a day for {k} days.", "{P} reads {t} pages, so {c} pages are left.")],
        "pct_sub": [("Over the weekend {p} reads {pct}% of the remaining pages.", "{pct}% of {a} is {t} pages, so {c} pages are left.")],
        "final_div": [("{P} wants to finish the rest in {b} days, reading the same number of pages each day. "
                       "How many pages a day must {p} read?", "{P} must read {c} pages a day.")],
        "final": ["How many pages does {P} still have to read?"],
    },
}

_NAMES = [("Maya", "she"), ("Liam", "he"), ("Ava", "she"), ("Noah", "he"), ("Zoe", "she"), ("Omar", "he"),
          ("Priya", "she"), ("Kenji", "he"), ("Elena", "she"), ("Mateo", "he"), ("Aisha", "she"), ("Lucas", "he"),
          ("Grace", "she"), ("Tariq", "he"), ("Nora", "she"), ("Felix", "he"), ("Chloe", "she"), ("Samuel", "he"),
          ("Ines", "she"), ("Jonah", "he"), ("Hana", "she"), ("Diego", "he"), ("Lena", "she"), ("Ravi", "he")]
_PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "his", "him")}
_PERCENTS = (5, 10, 20, 25, 30, 40, 50, 60, 75)

# event kind -> (operators it needs, steps it costs, operator of the main step)
_EVENTS = {
    "add": ({"+"}, 1), "sub": ({"-"}, 1), "mul": ({"*"}, 1), "div": ({"/"}, 1), "final_div": ({"/"}, 1),
    "groups_add": ({"*", "+"}, 2), "groups_sub": ({"*", "-"}, 2),
    "pct_add": ({"*", "/", "+"}, 2), "pct_sub": ({"*", "/", "-"}, 2),
}
_EVENT_WEIGHTS = {"add": 3, "sub": 3, "mul": 2, "div": 2, "final_div": 2, "groups_add": 2, "groups_sub": 2, "pct_add": 1, "pct_sub": 2}


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
        self.env[name] = value
        self.values[name] = value
        return "{" + name + "}"

    def calc(self, expr: str) -> tuple[str, int] | None:
        """Record a calculation; None if it is not a non-negative whole number."""
        value = evaluate_expression(expr.format_map(self.values))
        if value.denominator != 1 or value < 0:
            return None
        name = f"v{len(self.calcs)}"
        self.calcs.append((name, expr))
        self.values[name] = int(value)
        return name, int(value)

    def to_json(self) -> str:
        return json.dumps({"env": self.env, "calcs": self.calcs, "question": self.question, "solution": self.solution},
                          separators=(",", ":"))


def _render_line(line: str, calcs: dict[str, str], values: dict[str, int]) -> str:
    # "[[v3]]" -> "a * b = <<a*b=c>>c" with the expression as written by the builder.
    def annotate(match):
        name = match.group(1)
        expr = calcs[name]
        spaced = re.sub(r"\s*([-+*/])\s*", r" \1 ", expr).strip()
        return f"{spaced} = <<{expr.replace(' ', '')}={{{name}}}>>{{{name}}}"

    return re.sub(r"\[\[(v\d+)\]\]", annotate, line).format_map(values)


def _render_solution(program: dict, values: dict[str, int]) -> tuple[str, int]:
    calcs = dict(program["calcs"])
    lines = [_render_line(line, calcs, values) for line in program["solution"]]
    final = values[program["calcs"][-1][0]]
    return "\n".join(lines) + f"\n#### {final}", final


def _canonical(question: str) -> str:
    return " ".join(question.lower().split())


def problem_split(question: str) -> str:
    """The split a question text belongs to (a pure function of the text; see the module docstring)."""
    digest = hashlib.sha256(_canonical(question).encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % 100 < HELDOUT_PERCENT else "train"


@dataclass
class SyntheticMathConfig:
    """The generator's difficulty and seed: defined once here, nested by the data and alignment stage configs."""

    min_steps: int = field(default=1, metadata={"help": "fewest arithmetic steps (<<...>> annotations) per problem"})
    max_steps: int = field(default=4, metadata={"help": "most arithmetic steps per problem"})
    max_value: int = field(default=100, metadata={"help": "largest operand (intermediate values stay <= 10 x this)"})
    operations: list[str] = field(default_factory=lambda: list(OPERATIONS),
                                  metadata={"help": "allowed operators, a non-empty subset of + - * /"})
    seed: int = field(default=0, metadata={"help": "seed of the problem stream"})

    def __post_init__(self):
        self.operations = list(dict.fromkeys(self.operations))
        if not (isinstance(self.min_steps, int) and isinstance(self.max_steps, int) and 1 <= self.min_steps <= self.max_steps):
            raise ConfigError(f"need 1 <= min_steps <= max_steps, got min_steps={self.min_steps}, max_steps={self.max_steps}")
        if not isinstance(self.max_value, int) or self.max_value < 2:
            raise ConfigError(f"max_value must be an integer >= 2, got {self.max_value!r}")
        if not self.operations or any(op not in OPERATIONS for op in self.operations):
            raise ConfigError(f"operations must be a non-empty subset of {OPERATIONS}, got {tuple(self.operations)!r}")


class _Generator:
    def __init__(self, rng: random.Random, split: str, min_steps: int, max_steps: int, max_value: int,
                 operations: tuple[str, ...]):
        self.split = split
        self.rng, self.min_steps, self.max_steps, self.max_value = rng, min_steps, max_steps, max_value
        self.ops = set(operations)
        self.cap = 10 * max_value
        self.small = max(2, min(10, max_value))  # multipliers, divisors and group counts stay small

    def one(self) -> dict | None:
        rng = self.rng
        theme_name = rng.choice(list(_THEMES))
        theme = _THEMES[theme_name]
        target = rng.randint(self.min_steps, self.max_steps)
        people = rng.sample(_NAMES, 6)  # people[0] is the subject, later ones join in ages problems, the last is a friend
        text = {"unit": rng.choice(theme["units"]), "F": people[-1][0]}
        if "things" in theme:
            text["thing"] = rng.choice(theme["things"])
            text["things"] = rng.choice(theme["plural_things"])
        subject = 0

        def persona(i):
            name, gender = people[i]
            p, pos, obj = _PRONOUNS[gender]
            return {"P": name, "p": p, "pos": pos, "obj": obj}

        prog = _Program()
        fields = {**text, **persona(subject)}
        steps = 0
        final_question = None
        if "start_groups" in theme and "*" in self.ops and rng.random() < 0.5:
            k, m = rng.randint(2, self.small), rng.randint(2, self.max_value)
            kn, mn = prog.literal(k), prog.literal(m)
            name, value = prog.calc(f"{mn}*{kn}")
            q, s = rng.choice(theme["start_groups"])
            prog.question.append(q.format(**fields, k=kn, m=mn))
            prog.solution.append(s.format(**fields, c=f"[[{name}]]"))
            current, steps = name, 1
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
                    fields = {**text, **persona(subject)}
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
        new_subject = theme.get("new_subject", False)
        if new_subject:
            nxt = subject + 1
            if nxt >= len(people) - 1:  # the last person is the friend; keep names distinct
                return None
            fields = {**fields, "Q": people[nxt][0]}
        else:
            nxt = subject
        calcs: list[str] = []
        extra = {}
        cap = min(self.cap, max(theme.get("max_result", self.cap), self.max_value))
        if kind == "add":
            b = rng.randint(1, self.max_value)
            if a + b > cap:
                return None
            bn = prog.literal(b)
            calcs.append(f"{cur}+{bn}")
            extra["b"] = bn
        elif kind == "sub":
            if a < 2:
                return None
            b = rng.randint(1, min(a - 1, self.max_value))
            bn = prog.literal(b)
            calcs.append(f"{cur}-{bn}")
            extra["b"] = bn
        elif kind == "mul":
            choices = [b for b in range(2, self.small + 1) if a * b <= cap]
            if not choices:
                return None
            bn = prog.literal(rng.choice(choices))
            calcs.append(f"{cur}*{bn}")
            extra["b"] = bn
        elif kind in ("div", "final_div"):
            choices = [b for b in range(2, min(a, self.small) + 1) if a % b == 0 and (b < a or kind == "final_div")]
            if not choices:
                return None
            bn = prog.literal(rng.choice(choices))
            calcs.append(f"{cur}/{bn}")
            extra["b"] = bn
        elif kind in ("groups_add", "groups_sub"):
            k = rng.randint(2, self.small)
            limit = self.max_value if kind == "groups_add" else min(self.max_value, (a - 1) // k)
            if limit < 2:
                return None
            m = rng.randint(2, limit)
            if kind == "groups_add" and a + k * m > cap:
                return None
            kn, mn = prog.literal(k), prog.literal(m)
            calcs += [f"{kn}*{mn}", f"{cur}{'+' if kind == 'groups_add' else '-'}" + "{T}"]
            extra.update(k=kn, m=mn)
        else:  # pct_add / pct_sub
            choices = [p for p in _PERCENTS if (a * p) % 100 == 0 and (kind == "pct_sub" or a + a * p // 100 <= cap)]
            if not choices:
                return None
            pn = prog.literal(rng.choice(choices))
            calcs += [f"{cur}*{pn}/100", f"{cur}{'+' if kind == 'pct_add' else '-'}" + "{T}"]
            extra["pct"] = pn
        names = []
        for expr in calcs:
            if names:
                expr = expr.replace("{T}", "{" + names[0] + "}")
            result = prog.calc(expr)
            if result is None:
                return None
            names.append(result[0])
        if len(names) == 2:
            extra["t"] = f"[[{names[0]}]]"
        prog.question.append(q.format(**fields, a=cur, **{k: v for k, v in extra.items() if k != "t"}))
        prog.solution.append(s.format(**fields, a=cur, c=f"[[{names[-1]}]]", **extra))
        return names[-1], nxt, len(names)


def iter_problems(split: str = "train", config: SyntheticMathConfig | None = None, **difficulty) -> Iterator[dict]:
    """Unbounded, seeded stream of problems of one split; `difficulty` keywords are `SyntheticMathConfig` fields.

    Each item has ``question``, ``answer`` (worked solution ending ``#### N``), ``final_answer`` (str of an
    integer), ``steps``, ``topic`` and ``program`` (a JSON description used to build wrong solutions).
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    c = config or SyntheticMathConfig(**difficulty)
    ops = tuple(c.operations)
    rng = random.Random(f"hfscratch-synthetic-math:{split}:{c.seed}")
    gen = _Generator(rng, split, c.min_steps, c.max_steps, c.max_value, ops)
    failures = 0
    while True:
        problem = gen.one()
        if problem is None or "wrong_split" in problem:
            failures += problem is None
            if failures > _MAX_ATTEMPTS:
                raise ConfigError(
                    f"cannot build problems with min_steps={c.min_steps}, max_steps={c.max_steps}, "
                    f"max_value={c.max_value}, operations={ops}; allow more operations (e.g. '+' and '-') or raise max_value")
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
    """The solution with a redundant closing sentence: ``...\n#### 7`` -> ``...\nThe answer is 7.\n#### 7``.

    The working (and so the arithmetic an SFT set teaches) is unchanged: only the style differs."""
    body, final = answer.rsplit("\n#### ", 1)
    return f"{body}\nThe answer is {final}.\n#### {final}"


def to_chat(p: dict, restated: bool = False) -> dict:
    answer = restated_solution(p["answer"]) if restated else p["answer"]
    return {"messages": [{"role": "user", "content": p["question"]}, {"role": "assistant", "content": answer}]}


def rejected_answer(p: dict, rng: random.Random | int | None = None) -> tuple[str, str]:
    """A plausible wrong solution: one calculation slips by a small amount and the error flows to the end.

    Returns (solution text, wrong final answer). Every other step is computed correctly from the slipped value.
    """
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
            values: dict[str, int] = dict(program["env"])
            ok = True
            for i, (name, expr) in enumerate(calcs):
                value = evaluate_expression(expr.format_map(values))
                if i == slip_at:
                    value += delta
                if value.denominator != 1 or value < 0:
                    ok = False
                    break
                values[name] = int(value)
            if ok and values[calcs[-1][0]] != correct:
                text, final = _render_solution(program, values)
                return text, str(final)
    raise ValueError(f"could not build a wrong solution for {p['question']!r}")  # unreachable: a +-1 slip on the last step works


PREFERENCE_KINDS = ("slip", "style")


def to_preference(p: dict, rng: random.Random | int | None = None, kind: str = "slip") -> dict:
    """TRL conversational preference row; the chosen answer is always the correct, concise GSM8K-format solution.

    ``kind="slip"``: the rejected answer has one arithmetic slip that flows to a wrong final answer (correctness).
    ``kind="style"``: the rejected answer is the same correct solution with a redundant ``The answer is N.`` line
    (a preference for concise answers that SFT on a mix of both styles does not encode).
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
