"""The README's quick-start commands run, in order, on the default outputs: the docs and the product stay together.

The commands are read from README.md, never retyped here: the fenced block right after the line
``<!-- quickstart: tested by tests/test_readme_commands.py -->``. Every line of it is an ``hfscratch ...`` command
(they work from an installed wheel too; ``#`` comments and ``\\`` continuations are fine). The test runs them in a
fresh folder in README order, each as ``python -m hfscratch.cli ...``, with two changes only: ``../shared/data``
becomes the shared data folder's absolute path, and each stage gets the step-limiting options of STEP_LIMITS
appended (the last value of an option wins), so the whole chain takes about 1.5 minutes on 2 cores.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hfscratch.cli import COMMANDS

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- quickstart: tested by tests/test_readme_commands.py -->"
SHARED_DATA = "../shared/data"
# The chain the quick start must show (data, chat and export are run too when listed).
REQUIRED_STAGES = ("pretrain", "sft", "dpo", "grpo", "eval")
# Appended to each stage's command: same command shape, a few steps and a few rows instead of the full run.
STEP_LIMITS = {
    "pretrain": ["--max_steps", "3", "--per_device_train_batch_size", "4", "--eval_max_batches", "2", "--save_steps", "3",
                 "--sample_max_new_tokens", "16"],
    "sft": ["--max_steps", "2", "--per_device_train_batch_size", "4", "--synthetic_train_size", "16", "--eval_samples", "0",
            "--report_to", "none"],
    "dpo": ["--max_steps", "2", "--per_device_train_batch_size", "4", "--synthetic_train_size", "16", "--eval_samples", "0",
            "--report_to", "none"],
    "grpo": ["--max_steps", "1", "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "16",
             "--synthetic_train_size", "8", "--eval_samples", "0", "--report_to", "none"],
    "eval": ["--limit", "2"],
    "chat": ["--max-new-tokens", "8"],
}
HINT = re.compile(r"\s*(?:[A-Za-z]+:\s+)?hfscratch ([a-z_]+)\b")  # "next: hfscratch pretrain ...", "  SFT:   hfscratch sft ..."


def quickstart_block(text: str) -> str:
    """The fenced block that follows the marker line; a clear failure when there is none."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == MARKER), None)
    if start is None:
        pytest.fail(f"README.md has no quick-start block to test: put the line {MARKER} right before the ```bash block "
                    f"of `hfscratch` commands that runs the default chain ({', '.join(REQUIRED_STAGES)}, plus data/chat/export)",
                    pytrace=False)
    rest = lines[start + 1:]
    fence = next((i for i, line in enumerate(rest) if line.strip()), None)
    if fence is None or not rest[fence].lstrip().startswith("```"):
        pytest.fail(f"README.md: the line after {MARKER} must open a fenced ```bash block", pytrace=False)
    end = next((i for i in range(fence + 1, len(rest)) if rest[i].lstrip().startswith("```")), None)
    if end is None:
        pytest.fail(f"README.md: the quick-start block after {MARKER} is never closed with ```", pytrace=False)
    return "\n".join(rest[fence + 1:end])


def quickstart_commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists (comments dropped, continuation lines joined)."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        if argv[0] != "hfscratch" or len(argv) < 2 or argv[1] not in COMMANDS:
            pytest.fail(f"README.md quick-start line {line.strip()!r} is not an `hfscratch <command>` call "
                        f"(commands: {', '.join(COMMANDS)}); the tested block holds hfscratch commands only", pytrace=False)
        commands.append(argv[1:])
    stages = [argv[0] for argv in commands]
    missing = [stage for stage in REQUIRED_STAGES if stage not in stages]
    if missing:
        pytest.fail(f"README.md quick-start block lacks `hfscratch {'`, `hfscratch '.join(missing)}`: it should show the whole "
                    f"default chain ({', '.join(REQUIRED_STAGES)})", pytrace=False)
    return commands


def test_readme_quickstart_block_names_the_default_chain():
    commands = quickstart_commands(quickstart_block(README.read_text(encoding="utf-8")))
    stages = [argv[0] for argv in commands]
    order = [stages.index(stage) for stage in ("pretrain", "sft", "dpo", "grpo")]
    assert order == sorted(order), f"the quick start must train in chain order (pretrain, sft, dpo, grpo), not {stages}"


def run_quickstart(commands: list[list[str]], cwd: Path, shared_data: Path) -> list[str]:
    """Run each command in `cwd` as a user would; returns their outputs. Fails at the first command that fails."""
    outputs = []
    for argv in commands:
        argv = [str(shared_data) + arg[len(SHARED_DATA):] if arg.startswith(SHARED_DATA) else arg for arg in argv]
        argv = argv + STEP_LIMITS.get(argv[0], [])
        shown = "hfscratch " + shlex.join(argv)
        proc = subprocess.run([sys.executable, "-m", "hfscratch.cli", *argv], cwd=cwd, capture_output=True, text=True,
                              timeout=600)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"`{shown}` exited with {proc.returncode}:\n{output[-4000:]}"
        assert "Traceback" not in output, f"`{shown}` printed a traceback:\n{output[-4000:]}"
        # A normal run prints no warnings (lm-eval's notes about being handed a loaded model included).
        noisy = [line for line in output.splitlines() if re.search(r"warn|already-initialized|not of type", line, re.I)]
        assert not noisy, f"`{shown}` printed warnings: {noisy}"
        # The hints printed at the end name commands every user has (no recipes/ folder after `pip install hfscratch`).
        assert "accelerate launch recipes/" not in output, f"`{shown}` hints at recipes/:\n{output[-2000:]}"
        for line in proc.stdout.splitlines():
            hint = HINT.match(line)
            assert hint is None or hint.group(1) in COMMANDS, f"`{shown}` names a command that does not exist: {line!r}"
        outputs.append(output)
    return outputs


def test_readme_quickstart_runs_in_order(tmp_path, shared_data):
    commands = quickstart_commands(quickstart_block(README.read_text(encoding="utf-8")))
    outputs = run_quickstart(commands, tmp_path, shared_data)
    assert (tmp_path / "outputs" / "pretrain-tiny" / "final" / "config.json").is_file()
    for stage, output in zip((argv[0] for argv in commands), outputs):
        if stage == "eval":
            assert re.search(r"^\|\s*\w+", output, re.M), f"no results table in the eval output:\n{output[-2000:]}"
