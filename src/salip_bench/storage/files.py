"""Files on disk: atomic writes with normal permissions, safe file names, and salip_bench's cache root."""
from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """Where salip_bench caches things.

    Returns:
        ``$SALIP_BENCH_CACHE``, or ``~/.cache/salip_bench`` when it is unset or empty.
    """
    return Path(os.environ.get("SALIP_BENCH_CACHE") or Path.home() / ".cache" / "salip_bench").expanduser()


def _reserve_sibling(path: Path, suffix: str) -> Path:
    """Create an empty, uniquely named file next to ``path`` and return its name.

    ``os.open`` with mode 0o666 lets the kernel apply the process's umask, so the file gets the
    permissions any new file would get, without reading (and briefly changing) the umask.
    """
    while True:
        candidate = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate


@contextmanager
def atomic_path(path: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """Write a file under a temporary name and rename it onto ``path`` only when writing succeeded.

    Readers never see a half-written ``path``, and a crash or an exception leaves the previous file
    (or none) plus no temporary file. The one atomic write of salip_bench: every writer uses it.

    Args:
        path: the file to create or replace; its folder is created if missing.
        suffix: how the temporary name ends, for writers that pick a format from the name
            (``nib.save`` needs ``.nii.gz``).

    Yields:
        The temporary path (an existing empty file) to write to, overwrite or replace.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _reserve_sibling(path, suffix)
    # A writer that replaces the file (torch.hub's download moves its own temporary file onto it)
    # may bring other permissions: put back those the reserved file got from the umask.
    mode = tmp.stat().st_mode & 0o7777
    try:
        yield tmp
        if tmp.stat().st_mode & 0o7777 != mode:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`).

    Args:
        path: the file to create or replace.
        data: its whole new content.
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`).

    Args:
        path: the file to create or replace.
        text: its whole new content.
    """
    atomic_write_bytes(path, text.encode())


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` atomically unless the file already holds exactly it (keeps re-runs a no-op).

    Args:
        path: the file to create or replace.
        text: its whole new content.

    Returns:
        Whether the file was written.
    """
    if path.is_file() and path.read_text() == text:
        return False
    atomic_write_text(path, text)
    return True


SAFE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def safe_name(sample_id: str) -> str:
    """The file name (without extension) of a sample's record and mask; one name per id.

    Ids of ASCII letters, digits and ``-_.`` are used as they are. Any other id has those
    characters replaced by ``_`` and a hash of the id appended, so ids that differ only there
    (``col a`` / ``col_a``) never share a file. Names never start with ``.`` (hidden files,
    ``..``) and stay well under file-system name limits.

    Args:
        sample_id: the sample's id, any string.

    Returns:
        The file name stem.
    """
    if sample_id and set(sample_id) <= SAFE_CHARS and not sample_id.startswith(".") and len(sample_id) <= 200:
        return sample_id
    cleaned = "".join(c if c in SAFE_CHARS else "_" for c in sample_id)[:200].lstrip(".")
    return f"{cleaned}-{hashlib.sha1(sample_id.encode()).hexdigest()[:10]}"
