"""Publish a model folder to the Hugging Face Hub and fetch one back, with retries and one-line errors.

`push_folder` uploads what `save_pretrained` wrote (safetensors, tokenizer, the modeling files + `auto_map` so
`trust_remote_code=True` works without hfscratch, a model card) in one commit; pickled weights are never uploaded.
`push_checkpoint` does it in the background to a branch per step (`step-001000`), so training never waits on the
network. A push that died half way can be re-run: content the Hub already has is skipped. The token is never printed.
"""

from __future__ import annotations

import argparse
import atexit
import fnmatch
import json
import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token, snapshot_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id as hf_validate

from .errors import CheckpointError, HfscratchError, HubError
from .hub_errors import describe_hub_error, first_line, hub_endpoint, hub_errors, log, with_retries
from .model_card import write_model_card

# Weight formats that unpickle (run code) on load: never uploaded.
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")
# Not part of a model: VCS/cache folders, Python caches, Trainer intermediate checkpoints, logger runs.
SKIP_DIRS = (".*", "__pycache__", "checkpoint-*", "runs", "wandb", "logs")
AUTO_MAP = {
    "AutoConfig": "configuration_hfscratch.HfscratchConfig",
    "AutoModel": "modeling_hfscratch.HfscratchModel",
    "AutoModelForCausalLM": "modeling_hfscratch.HfscratchForCausalLM",
    "AutoModelForSequenceClassification": "modeling_hfscratch.HfscratchForSequenceClassification",
}
MODELING_FILES = ("configuration_hfscratch.py", "modeling_hfscratch.py")
_BRANCH_RE = re.compile(r"^(?!/)(?!.*//)(?!.*\.\.)(?!.*@\{)(?!.*\.lock$)(?!.*/$)[A-Za-z0-9._\-/]{1,200}$")


def validate_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise HubError("empty repo id; pass --repo-id ORG/NAME")
    try:
        hf_validate(repo_id)
    except HFValidationError as err:
        raise HubError(
            f"invalid repo id '{repo_id}': {first_line(err).rstrip('.')}; use ORG/NAME with letters, digits, '-', '_' or '.'"
        ) from err
    if repo_id.count("/") > 1:
        raise HubError(f"invalid repo id '{repo_id}': use ORG/NAME (one '/')")
    return repo_id


def validate_revision(revision: str | None) -> str | None:
    if revision is None or revision == "":
        return None
    if not _BRANCH_RE.match(revision) or revision.startswith("refs/"):
        raise HubError(f"invalid branch name '{revision}'; use letters, digits, '.', '_', '-' and '/' (e.g. step-001000)")
    return revision


def checkpoint_branch(step: int) -> str:
    """Branch name of the checkpoint at `step`: step-001000 (zero-padded so names sort by step)."""
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise HubError(f"checkpoint step must be a non-negative integer, got {step!r}")
    return f"step-{step:06d}"


def matches_any(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _collect_files(folder: Path) -> tuple[list[Path], list[str]]:
    """Files to upload (relative paths) and a list of what was skipped and why."""
    files, skipped = [], []
    for root, dirs, names in os.walk(folder):
        root_path = Path(root)
        dirs.sort()
        for skip in [d for d in dirs if matches_any(d, SKIP_DIRS)]:
            skipped.append(f"{(root_path / skip).relative_to(folder)}/ (not part of the model)")
            dirs.remove(skip)
        for name in sorted(n for n in names if not n.startswith(".")):
            rel = (root_path / name).relative_to(folder)
            if matches_any(name, PICKLE_PATTERNS):
                skipped.append(f"{rel} (pickle: not uploaded, weights go as safetensors)")
            else:
                files.append(rel)
    return files, skipped


def check_model_folder(folder) -> tuple[Path, dict]:
    """A folder save_pretrained wrote: config.json + safetensors weights. Returns (path, config)."""
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(f"{folder} does not exist; pass the folder model.save_pretrained() wrote")
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is a file, not a model folder; pass the folder model.save_pretrained() wrote")
    config_path = folder / "config.json"
    if not config_path.is_file() and (folder / "adapter_config.json").is_file():
        config_path = folder / "adapter_config.json"  # a PEFT adapter folder (LoRA from the SFT/DPO stages)
    if not config_path.is_file():
        raise CheckpointError(f"{folder} is not a model folder (no config.json); pass the folder model.save_pretrained() wrote")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path} is not valid JSON ({err.msg}); re-save the model with save_pretrained") from err
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if matches_any(p.name, PICKLE_PATTERNS))
        if pickles:
            raise CheckpointError(f"{folder} holds only pickled weights ({', '.join(pickles)}), which hfscratch never "
                                  "uploads; re-save with model.save_pretrained(path) (safetensors is the default)")
        raise CheckpointError(f"{folder} has no *.safetensors weights; save the model with model.save_pretrained(path)")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise CheckpointError(f"{folder} is missing weight shards {missing[:3]}; the save did not finish, re-save the model")
    return folder, config


def _operations(folder: Path, config: dict, repo_id: str, *, announce: bool = True):
    """CommitOperationAdd list for the folder; fixes remote-code loading in the upload, not in the folder."""
    say = log if announce else lambda message: None
    files, skipped = _collect_files(folder)
    sources: dict[str, bytes | Path] = {rel.as_posix(): folder / rel for rel in files}
    if config.get("model_type") == "hfscratch":
        auto_map = dict(config.get("auto_map") or {})
        if not all(key in auto_map for key in ("AutoConfig", "AutoModelForCausalLM")):
            fixed = {**config, "auto_map": {**AUTO_MAP, **auto_map}}
            sources["config.json"] = (json.dumps(fixed, indent=2, sort_keys=True) + "\n").encode()
            say("config.json had no auto_map: the uploaded copy gets one so trust_remote_code loading works")
        for name in MODELING_FILES:
            installed, local = Path(__file__).with_name(name), folder / name
            if not local.is_file():
                sources[name] = installed
                say(f"{name} missing in the folder: uploading the one from the installed hfscratch")
            elif local.read_bytes() != installed.read_bytes():
                # Remote-code users run this file on their own transformers: an older hfscratch's copy may not follow
                # its API (5.24's `cache` rename made such copies decode without KV cache); ours computes the same.
                sources[name] = installed
                say(f"{name} in the folder differs from the installed hfscratch's: uploading the installed one")
    readme = folder / "README.md"
    if readme.is_file():
        # A card written before the repo id was known shows `path/to/<folder>` in its loading snippets.
        text = readme.read_text(encoding="utf-8", errors="replace")
        placeholder = f'"path/to/{folder.resolve().name}"'
        if placeholder in text:
            sources["README.md"] = text.replace(placeholder, f'"{repo_id}"').encode()
    if skipped:
        say("skipped: " + "; ".join(skipped))
    return [CommitOperationAdd(path_in_repo=key, path_or_fileobj=source if isinstance(source, bytes) else str(source))
            for key, source in sources.items()]


def _resolve_token(token: str | None, private: bool) -> str | None:
    token = token or get_token()
    if token is None:
        need = "pushing to a private repo needs a token" if private else "pushing needs a token with write access"
        raise HubError(f"{need}: run `hf auth login` or set HF_TOKEN")
    return token


def _push(folder: Path, repo_id: str, *, revision: str | None, private: bool, token: str | None,
          commit_message: str | None):
    folder, config = check_model_folder(folder)
    repo_id = validate_repo_id(repo_id)
    revision = validate_revision(revision)
    token = _resolve_token(token, private)
    if constants.is_offline_mode():
        raise HubError(f"cannot push to '{repo_id}': offline mode is on (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE")
    if not (folder / "README.md").is_file() and (folder / "config.json").is_file():
        write_model_card(folder, extra={"repo_id": repo_id})
        log(f"wrote a model card to {folder / 'README.md'}")
    try:
        library_version = version("hfscratch")
    except PackageNotFoundError:
        library_version = "dev"
    api = HfApi(endpoint=hub_endpoint(), token=token, library_name="hfscratch", library_version=library_version)
    with hub_errors(repo_id, f"pushing {folder} to"):
        repo_url = with_retries(lambda: api.create_repo(repo_id, private=private, exist_ok=True), what="create_repo")
        full_repo_id = getattr(repo_url, "repo_id", None) or repo_id
        if private and not with_retries(lambda: api.repo_info(full_repo_id), what="repo_info").private:
            # create_repo leaves an existing repo's visibility alone: never publish what was meant to be private.
            raise HubError(f"'{full_repo_id}' already exists and is public, but --private was asked; make it private "
                           "in the repo settings first, or push without --private")
        if revision and revision != "main":
            with_retries(lambda: api.create_branch(full_repo_id, branch=revision, exist_ok=True), what="create_branch")
        message = commit_message or (f"Upload model from hfscratch to {revision}" if revision else "Upload model from hfscratch")

        def commit():
            # Fresh operations per attempt: an attempt that died after uploading some LFS objects leaves them
            # on the Hub, and the LFS batch answer makes this attempt skip them.
            return api.create_commit(full_repo_id, _operations(folder, config, full_repo_id, announce=False),
                                     commit_message=message, revision=revision)

        _operations(folder, config, full_repo_id, announce=True)  # validate + report before the network work
        info = with_retries(commit, what="upload")
    log(f"pushed {folder} to {repo_url}" + (f" (branch {revision})" if revision else "") + f", commit {info.oid[:8]}")
    return info


_EXECUTOR: ThreadPoolExecutor | None = None
_PENDING: list[Future] = []


def _executor() -> ThreadPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        # One worker: checkpoint pushes land in order and never compete with each other for bandwidth.
        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hfscratch-push")
        atexit.register(wait_for_pushes)
    return _EXECUTOR


def push_folder(folder, repo_id: str, *, revision: str | None = None, private: bool = False, token: str | None = None,
                commit_message: str | None = None, run_as_future: bool = False):
    """Upload a saved model folder to `repo_id` (created if needed) in one commit on branch `revision` (created from
    main if missing); returns its `CommitInfo`, or with `run_as_future=True` a `Future` of a background upload."""
    kwargs = dict(revision=revision, private=private, token=token, commit_message=commit_message)
    if not run_as_future:
        return _push(Path(folder), repo_id, **kwargs)
    # Check the cheap things now so a typo fails in the caller, not in a thread.
    check_model_folder(folder)
    validate_repo_id(repo_id)
    validate_revision(revision)
    kwargs["token"] = _resolve_token(token, private)
    future = _executor().submit(_push, Path(folder), repo_id, **kwargs)
    future.add_done_callback(_report_background_failure)
    _PENDING.append(future)
    return future


def push_checkpoint(folder, repo_id: str, step: int, tokens_seen: int, *, private: bool = False, token: str | None = None,
                    blocking: bool = False):
    """Push a checkpoint to branch `step-{step:06d}` in the background; returns a `Future` (`blocking=True`: the
    `CommitInfo`). The folder must stay on disk until it is done: `wait_for_pushes()` waits (it also runs at exit)."""
    branch = checkpoint_branch(step)
    message = f"Checkpoint at step {step:,} ({tokens_seen:,} tokens seen)"
    return push_folder(folder, repo_id, revision=branch, private=private, token=token, commit_message=message,
                       run_as_future=not blocking)


def _report_background_failure(future: Future) -> None:
    err = future.exception()
    if err is not None:
        text = str(err) if isinstance(err, HfscratchError) else describe_hub_error(err, None, "background push")
        log(f"background push failed: {text}")


def wait_for_pushes(timeout: float | None = None) -> list:
    """Wait for every background push started by this process; returns their results (exceptions included)."""
    results = []
    for future in list(_PENDING):
        try:
            results.append(future.result(timeout=timeout))
        except Exception as err:  # noqa: BLE001 - already reported by the done callback
            results.append(err)
        _PENDING.remove(future)
    return results


def download_model(repo_id: str, *, revision: str | None = None, token: str | None = None) -> Path:
    """Snapshot of a Hub model (safetensors, configs, tokenizer, modeling code; no pickles) -> local folder."""
    repo_id = validate_repo_id(repo_id)
    patterns = ["*.json", "*.safetensors", "*.py", "*.jinja", "*.txt", "*.model", "*.md", "*.tiktoken"]
    with hub_errors(repo_id, "downloading"):
        path = with_retries(lambda: snapshot_download(repo_id, revision=revision, token=token, endpoint=hub_endpoint(),
                                                      allow_patterns=patterns), what="download")
    return Path(path)


def resolve_model_path(path_or_repo: str, *, revision: str | None = None, token: str | None = None) -> Path:
    """A local model folder as is, or a Hub repo id downloaded to the cache."""
    if Path(path_or_repo).expanduser().is_dir():
        return Path(path_or_repo).expanduser()
    text = str(path_or_repo)
    if text.startswith((".", "/", "~")) or os.sep in text.replace("/", "", 1):
        raise CheckpointError(f"{text} does not exist; pass a model folder or a Hub repo id (ORG/NAME)")
    return download_model(text, revision=revision, token=token)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="model folder written by save_pretrained (config.json + *.safetensors)")
    parser.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub (created if missing)")
    parser.add_argument("--revision", default=None, help="branch to push to (created from main if missing), e.g. step-001000")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--commit-message", default=None, help="commit message (default: 'Upload model from hfscratch')")
    parser.epilog = "The token comes from `hf auth login` or HF_TOKEN; the endpoint from HF_ENDPOINT."


def run(args: argparse.Namespace) -> int:
    info = push_folder(args.path, args.repo_id, revision=args.revision, private=args.private,
                       commit_message=args.commit_message)
    print(info.commit_url)
    return 0


__all__ = [
    "add_arguments", "check_model_folder", "checkpoint_branch", "describe_hub_error", "download_model", "hub_errors",
    "push_checkpoint", "push_folder", "resolve_model_path", "run", "validate_repo_id", "wait_for_pushes", "with_retries",
]
