"""Shared fixtures: the real configs, real shared data, tiny random SAM/CLIP."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hub look-ups would retry for tens of seconds offline
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# The project's real data: $SALIP_BENCH_SHARED_DATA, else ../shared/data beside the clone (CI's layout).
SHARED = Path(os.environ.get("SALIP_BENCH_SHARED_DATA") or REPO.parent / "shared" / "data")
CXR = SHARED / "cxr_lung"
HC18 = SHARED / "us_fetal_head"
HC18_TRAIN = SHARED / "us_fetal_head_train"
MRI = SHARED / "mri_brain"

# Smoke settings: tiny random models, few points, quality thresholds off so candidates survive; no
# feature cache, so every run does (and counts) its own SAM work (tests/test_cache.py tests the cache).
SMOKE = ["experiment=smoke", "logger=none", "cache.enabled=false"]


@pytest.fixture(autouse=True, scope="session")
def _private_cache_root(tmp_path_factory):
    """Whatever a test caches (features, checkpoints) goes to a temporary folder, never ~/.cache."""
    previous = os.environ.get("SALIP_BENCH_CACHE")
    os.environ["SALIP_BENCH_CACHE"] = str(tmp_path_factory.mktemp("salip_bench_cache"))
    yield
    if previous is None:
        del os.environ["SALIP_BENCH_CACHE"]
    else:
        os.environ["SALIP_BENCH_CACHE"] = previous


def compose_config(overrides: list[str], config_name: str = "config") -> dict:
    """The real Hydra config as the CLI (``config``) or salip-bench-tune (``tune``) composes it,
    resolved to a plain dict."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def yaml_config(group: str, name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"), resolve=True)


@pytest.fixture(scope="session")
def tiny_sam():
    from salip_bench.engines.builder import build_engine

    return build_engine(yaml_config("model", "sam_tiny"), "random")


@pytest.fixture(scope="session")
def tiny_clip():
    from salip_bench.engines.builder import build_engine

    return build_engine(yaml_config("clip", "tiny"), "random", "clip")


@pytest.fixture(scope="session")
def cxr_sample():
    from salip_bench.datasets.folder import FolderDataset

    return FolderDataset(str(CXR))[0]


@pytest.fixture(scope="session")
def hc18_sample():
    from salip_bench.datasets.folder import FolderDataset

    return FolderDataset(str(HC18))[0]


@pytest.fixture(scope="session")
def unet_checkpoint(tmp_path_factory):
    """A U-Net checkpoint with untrained weights, for exercising the ``unet`` method plugin."""
    from salip_bench.engines.unet import build_unet, save_checkpoint

    arch = {"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "instance", "dropout": 0.0}
    path = tmp_path_factory.mktemp("unet") / "unet.ckpt"
    save_checkpoint(path, build_unet(**arch).state_dict(), arch, image_size=64, info={})
    return path


def pytest_sessionstart(session: pytest.Session) -> None:
    """One line instead of many failures when a clone sits away from the shared data."""
    if not SHARED.is_dir():
        raise pytest.UsageError(f"the tests read the project's data from {SHARED}, which does not exist: clone beside "
                                "../shared, or set SALIP_BENCH_SHARED_DATA=/path/to/shared/data")
