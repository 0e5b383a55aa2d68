#!/usr/bin/env python
"""Run transformers' own generic model tests (`ModelTesterMixin`) on hfscratch and on Llama, and compare.

    python compat/run_transformers_generic_tests.py [--cache_dir DIR] [--keep-going] [--report FILE]

For the transformers version that this interpreter imports, the script

1. downloads that version's sdist from PyPI with pip (`pip download --no-deps --no-binary :all:`) once, and unpacks its
   top-level `tests/` folder as the package `transformers_tests` under `<cache_dir>/<version>/` (reused later);
2. writes stub modules for what `test_modeling_common.py` imports but the sdist does not ship (in 5.23/5.24:
   `tests/exporters/test_export.py` -> `ExportTesterMixin`, `tests/generation/test_utils.py` ->
   `GenerationTesterMixin`). The stubs are empty classes, so the export and generate mixin tests are NOT part of this
   run, for both models equally; every test defined by `ModelTesterMixin` itself is;
3. copies `compat/generic_model_test.py` (the model tester, one small config for both models, and the test classes
   `HfscratchGenericModelTest` and `LlamaGenericModelTest`) into that package;
4. runs pytest on it in a subprocess (HF_HUB_OFFLINE=1, `-p no:cacheprovider`, a per-test timeout, junit xml; never
   `-x`) and reads each test's outcome from the junit xml;
5. prints one table (model | passed | failed | skipped), the hfscratch failures, and the tests skipped for hfscratch
   but not for Llama with their skip reasons; `--report FILE` writes the same as markdown.

Exit status: 0 when hfscratch has no failure and no skip that Llama does not also have; 1 otherwise (with
`--keep-going`: 0 anyway, for report-only jobs such as a canary on a newer transformers); 2 when the run could not
be set up (sdist download, pytest not starting, no test collected).
Needs pytest, pytest-timeout and parameterized in this interpreter.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

COMPAT_DIR = Path(__file__).resolve().parent
REPO_ROOT = COMPAT_DIR.parent
TEST_SOURCE = COMPAT_DIR / "generic_model_test.py"
PACKAGE = "transformers_tests"  # the sdist's `tests/` renamed: no clash with this repo's (or any other) `tests`
TEST_MODULE = "test_hfscratch_generic.py"
MODELS = {"hfscratch": "HfscratchGenericModelTest", "Llama": "LlamaGenericModelTest"}
DONE_MARKER = ".unpacked"
VERSION_ENV = "HFSCRATCH_GENERIC_TESTS_TRANSFORMERS"  # the version whose sdist tests were unpacked
PYTEST_INI = """\
[pytest]
# Written by compat/run_transformers_generic_tests.py. Keeps this folder's runs (also the pytest subprocesses that
# transformers' `run_test_using_subprocess` starts from here) off the options of any pyproject.toml further up.
markers =
    accelerate_tests
    flash_attn_test
    flash_attn_3_test
    flash_attn_4_test
    torch_compile_test
    torch_export_test
    generate
    slow
"""


class SetupError(Exception):
    """A one-line reason the run could not be set up (exit status 2)."""


# ------------------------------------------------------------------------------------------------ sdist


def subprocess_env(root: Path) -> dict[str, str]:
    """The environment of the pytest run (and of the version probe, so both see the same transformers)."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               TOKENIZERS_PARALLELISM="false", DS_ACCELERATOR=env.get("DS_ACCELERATOR", "cpu"))
    # the cache folder (for `transformers_tests`) and this checkout (for `hfscratch`) first, then the caller's path
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def transformers_version(env: dict[str, str] | None = None) -> tuple[str, str]:
    """(version, package folder) of the transformers that this interpreter imports."""
    code = "import os, transformers; print(transformers.__version__); print(os.path.dirname(transformers.__file__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SetupError(f"`import transformers` fails in {sys.executable}: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    version, location = out.stdout.strip().splitlines()[-2:]
    return version, location


def download_sdist(version: str, dest: Path) -> Path:
    existing = sorted(dest.glob(f"transformers-{version}.tar.gz"))
    if existing:
        return existing[0]
    with tempfile.TemporaryDirectory(prefix="sdist-", dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
               f"transformers=={version}", "-d", tmp]
        out = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(Path(tmp).glob("transformers-*.tar.gz"))
        if out.returncode != 0 or not found:
            last = ((out.stderr or out.stdout).strip().splitlines() or ["no sdist in pip's output"])[-1].strip()
            raise SetupError(
                f"could not download the transformers {version} sdist from PyPI ({last}); fix: allow this machine to "
                f"reach PyPI, or put transformers-{version}.tar.gz into {dest}/ (e.g. from `pip download --no-deps "
                f"--no-binary :all: transformers=={version}` run elsewhere) and run again")
        target = dest / found[0].name
        shutil.move(str(found[0]), target)
        return target


def unpack_tests(sdist: Path, package_dir: Path) -> None:
    """The sdist's top-level `tests/` files (the *_common.py / *_mixin.py modules) into `package_dir`."""
    tmp_dir = package_dir.with_name(package_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if len(parts) == 3 and parts[1] == "tests" and member.isfile() and parts[2].endswith(".py"):
                member.name = parts[2]
                tar.extract(member, tmp_dir, filter="data")
    if not (tmp_dir / "test_modeling_common.py").is_file():
        raise SetupError(f"{sdist.name} has no tests/test_modeling_common.py; this runner needs transformers' "
                         "generic model tests")
    shutil.rmtree(package_dir, ignore_errors=True)
    tmp_dir.rename(package_dir)


# ------------------------------------------------------------------------------------------------ stubs

STUB_HEADER = '''"""STUB written by compat/run_transformers_generic_tests.py: the transformers sdist does not ship this module.

Its tests are not part of the generic-model run (for hfscratch and Llama alike); the names that
test_modeling_common.py imports from it are empty here."""
'''


def relative_imports(source: str) -> dict[str, list[str]]:
    """`from .a.b import X, Y` (also parenthesised, multi-line) at any indent -> {"a.b": ["X", "Y"]}."""
    found: dict[str, list[str]] = {}
    for module, names in re.findall(r"^[ \t]*from \.([\w.]+) import (\([^)]*\)|[^\n]+)", source, flags=re.M):
        for name in re.split(r"[,\s()]+", names):
            name = name.split("#")[0].strip()
            if name and name != "as" and name.isidentifier():
                found.setdefault(module, []).append(name)
    return found


def write_stubs(package_dir: Path) -> list[str]:
    """Stub every module that test_modeling_common.py imports relatively (directly or through the sdist's own
    modules it imports) but that the sdist lacks; returns what was stubbed."""
    needed: dict[str, list[str]] = {}
    to_scan, scanned = ["test_modeling_common"], set()
    while to_scan:
        current = to_scan.pop()
        scanned.add(current)
        path = package_dir.joinpath(*current.split(".")).with_suffix(".py")
        for module, names in relative_imports(path.read_text(encoding="utf-8")).items():
            target = package_dir.joinpath(*module.split(".")).with_suffix(".py")
            if target.is_file() and not target.read_text(encoding="utf-8").startswith(STUB_HEADER):
                if module not in scanned:
                    to_scan.append(module)  # shipped by the sdist: its own imports may need stubs
            else:
                needed.setdefault(module, []).extend(names)
    stubbed = []
    for module, names in sorted(needed.items()):
        path = package_dir.joinpath(*module.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in [path.parent, *path.parent.parents]:
            if parent == package_dir.parent:
                break
            (parent / "__init__.py").touch()
        body = [STUB_HEADER]
        for name in dict.fromkeys(names):
            if name[:1].isupper():
                body.append(f"\n\nclass {name}:\n    pass\n")
            else:
                body.append(f"\n\ndef {name}(*args, **kwargs):\n    import pytest\n\n"
                            f"    pytest.skip('{module}.{name} is a stub (not shipped in the transformers sdist)')\n")
        path.write_text("".join(body), encoding="utf-8")
        stubbed.append(f"{module.replace('.', '/')}.py ({', '.join(dict.fromkeys(names))})")
    return stubbed


def prepare(cache_dir: Path, version: str) -> tuple[Path, list[str]]:
    root = cache_dir / version
    root.mkdir(parents=True, exist_ok=True)
    gitignore = cache_dir / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("# written by compat/run_transformers_generic_tests.py\n*\n", encoding="utf-8")
    package_dir = root / PACKAGE
    if not (root / DONE_MARKER).is_file():
        sdist = download_sdist(version, root)
        unpack_tests(sdist, package_dir)
        (root / DONE_MARKER).write_text(sdist.name + "\n", encoding="utf-8")
    (package_dir / "__init__.py").touch()
    stubbed = write_stubs(package_dir)
    shutil.copyfile(TEST_SOURCE, package_dir / TEST_MODULE)  # always the current compat/ source
    (root / "pytest.ini").write_text(PYTEST_INI, encoding="utf-8")
    return root, stubbed


# ------------------------------------------------------------------------------------------------ run + parse


def run_pytest(root: Path, version: str, timeout: int, extra: list[str], log_path: Path, show: bool) -> tuple[int, Path]:
    junit = root / "junit.xml"
    junit.unlink(missing_ok=True)
    env = subprocess_env(root)
    env[VERSION_ENV] = version  # the test module refuses to run against another transformers
    cmd = [sys.executable, "-m", "pytest", f"{PACKAGE}/{TEST_MODULE}", "-c", "pytest.ini", "--rootdir", ".",
           "-p", "no:cacheprovider", "-q", "-rfEs", f"--timeout={timeout}", f"--junitxml={junit.name}",
           "-o", "junit_family=xunit1", *extra]
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if show:
                sys.stdout.write(line)
                sys.stdout.flush()
        rc = proc.wait()
    return rc, junit


RANK = {"passed": 0, "skipped": 1, "failed": 2}


def parse_junit(junit: Path) -> dict[str, dict[str, tuple[str, str]]]:
    """{model: {test name: (outcome, detail)}}; a setup/teardown error counts as a failure."""
    results: dict[str, dict[str, tuple[str, str]]] = {model: {} for model in MODELS}
    by_class = {cls: model for model, cls in MODELS.items()}
    for case in ET.parse(junit).getroot().iter("testcase"):
        model = by_class.get(case.get("classname", "").rsplit(".", 1)[-1])
        if model is None:
            continue
        # Subtests (one per model class in many tests) add one <skipped>/<failure> each: any failure fails the test,
        # any skip (even of one subtest) counts as a skip, with all distinct reasons.
        outcome, failures, skips = "passed", [], []
        for child in case:
            message = (child.get("message") or child.text or child.tag).strip()
            if child.tag in ("failure", "error"):
                outcome = "failed"
                failures.append(message)
            elif child.tag == "skipped":
                outcome = "failed" if outcome == "failed" else "skipped"
                skips.append(message)
        detail = " || ".join(dict.fromkeys(failures if outcome == "failed" else skips))
        name = case.get("name", "?")
        previous = results[model].get(name)
        if previous is None or RANK[outcome] > RANK[previous[0]]:  # a test can appear twice (call + teardown error)
            results[model][name] = (outcome, detail)
    return results


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_report(version: str, results, stubbed: list[str], wall: float) -> tuple[str, str, bool]:
    """(plain text, markdown, ok)."""
    counts = {m: {o: sum(1 for r in res.values() if r[0] == o) for o in RANK} for m, res in results.items()}
    ours, llama = results["hfscratch"], results["Llama"]
    failures = sorted((n, d) for n, (o, d) in ours.items() if o == "failed")
    extra_skips = sorted((n, d) for n, (o, d) in ours.items() if o == "skipped" and llama.get(n, ("",))[0] != "skipped")
    llama_failures = sorted((n, d) for n, (o, d) in llama.items() if o == "failed")
    ok = bool(ours) and not failures and not extra_skips

    header = ("model", "passed", "failed", "skipped")
    rows = [(m, *(str(counts[m][o]) for o in header[1:])) for m in MODELS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    fmt = lambda r: " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    title = f"transformers {version} ModelTesterMixin tests, hfscratch vs Llama (same config), {wall:.0f} s"
    text = [title, "", fmt(header), "-+-".join("-" * w for w in widths), *map(fmt, rows), ""]
    md = [f"### {title}", "", "| " + " | ".join(header) + " |", "|---|---:|---:|---:|",
          *("| " + " | ".join(r) + " |" for r in rows), ""]

    def section(label, items, empty):
        text.append(f"{label}: {len(items) if items else empty}")
        md.append(f"**{label}:** {len(items) if items else empty}")
        md.append("")
        for name, detail in items:
            text.append(f"  - {name}: {one_line(detail)}")
            md.append(f"- `{name}`: {one_line(detail).replace('|', '/')}")
        if items:
            md.append("")

    section("hfscratch failures", failures, "none")
    section("skipped for hfscratch but not for Llama", extra_skips, "none")
    if llama_failures:
        section("Llama failures (reference only, not part of the verdict)", llama_failures, "none")
    if not ours:
        text.append("no hfscratch test ran (see the pytest log)")
        md.append("no hfscratch test ran (see the pytest log)")
    note = ("not run (stubs, for both models): " + "; ".join(stubbed)) if stubbed else "nothing stubbed"
    text += [note, f"verdict: {'OK' if ok else 'NOT OK'}"]
    md += ["", f"_{note}_", "", f"**verdict: {'OK' if ok else 'NOT OK'}**", ""]
    return "\n".join(text), "\n".join(md), ok


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache_dir", "--cache-dir", type=Path, default=REPO_ROOT / ".cache" / "transformers-tests",
                        help="where <version>/ with the unpacked sdist tests lives (default: %(default)s)")
    parser.add_argument("--keep-going", action="store_true",
                        help="exit 0 even when hfscratch fails or has extra skips (report only); setup errors still exit 2")
    parser.add_argument("--report", type=Path, help="also write the table and lists as markdown to this file")
    parser.add_argument("--timeout", type=int, default=300, help="per-test timeout in seconds (default: %(default)s)")
    parser.add_argument("--show-output", action="store_true", help="stream pytest's output (always in the log file)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments after `--`, e.g. -- -k rope")
    args = parser.parse_args(argv)
    if any(a in ("-x", "--exitfirst") or a.startswith("--maxfail") for a in args.pytest_args):
        parser.error("-x/--maxfail would hide failures: the verdict needs every test's outcome")

    start = time.time()
    try:
        version, location = transformers_version()
        root, stubbed = prepare(args.cache_dir.resolve(), version)
        in_run = transformers_version(subprocess_env(root))
        if in_run != (version, location):
            raise SetupError(f"the pytest environment imports transformers {in_run[0]} from {in_run[1]}, "
                             f"not {version} from {location}")
        print(f"transformers {version} from {location} ({sys.executable}); its sdist's tests in {root}", flush=True)
        log_path = root / "pytest.log"
        rc, junit = run_pytest(root, version, args.timeout, args.pytest_args, log_path, args.show_output)
        if not junit.is_file():
            raise SetupError(f"pytest exited {rc} without a junit report; see {log_path}")
        results = parse_junit(junit)
        if not any(results.values()):
            raise SetupError(f"pytest (exit {rc}) ran no test of {', '.join(MODELS.values())}; see {log_path}")
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    text, md, ok = build_report(version, results, stubbed, time.time() - start)
    print(text)
    print(f"pytest log: {log_path}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(md, encoding="utf-8")
    return 0 if ok or args.keep_going else 1


if __name__ == "__main__":
    sys.exit(main())
