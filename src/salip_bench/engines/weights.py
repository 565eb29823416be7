"""Where model weights come from, for every family: explicit path → local caches (ours, torch hub's, the
Hugging Face hub's) → official download (URL with its hash, or the hub), or random.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from salip_bench.accepts import WEIGHTS
from salip_bench.storage.files import atomic_path, cache_root

log = logging.getLogger(__name__)
T = TypeVar("T")

OFFLINE_ENV_VARS = ("SALIP_BENCH_OFFLINE", "HF_HUB_OFFLINE")
RANDOM_WEIGHTS_BANNER = (
    "\n" + "!" * 78 + "\n!! weights=random: SAM and CLIP are RANDOMLY INITIALISED. Every Dice/IoU of this run is"
    "\n!! meaningless; use it only for smoke tests of the harness.\n" + "!" * 78)
SMOKE_ADVICE = ("For an offline smoke run of the harness use model=sam_tiny clip=tiny weights=random "
                "(its numbers are meaningless).")


class WeightsNotFoundError(RuntimeError):
    """A checkpoint was needed and could not be found or downloaded."""


class CheckpointError(RuntimeError):
    """A checkpoint file exists but is not a plain tensor checkpoint (code in its pickle, corrupt)."""


class ChecksumError(OSError):
    """A downloaded file's hash does not match the one its release names; nothing was kept.

    An ``OSError`` so that :func:`resolve_weights` reports it like any other failed download.
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


@dataclass(frozen=True)
class WeightsSource:
    """Where one weights file may be found: everything the one resolver needs, for every family.

    Args:
        what: the model, as messages name it (``SAM vit_b``).
        file_name: the release file name: looked up in :func:`search_dirs`, downloaded to :func:`cache_dir`.
        config_key: the config key that takes an explicit path (``model.checkpoint``), named in messages.
        explicit: the path given there: the file, or a folder holding it (as ``file_name`` or a ``hub_files`` name).
        url: its official download URL, or None.
        sha256_prefix: leading hex digits of the file's SHA-256, checked on a URL download.
        hub_repo: the Hugging Face repo that holds it, or None: its local cache is searched and,
            without a URL, it is downloaded from there.
        hub_files: the file's names in ``hub_repo``, preferred first (default: ``file_name``).
        advice: what else to say on failure (a gated licence, a Google Drive link, the tiny variant).
    """

    what: str
    file_name: str
    config_key: str
    explicit: str | None = None
    url: str | None = None
    sha256_prefix: str | None = None
    hub_repo: str | None = None
    hub_files: tuple[str, ...] = ()
    advice: str = SMOKE_ADVICE

    @property
    def names(self) -> tuple[str, ...]:
        return self.hub_files or (self.file_name,)


def how_to_provide(source: WeightsSource) -> str:
    """The end of every missing-weights message: where to get the file and the two ways to hand it over.

    Args:
        source: the file that is missing.
    """
    if source.url:
        where = f"download {source.url} "
    elif source.hub_repo:
        where = f"run `huggingface-cli download {source.hub_repo} {source.names[0]}` "
    else:
        where = f"obtain {source.file_name} "
    return (f"{where}on a machine with internet, then either pass {source.config_key}=/path/to/"
            f"{Path(source.file_name).name} (or a folder holding it) or copy it to {cache_dir() / source.file_name}. "
            f"{source.advice}").rstrip()


def _explicit(source: WeightsSource) -> Path:
    path = Path(source.explicit).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        names = list(dict.fromkeys((Path(source.file_name).name, *source.names)))
        for name in names:
            if (path / name).is_file():
                return path / name
        raise WeightsNotFoundError(f"{source.what}: {source.config_key}={path} holds none of {names}; "
                                   + how_to_provide(source))
    raise WeightsNotFoundError(f"{source.what} checkpoint {path} ({source.config_key}) does not exist; "
                               + how_to_provide(source))


def _hub_cached(source: WeightsSource) -> Path | None:
    if not source.hub_repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for name in source.names:
        hit = try_to_load_from_cache(source.hub_repo, name)
        if isinstance(hit, str):
            return Path(hit)
    return None


def _hub_download(source: WeightsSource) -> Path:
    from huggingface_hub import hf_hub_download

    errors = []
    for name in source.names:
        try:
            return Path(hf_hub_download(source.hub_repo, name))
        except Exception as err:  # gated-repo, network and missing-file errors have many types
            errors.append(f"{name}: {type(err).__name__}: {err}")
    raise OSError("; ".join(errors))


def resolve_weights(source: WeightsSource, download_timeout_s: float = 20.0) -> Path:
    """A local weights file: the explicit path, else a cached copy (ours, torch hub's, the Hugging Face
    hub's), else a download (the official URL, hash-checked, or the hub) unless offline.

    Args:
        source: where the file may be.
        download_timeout_s: the longest wait for the server at any moment of a URL download.

    Returns:
        The path of an existing file.

    Raises:
        WeightsNotFoundError: the explicit path does not hold it, or there is no local copy and no
            download (offline, nowhere to download from, failed, wrong hash); the message says how
            to provide the file.
    """
    if source.explicit:
        return _explicit(source)
    for directory in search_dirs():
        if (directory / source.file_name).is_file():
            return directory / source.file_name
    cached = _hub_cached(source)
    if cached is not None:
        return cached
    looked = ", ".join(str(d) for d in search_dirs()) + (f", the Hugging Face cache of {source.hub_repo}"
                                                          if source.hub_repo else "")
    missing = f"{source.what} checkpoint {source.file_name} not found (looked in {looked})"
    if is_offline() or not (source.url or source.hub_repo):
        reason = "offline mode is set" if source.url or source.hub_repo else "it has no download URL"
        raise WeightsNotFoundError(f"{missing} and {reason} ({source.config_key} not given); "
                                   + how_to_provide(source))
    try:
        if source.url:
            return download(source.url, cache_dir() / source.file_name, download_timeout_s, source.sha256_prefix)
        return _hub_download(source)
    except OSError as err:
        raise WeightsNotFoundError(f"{missing} and its download failed ({err}); " + how_to_provide(source)) from err


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


def weights_identity(engine: str, model: str, path: Path | None = None, seed: int | None = None,
                     **extra: object) -> dict:
    """What an engine's weights are, reported in run summaries and part of every cache key: the
    checkpoint file and its SHA-256, or random weights and their seed.

    Args:
        engine: the registered engine.
        model: the model's name (the config entry's ``name``).
        path: the checkpoint (pretrained weights), or None (random ones).
        seed: the seed random weights were drawn with.
        extra: further facts (``hub_repo``, ``text_tower``, ...).
    """
    if path is None:
        return {"engine": engine, "model": model, "weights": "random", "seed": seed, **extra}
    return {"engine": engine, "model": model, "weights": "pretrained", "file": str(path), "sha256": file_sha256(path),
            **extra}


def pretrained_or_random(cfg: dict, weights: str, resolve: Callable[[], T] | None) -> T | None:
    """The checkpoint of ``weights=pretrained`` (resolved before any slow model build), or None for
    ``weights=random``; torch is seeded with the entry's ``random_seed`` either way, so the model
    built next is the same in every run.

    Args:
        cfg: a model or clip config entry (``name``, ``random_seed``).
        weights: ``pretrained`` or ``random``.
        resolve: finds the weights (e.g. ``lambda: resolve_weights(source)``), or None for a variant
            without released weights.

    Raises:
        ValueError: another ``weights`` value, or ``pretrained`` for a variant without released weights.
        WeightsNotFoundError: as :func:`resolve_weights`.
    """
    WEIGHTS.check("weights", weights)
    if weights == "pretrained" and resolve is None:
        raise ValueError(f"{cfg.get('name', 'this model')} has no pretrained weights; use it with weights=random")
    found = resolve() if weights == "pretrained" else None
    torch.manual_seed(int(cfg.get("random_seed", 0)))
    return found
