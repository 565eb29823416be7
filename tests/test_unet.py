"""The supervised U-Net baseline: a short real training run, its checkpoint, and the ``unet`` method."""
from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import CONF, HC18, HC18_TRAIN, compose_config
from salip_bench.engines.weights import WeightsNotFoundError
from salip_bench.evaluation.harness import run
from salip_bench.registry import METHODS
from salip_bench.train import split_indices, train

N_TRAIN = 6  # images of the training folder used: 4 to train on, 2 for validation
# A few-second training: tiny network at 64 px, two epochs of batch 2.
TINY = ["unet.epochs=2", "unet.image_size=64", "unet.channels=[4,8,16]", "unet.strides=[2,2]", "unet.batch_size=2",
        "unet.val_fraction=0.34", "unet.num_res_units=0"]


def train_config(overrides: list[str]):  # DictConfig
    """``conf/train.yaml`` composed as ``salip-bench-train`` does; dataset.prompts stays ``???``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    ids = sorted(p.stem for p in (HC18_TRAIN / "images").glob("*.png"))[:N_TRAIN]
    for sub in ("images", "masks"):
        (root / sub).mkdir()
    for i in ids:
        shutil.copy(HC18_TRAIN / "images" / f"{i}.png", root / "images")
        shutil.copy(HC18_TRAIN / "masks" / f"{i}_mask.png", root / "masks")
    out = tmp_path_factory.mktemp("train_out")
    summary = train(train_config(["dataset=folder", f"dataset.root={root}", f"output_dir={out}", *TINY]), out)
    return out, summary


def test_training_writes_a_weights_only_checkpoint_and_summary(trained):
    out, summary = trained
    checkpoint = torch.load(out / "unet.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["image_size"] == 64 and checkpoint["arch"]["channels"] == [4, 8, 16]
    assert all(isinstance(v, torch.Tensor) for v in checkpoint["state_dict"].values())
    assert not set(checkpoint["train_ids"]) & set(checkpoint["val_ids"])
    assert len(checkpoint["val_ids"]) == 2 and len(checkpoint["train_ids"]) == 4
    written = json.loads((out / "train_summary.json").read_text())
    assert written["epochs"] == 2 and written["seconds"] > 0
    assert 0 <= written["best_val_dice"] <= 1 and written["best_val_dice"] == summary["best_val_dice"]


def test_split_is_seeded_and_disjoint():
    assert split_indices(100, 0.12, 0) == split_indices(100, 0.12, 0)
    train_part, val_part = split_indices(100, 0.12, 0)
    assert len(val_part) == 12 and sorted(train_part + val_part) == list(range(100))
    assert split_indices(100, 0.12, 1) != (train_part, val_part)


def test_unet_method_runs_through_the_harness_without_sam_or_clip(trained, tmp_path):
    out = tmp_path / "eval"
    # The brief's command: no dataset.prompts — the U-Net never reads them.
    cfg = compose_config(["method=unet", f"method.checkpoint={trained[0] / 'unet.ckpt'}", "dataset=folder",
                          f"dataset.root={HC18}", "limit=2", "logger=none", f"output_dir={out}"])
    summary = run(cfg, out)
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 2 and frame["status"].eq("ok").all()
    assert frame["dice"].between(0, 1).all()
    assert summary["method"] == "unet" and summary["weights_identity"] == {}
    assert summary["work"]["sam_encoder_passes"] == 0 and summary["work"]["clip_images_encoded"] == 0


def test_missing_checkpoint_names_the_file_and_the_training_command(tmp_path):
    missing = tmp_path / "nowhere" / "unet.ckpt"
    with pytest.raises(WeightsNotFoundError, match="salip-bench-train") as err:
        METHODS.build({"name": "unet", "checkpoint": str(missing)})
    assert str(missing) in str(err.value)
