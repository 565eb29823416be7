"""Files on disk: atomic writes with normal permissions, safe file names, and salip_bench's cache root."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """Where salip_bench caches things: $SALIP_BENCH_CACHE or ~/.cache/salip_bench."""
    return Path(os.environ.get("SALIP_BENCH_CACHE") or Path.home() / ".cache" / "salip_bench").expanduser()


_UMASK = os.umask(0)
os.umask(_UMASK)


def _publish(tmp_name: str, path: Path) -> None:
    """Give the temporary file normal permissions (tempfile makes it 0600) and rename it into place."""
    os.chmod(tmp_name, 0o666 & ~_UMASK)
    os.replace(tmp_name, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=f".{path.name}.", suffix=".tmp") as tmp:
        tmp.write(data)
    _publish(tmp.name, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` atomically unless the file already holds exactly it (keeps re-runs a no-op)."""
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
    """
    if sample_id and set(sample_id) <= SAFE_CHARS and not sample_id.startswith(".") and len(sample_id) <= 200:
        return sample_id
    cleaned = "".join(c if c in SAFE_CHARS else "_" for c in sample_id)[:200].lstrip(".")
    return f"{cleaned}-{hashlib.sha1(sample_id.encode()).hexdigest()[:10]}"
