"""Shared test setup: offline Hub, the shared data folder, and a tiny tokenizer/model built on the fly."""

import os

# Nothing may reach the Hub during tests: set before transformers/datasets are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("DS_ACCELERATOR", "cpu")  # deepspeed (imported by accelerate when installed) would probe for GPUs and log it
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on the two cores: one compute thread each (and in the processes they start),
    # or their OpenMP pools would fight over the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`--dist loadgroup`), the tests that share tests/alignment_setup.py's cached base, SFT and
    reward models run in one worker, which builds them once."""
    for item in items:
        if any(getattr(value, "__module__", "") == "tests.alignment_setup" for value in vars(item.module).values()):
            item.add_marker(pytest.mark.xdist_group("alignment"))


def shared_data_dir() -> Path:
    """`../shared/data` beside the repo (CI and developers), or $HFSCRATCH_SHARED_DATA."""
    return Path(os.environ.get("HFSCRATCH_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.fail(f"shared data folder not found at {path}; set HFSCRATCH_SHARED_DATA")
    return path


@pytest.fixture(scope="session")
def shakespeare_text(shared_data) -> str:
    return (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, shakespeare_text):
    """A 512-token byte-level BPE trained on TinyShakespeare in about a second, saved and reloaded."""
    from tests.helpers import build_tiny_tokenizer

    return build_tiny_tokenizer(shakespeare_text, tmp_path_factory.mktemp("tok"))
