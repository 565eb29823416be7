"""Where model weights come from: explicit path → local cache → official download, or random.

Random weights are never a fallback: they must be requested with ``weights=random`` and are
announced loudly, because every number computed with them is meaningless.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from salip_bench.storage.files import cache_root

log = logging.getLogger(__name__)

OFFLINE_ENV_VARS = ("SALIP_BENCH_OFFLINE", "HF_HUB_OFFLINE")
RANDOM_WEIGHTS_BANNER = (
    "\n" + "!" * 78 + "\n!! weights=random: SAM and CLIP are RANDOMLY INITIALISED. Every Dice/IoU of this run is"
    "\n!! meaningless; use it only for smoke tests of the harness.\n" + "!" * 78)


class WeightsNotFoundError(RuntimeError):
    """A checkpoint was needed and could not be found or downloaded."""


class CheckpointError(RuntimeError):
    """A checkpoint file exists but is not a plain tensor checkpoint (code in its pickle, corrupt)."""


def _unreadable_reason(err: BaseException) -> str | None:
    """Why torch could not read a checkpoint as tensors, in our words (torch's own message
    suggests unpickling the file with code execution allowed, which we never do)."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError):
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            return f"its pickle references the Python object {found.group(1)} (a pickle with code or objects in it)"
        return "it is not a torch tensor file (its pickle holds data a tensor loader does not accept)"
    if isinstance(err, EOFError):
        return "it ends too early (truncated)"
    if isinstance(err, RuntimeError) and ("PytorchStreamReader" in text or "zip archive" in text):
        return "it is truncated or corrupt (not a readable torch archive)"
    return None


@contextmanager
def checkpoint_errors(path: Path | str, what: str) -> Iterator[None]:
    """Turn torch's errors on reading ``path`` as tensors into one :class:`CheckpointError` line
    naming the file. Other errors pass through unchanged."""
    try:
        yield
    except (pickle.UnpicklingError, EOFError, RuntimeError) as err:
        reason = _unreadable_reason(err)
        if reason is None:
            raise
        raise CheckpointError(f"{what} checkpoint {path} is not a plain tensor checkpoint: {reason}. salip_bench "
                              "reads only tensors and plain values from checkpoints and never runs code stored in "
                              "them; use the official release file, or a state_dict of tensors saved with "
                              "torch.save(model.state_dict(), path)") from None


def cache_dir() -> Path:
    """Our checkpoint cache: $SALIP_BENCH_CACHE/checkpoints or ~/.cache/salip_bench/checkpoints."""
    return cache_root() / "checkpoints"


def search_dirs() -> list[Path]:
    """Local caches searched before any download (ours, then torch hub's)."""
    return [cache_dir(), Path(torch.hub.get_dir()) / "checkpoints"]


def is_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in OFFLINE_ENV_VARS)


def how_to_provide(what: str, file_name: str, url: str | None, config_key: str) -> str:
    where = f"download {url} " if url else f"obtain {file_name} "
    return (f"{where}on a machine with internet, then either pass {config_key}=/path/to/{file_name} or "
            f"copy it to {cache_dir() / file_name}. For an offline smoke run of the harness use "
            f"model=sam_tiny clip=tiny weights=random (its numbers are meaningless).")


def resolve_checkpoint(what: str, file_name: str, url: str | None, explicit: str | None,
                       config_key: str, download_timeout_s: float = 20.0) -> Path:
    """Return a local path to ``file_name`` or raise :class:`WeightsNotFoundError` naming it."""
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        raise WeightsNotFoundError(f"{what} checkpoint {path} ({config_key}) does not exist; "
                                   + how_to_provide(what, file_name, url, config_key))
    for directory in search_dirs():
        if (directory / file_name).is_file():
            return directory / file_name
    looked = ", ".join(str(d) for d in search_dirs())
    if url is None or is_offline():
        reason = "offline mode is set" if url else "it has no download URL"
        raise WeightsNotFoundError(f"{what} checkpoint {file_name} not found (looked in {looked}) and {reason}; "
                                   + how_to_provide(what, file_name, url, config_key))
    try:
        return download(url, cache_dir() / file_name, download_timeout_s)
    except OSError as err:
        raise WeightsNotFoundError(f"{what} checkpoint {file_name} not found (looked in {looked}) and its download "
                                   f"failed ({err}); " + how_to_provide(what, file_name, url, config_key)) from err


def download(url: str, target: Path, timeout_s: float) -> Path:
    """Stream ``url`` to ``target`` through a temporary file, so a killed download leaves no partial file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s", url, target)
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (fixed official URLs)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as tmp:
            shutil.copyfileobj(response, tmp, length=1 << 22)
    os.replace(tmp.name, target)
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict(path: Path, what: str = "SAM") -> dict:
    """Load tensors only: ``weights_only=True`` never unpickles arbitrary code from a checkpoint.

    Raises :class:`CheckpointError` naming ``path`` for a file that holds anything else.
    """
    with checkpoint_errors(path, what):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state
