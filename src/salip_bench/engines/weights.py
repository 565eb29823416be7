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
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from salip_bench.storage.files import atomic_path, cache_root

log = logging.getLogger(__name__)

OFFLINE_ENV_VARS = ("SALIP_BENCH_OFFLINE", "HF_HUB_OFFLINE")
RANDOM_WEIGHTS_BANNER = (
    "\n" + "!" * 78 + "\n!! weights=random: SAM and CLIP are RANDOMLY INITIALISED. Every Dice/IoU of this run is"
    "\n!! meaningless; use it only for smoke tests of the harness.\n" + "!" * 78)


class WeightsNotFoundError(RuntimeError):
    """A checkpoint was needed and could not be found or downloaded."""


class CheckpointError(RuntimeError):
    """A checkpoint file exists but is not a plain tensor checkpoint (code in its pickle, corrupt)."""


class ChecksumError(OSError):
    """A downloaded file's hash does not match the one its release names; nothing was kept.

    An ``OSError`` so that :func:`resolve_checkpoint` reports it like any other failed download.
    """


# SAM's release names end in the first hex digits of the file's MD5 (sam_vit_b_01ec64.pth has MD5
# 01ec64d2...): not SHA-256, which is what torch.hub's hash_prefix checks, so we check it ourselves.
MD5_IN_NAME = re.compile(r"_([0-9a-f]{6,})\.pth?$")


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
    """Turn torch's errors on reading ``path`` as tensors into one :class:`CheckpointError` line.

    Args:
        path: the checkpoint being read, named in the message.
        what: the model, as the message names it.

    Other errors pass through unchanged.
    """
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
    """Whether downloads are switched off (``SALIP_BENCH_OFFLINE`` or ``HF_HUB_OFFLINE`` is 1/true/yes)."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in OFFLINE_ENV_VARS)


def how_to_provide(what: str, file_name: str, url: str | None, config_key: str) -> str:
    """The end of every missing-weights message: where to get ``file_name`` and the two ways to hand it over.

    Args:
        what: the model, as messages name it (unused in the text; kept for callers' symmetry).
        file_name: the release file name.
        url: its official download URL, or None.
        config_key: the config key that takes a path.
    """
    where = f"download {url} " if url else f"obtain {file_name} "
    return (f"{where}on a machine with internet, then either pass {config_key}=/path/to/{file_name} or "
            f"copy it to {cache_dir() / file_name}. For an offline smoke run of the harness use "
            f"model=sam_tiny clip=tiny weights=random (its numbers are meaningless).")


def resolve_checkpoint(what: str, file_name: str, url: str | None, explicit: str | None,
                       config_key: str, download_timeout_s: float = 20.0, sha256_prefix: str | None = None) -> Path:
    """A local checkpoint file: the explicit path, else a cached copy, else a checked download.

    Args:
        what: the model, as messages name it (``SAM vit_b``).
        file_name: the release file name, looked up in :func:`search_dirs` and downloaded to :func:`cache_dir`.
        url: its official download URL; None where there is none (then only local copies count).
        explicit: a path the user gave (``config_key``); when set, nothing else is tried.
        config_key: the config key that takes a path, named in messages.
        download_timeout_s: the longest wait for the server at any moment of the download.
        sha256_prefix: leading hex digits of the file's SHA-256, checked on download.

    Returns:
        The path of an existing file.

    Raises:
        WeightsNotFoundError: the explicit path does not exist, or there is no local copy and no
            download (offline, no URL, failed, wrong hash); the message says how to provide the file.
    """
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
        return download(url, cache_dir() / file_name, download_timeout_s, sha256_prefix)
    except OSError as err:
        raise WeightsNotFoundError(f"{what} checkpoint {file_name} not found (looked in {looked}) and its download "
                                   f"failed ({err}); " + how_to_provide(what, file_name, url, config_key)) from err


def md5_prefix_in_name(file_name: str) -> str | None:
    """The MD5 prefix a release file name carries (``sam_vit_b_01ec64.pth`` → ``01ec64``).

    Args:
        file_name: a checkpoint's file name.

    Returns:
        The hex digits after the name's last ``_`` (at least six), or None for a name without them.
    """
    found = MD5_IN_NAME.search(file_name)
    return found.group(1) if found else None


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in blocks (release names carry its prefix; not used for security).

    Args:
        path: the file.
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Bound each socket wait for the duration of the block (``download_url_to_file`` takes no
    timeout; without one a network that drops packets would hang the run instead of failing).

    Args:
        seconds: the longest wait of any socket operation inside the block.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def download(url: str, target: Path, timeout_s: float, sha256_prefix: str | None = None) -> Path:
    """Stream ``url`` to ``target`` with torch.hub (progress bar), checking the release's hashes.

    The file appears at ``target`` only once complete and checked, so a killed or corrupt download
    leaves nothing that a later run would take for the checkpoint.

    Args:
        url: where the file is (any scheme ``urllib`` opens; tests use ``file://``).
        target: where to put it.
        timeout_s: the longest wait for the server at any moment, in seconds.
        sha256_prefix: leading hex digits of the file's SHA-256 to check (torch.hub's ``hash_prefix``).

    Returns:
        ``target``.

    Raises:
        ChecksumError: the SHA-256 or the MD5 prefix in ``target``'s name does not match.
        OSError: the download failed.
    """
    log.info("downloading %s -> %s", url, target)
    md5_prefix = md5_prefix_in_name(target.name)
    with atomic_path(target, suffix=".part") as tmp, socket_timeout(timeout_s):
        try:
            torch.hub.download_url_to_file(url, str(tmp), hash_prefix=sha256_prefix, progress=True)
        except RuntimeError as err:  # torch.hub's only RuntimeError here is its hash check
            raise ChecksumError(f"{url}: SHA-256 does not start with {sha256_prefix} ({err}); the file was "
                                "corrupted on the way or is not the release file") from None
        if md5_prefix is not None and not (md5 := file_md5(tmp)).startswith(md5_prefix):
            raise ChecksumError(f"{url}: MD5 {md5} does not start with {md5_prefix}, the prefix in its file name "
                                f"{target.name}; the file was corrupted on the way or is not the release file")
    return target


def weights_id(identity: dict) -> dict:
    """What a set of weights is, for cache keys: its identity without the file's path (the same file
    elsewhere must still hit).

    Args:
        identity: an engine's weights identity (``file``, ``sha256``, ``source``, ...).

    Returns:
        ``identity`` without ``file``.
    """
    return {k: v for k, v in identity.items() if k != "file"}


def sam_model_id(identity: dict, arch: dict | None) -> dict:
    """What a SAM-family engine's image features depend on: weights, architecture, torch version.

    Args:
        identity: the engine's weights identity.
        arch: its architecture numbers, or None.

    Returns:
        The part of every feature-cache key that names the model.
    """
    return {"weights": weights_id(identity), "arch": arch, "torch": torch.__version__}


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks: the identity of the weights a run used.

    Args:
        path: the file.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict(path: Path, what: str = "SAM") -> dict:
    """Load a checkpoint's tensors; ``weights_only=True`` never unpickles code stored in it.

    Args:
        path: the checkpoint file.
        what: the model, as the error names it.

    Returns:
        The state dict (a checkpoint's nested ``state_dict`` when it has one).

    Raises:
        CheckpointError: naming ``path``, for a file that holds anything but tensors and plain values.
    """
    with checkpoint_errors(path, what):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state
