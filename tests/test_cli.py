"""`hfscratch` lists every pipeline stage and turns bad input into one line with exit code 2."""

import subprocess
import sys

from hfscratch.cli import COMMANDS, main


def test_help_lists_every_stage(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out, f"`hfscratch {command}` missing from --help"


def test_unknown_command_and_option_are_one_line_errors():
    for argv in (["nope"], ["--bogus"]):
        proc = subprocess.run([sys.executable, "-m", "hfscratch.cli", *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr


def exit_code_and_stderr(argv: list[str], capsys) -> tuple[int, str]:
    """`hfscratch <argv>` in this process (the other tests here run real processes; this checks parsing only)."""
    try:
        code = main(argv)
    except SystemExit as stopped:  # argparse's own exit, e.g. on an unrecognized option
        code = stopped.code
    return code, capsys.readouterr().err


def test_options_take_underscores_and_hyphens(tmp_path, capsys):
    # One convention for every command: `--repo_id` works where the command declares `--repo-id`, and
    # `--max-new-tokens` where it declares `--max_new_tokens`; the rewritten spelling reaches the same option.
    for argv in (["push", str(tmp_path / "missing"), "--repo_id", "alice/x"],
                 ["push", str(tmp_path / "missing"), "--repo-id", "alice/x"],
                 ["eval", str(tmp_path / "missing"), "--max-gen-toks", "8", "--tasks", "arc_easy_local"],
                 ["eval", str(tmp_path / "missing"), "--max_gen_toks", "8", "--tasks", "arc_easy_local"]):
        code, err = exit_code_and_stderr(argv, capsys)
        assert code == 2 and err.startswith("error:") and "unrecognized arguments" not in err, err
    code, err = exit_code_and_stderr(["push", str(tmp_path / "missing"), "--repo-id", "alice/x", "--no_such_option"], capsys)
    assert code == 2 and "--no_such_option" in err  # an unknown option is still refused, in either spelling


def test_user_error_has_no_traceback_unless_debug(tmp_path):
    argv = ["export", str(tmp_path / "missing"), str(tmp_path / "out"), "--to", "llama"]
    proc = subprocess.run([sys.executable, "-m", "hfscratch.cli", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "missing" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "hfscratch.cli", *argv, "--debug"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
