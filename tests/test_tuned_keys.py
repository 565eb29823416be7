"""Dotted config keys of tune.space and tuned.yaml, read and written through OmegaConf.select/update."""
from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from salip_bench.evaluation.tuned import TuningError, get_dotted, set_dotted


def config() -> dict:
    return {"generator": {"pred_iou_thresh": 0.88, "points_per_side": 32, "crop": [1, 2]},
            "dataset": {"prompts": "???", "root": None}, "method": {"name": "salip"}}


def test_get_returns_values_of_plain_and_omegaconf_configs() -> None:
    for cfg in (config(), OmegaConf.create(config())):
        assert get_dotted(cfg, "generator.pred_iou_thresh") == 0.88
        assert get_dotted(cfg, "generator.crop") == [1, 2] and type(get_dotted(cfg, "generator.crop")) is list
        assert get_dotted(cfg, "dataset.root") is None
        assert get_dotted(cfg, "dataset.prompts") == "???"  # a missing value exists: it can be tuned/set


@pytest.mark.parametrize(("key", "message"), [("generator.pred_iou_tresh", "no key 'generator.pred_iou_tresh'"),
                                              ("generator.points_per_side.x", "no key"), ("nothing", "no key"),
                                              ("generator", "group of keys")])
def test_get_refuses_missing_keys_and_groups(key: str, message: str) -> None:
    with pytest.raises(TuningError, match=message):
        get_dotted(config(), key)


def test_set_changes_only_existing_keys_in_place() -> None:
    cfg = config()
    inner = cfg["method"]
    set_dotted(cfg, "generator.points_per_side", np.int64(16))  # the tuner's draws may be numpy scalars
    set_dotted(cfg, "dataset.prompts", "fetal_head")
    assert cfg["generator"]["points_per_side"] == 16 and cfg["dataset"]["prompts"] == "fetal_head"
    assert cfg["method"] == inner == {"name": "salip"} and cfg["generator"]["crop"] == [1, 2]
    with pytest.raises(TuningError, match="no key"):
        set_dotted(cfg, "generator.new_key", 1)
    assert "new_key" not in cfg["generator"]
