"""Hub requests that fail: which failures are worth a retry (with backoff), and the one line a user sees for the rest
(a `HubError` naming the fix: log in, check the repo id, check HF_ENDPOINT). The token is never printed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

import httpx2
from huggingface_hub import constants
from huggingface_hub import errors as hf_errors

from .errors import HfscratchError, HubError

T = TypeVar("T")
# Failures of the network or the Hub (not bugs): these become a one-line HubError.
_NETWORK_ERRORS = (hf_errors.HfHubHTTPError, hf_errors.OfflineModeIsEnabled, httpx2.HTTPError, ConnectionError)
# Retries: HFSCRATCH_HUB_RETRIES attempts after the first, waits of HFSCRATCH_HUB_BACKOFF * 2^k seconds (max 30).
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF_SECONDS = 1.0


def log(message: str) -> None:
    print(f"[hfscratch hub] {message}", file=sys.stderr, flush=True)


def hub_endpoint() -> str:
    # Read at call time (not import time) so HF_ENDPOINT set by a launcher after import still applies.
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _status(err: BaseException) -> int | None:
    return getattr(getattr(err, "response", None), "status_code", None)


def _root_causes(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _is_transient(err: BaseException) -> bool:
    """Connection drops, timeouts, 5xx and 429 are worth retrying; 4xx answers are not."""
    for cause in _root_causes(err):
        if isinstance(cause, hf_errors.OfflineModeIsEnabled):
            return False
        if isinstance(cause, hf_errors.HfHubHTTPError):
            status = _status(cause)
            return status is None or status >= 500 or status in (408, 429)
        if isinstance(cause, (httpx2.TransportError, ConnectionError, TimeoutError)):
            return True
    return False


def describe_hub_error(err: BaseException, repo_id: str | None, action: str) -> str:
    """One line: what failed and what to do. Never includes the token (hub errors carry only URLs)."""
    endpoint = hub_endpoint()
    repo = f"'{repo_id}'" if repo_id else "the repository"
    for cause in _root_causes(err):
        if isinstance(cause, hf_errors.OfflineModeIsEnabled):
            return f"{action} {repo}: offline mode is on (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE to reach {endpoint}"
        if isinstance(cause, hf_errors.GatedRepoError):
            return f"{action} {repo}: the repository is gated; accept its terms on the Hub, then log in with `hf auth login`"
        if isinstance(cause, hf_errors.RevisionNotFoundError):
            return f"{action} {repo}: that revision (branch, tag or commit) does not exist; check the branch name on the repo page or omit --revision"
        if isinstance(cause, hf_errors.RemoteEntryNotFoundError):
            return f"{action} {repo}: a file is missing in the repository ({first_line(cause)}); push the complete model folder"
        if isinstance(cause, hf_errors.RepositoryNotFoundError):
            if _status(cause) == 401:
                return (f"{action} {repo}: not authorised (401) - the repository is private or does not exist; "
                        "log in with `hf auth login` or set HF_TOKEN to a token that can read it")
            return f"{action} {repo}: repository not found (404) at {endpoint}; check the repo id (ORG/NAME) and HF_ENDPOINT"
        if isinstance(cause, hf_errors.HfHubHTTPError):
            status = _status(cause)
            server = getattr(cause, "server_message", None) or ""
            detail = f" ({server.strip().splitlines()[0]})" if server.strip() else ""
            if status == 401:
                return f"{action} {repo}: not authorised (401){detail}; log in with `hf auth login` or set HF_TOKEN to a valid token"
            if status == 403:
                return f"{action} {repo}: forbidden (403){detail}; use a token with write access to that namespace (`hf auth login`)"
            if status == 404:
                return f"{action} {repo}: not found (404) at {endpoint}{detail}; check the repo id and HF_ENDPOINT"
            if status is not None and status >= 500:
                return f"{action} {repo}: the Hub at {endpoint} answered {status}{detail} after retries; try again later"
            return f"{action} {repo}: the Hub answered {status}{detail}"
        if isinstance(cause, (httpx2.ConnectError, ConnectionRefusedError)):
            return f"{action} {repo}: cannot connect to {endpoint} ({first_line(cause) or 'connection refused'}); check your network or HF_ENDPOINT"
        if isinstance(cause, httpx2.TimeoutException):
            return f"{action} {repo}: {endpoint} timed out after retries; check your network and re-run (finished files are skipped)"
        if isinstance(cause, (httpx2.TransportError, ConnectionError)):
            return (f"{action} {repo}: the connection to {endpoint} broke ({type(cause).__name__}: {first_line(cause)}); "
                    "re-run the same command - files already uploaded are skipped")
    return f"{action} {repo}: {type(err).__name__}: {first_line(err)}"


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


@contextmanager
def hub_errors(repo_id: str | None, action: str):
    """Turn huggingface_hub / network exceptions raised inside the block into a one-line HubError."""
    try:
        yield
    except HfscratchError:
        raise
    except hf_errors.HFValidationError as err:
        raise HubError(f"{action} '{repo_id}': {first_line(err).rstrip('.')}; a repo id is ORG/NAME with letters, digits, '-', '_' and '.'") from err
    except (*_NETWORK_ERRORS, TimeoutError) as err:
        raise HubError(describe_hub_error(err, repo_id, action)) from err
    except (RuntimeError, OSError, ValueError) as err:
        # huggingface_hub wraps LFS upload failures in RuntimeError, transformers wraps download failures in
        # OSError: only translate those caused by the network or the Hub, let real bugs surface.
        if any(isinstance(c, _NETWORK_ERRORS) for c in _root_causes(err) if c is not err):
            raise HubError(describe_hub_error(err, repo_id, action)) from err
        raise


def with_retries(fn: Callable[[], T], *, what: str, retries: int | None = None, backoff: float | None = None) -> T:
    """Call `fn`, retrying transient network/server failures with exponential backoff."""
    retries = int(os.environ.get("HFSCRATCH_HUB_RETRIES", DEFAULT_RETRIES)) if retries is None else retries
    backoff = float(os.environ.get("HFSCRATCH_HUB_BACKOFF", DEFAULT_BACKOFF_SECONDS)) if backoff is None else backoff
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - classified below, re-raised when not transient
            if attempt >= retries or not _is_transient(err):
                raise
            wait = min(backoff * 2**attempt, 30.0)
            attempt += 1
            log(f"{what} failed ({type(err).__name__}: {first_line(err)[:120]}); retry {attempt}/{retries} in {wait:.1f}s")
            time.sleep(wait)
