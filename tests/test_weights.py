"""Checkpoint resolution offline: explicit path → local cache → torch.hub download, with the release's
hashes checked. Downloads read ``file://`` URLs of tiny files, so the real download path runs here."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from salip_bench.engines import weights
from salip_bench.engines.weights import (
    WeightsNotFoundError,
    WeightsSource,
    md5_prefix_in_name,
    resolve_weights,
)
from salip_bench.storage.files import atomic_path, atomic_write_bytes

PAYLOAD = b"not really a checkpoint, but bytes with known hashes"


@pytest.fixture
def online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Downloads allowed, our cache and torch.hub's cache in ``tmp_path``; returns our cache folder."""
    for name in weights.OFFLINE_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SALIP_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "cache" / "checkpoints"


def release(tmp_path: Path, name: str) -> str:
    """A "release server" file ``name`` holding PAYLOAD, as a file:// URL."""
    source = tmp_path / "server" / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(PAYLOAD)
    return source.as_uri()


def resolve(name: str, url: str | None, explicit: str | None = None, **kwargs: object) -> Path:
    return resolve_weights(WeightsSource("SAM test", name, "model.checkpoint", explicit, url, **kwargs))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_md5_prefix_is_read_from_sam_release_names() -> None:
    assert md5_prefix_in_name("sam_vit_b_01ec64.pth") == "01ec64"
    assert md5_prefix_in_name("sam_vit_h_4b8939.pth") == "4b8939"
    for name in ("medsam_vit_b.pth", "sam2.1_hiera_base_plus.pt", "ViT-L-14.pt", "sam_tiny.pth"):
        assert md5_prefix_in_name(name) is None


def test_download_lands_in_cache_with_umask_permissions(tmp_path: Path, online: Path) -> None:
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    name = f"sam_vit_t_{md5[:6]}.pth"  # a name carrying the right MD5 prefix is accepted
    path = resolve(name, release(tmp_path, name), sha256_prefix=hashlib.sha256(PAYLOAD).hexdigest()[:8])
    assert path == online / name and path.read_bytes() == PAYLOAD
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert leftovers(online) == [name]  # no temporary file left


@pytest.mark.parametrize("wrong", ["md5", "sha256"])
def test_wrong_hash_fails_clearly_and_keeps_nothing(tmp_path: Path, online: Path, wrong: str) -> None:
    name = "sam_vit_t_abcdef.pth" if wrong == "md5" else "plain.pth"
    extra = {"sha256_prefix": "0000000"} if wrong == "sha256" else {}
    with pytest.raises(WeightsNotFoundError) as info:
        resolve(name, release(tmp_path, name), **extra)
    message = str(info.value)
    assert f"{wrong.upper()[:3]}" in message.upper() and name in message and "model.checkpoint=" in message
    assert leftovers(online) == []


def test_resolution_order_explicit_then_cache_then_download(tmp_path: Path, online: Path) -> None:
    missing_url = (tmp_path / "server" / "gone.pth").as_uri()
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"x")
    assert resolve("gone.pth", missing_url, str(explicit)) == explicit
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve("gone.pth", missing_url, str(tmp_path / "nope.pth"))
    hub_copy = tmp_path / "hub" / "checkpoints" / "gone.pth"
    hub_copy.parent.mkdir(parents=True)
    hub_copy.write_bytes(b"y")
    assert resolve("gone.pth", missing_url) == hub_copy  # found locally: the dead URL is never opened
    hub_copy.unlink()
    with pytest.raises(WeightsNotFoundError, match="its download failed"):
        resolve("gone.pth", missing_url)


def test_offline_fails_fast_naming_the_file(tmp_path: Path, online: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "sam_vit_t_abcdef.pth"
    with pytest.raises(WeightsNotFoundError, match=rf"{name}.*offline mode is set.*model.checkpoint="):
        resolve(name, release(tmp_path, name))
    assert leftovers(online) == []


def test_atomic_path_publishes_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "record.json"
    atomic_write_bytes(target, b"old")
    with pytest.raises(ZeroDivisionError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        1 / 0  # noqa: B018 (a writer failing midway)
    assert target.read_bytes() == b"old" and leftovers(target.parent) == ["record.json"]
