"""One place per rule: a plugin's accepted values are its module's ``ACCEPTS``; the command line reads
them from the source (no torch), the plugin's constructor checks them, and both refuse a bad value
with the same one-line message."""
from __future__ import annotations

import importlib
import inspect

import pytest

from conftest import yaml_config
from salip_bench.accepts import ConfigError, read_accepts
from salip_bench.class_prompts import top_k_per_class
from salip_bench.datasets.settings import DatasetSettings
from salip_bench.evaluation.validation import PLUGIN_PACKAGES, plugin_accepts, validate
from salip_bench.registry import REGISTRIES
from salip_bench.stages.filters.area import AreaFilter

PLUGINS = [(group, name) for group in PLUGIN_PACKAGES for name in REGISTRIES[group].names()]


@pytest.mark.parametrize("group,name", PLUGINS, ids=lambda v: str(v))
def test_validation_reads_what_the_plugin_declares(group, name):
    cls = REGISTRIES[group].get(name)
    module = importlib.import_module(cls.__module__)
    declared = getattr(module, "ACCEPTS", {})
    assert read_accepts(cls.__module__) == declared  # the source, read without importing it
    # Every declared key is a setting the plugin takes (its constructor, or the dataset group's run settings).
    params = set(inspect.signature(cls).parameters)
    assert set(declared) <= params, sorted(set(declared) - params)
    run_settings = read_accepts("salip_bench.datasets.settings") if group == "dataset" else {}
    assert plugin_accepts(group, name) == {**run_settings, **declared}


def test_dataset_run_settings_are_declared_by_datasetsettings():
    from salip_bench.datasets import settings

    assert read_accepts("salip_bench.datasets.settings") == settings.ACCEPTS
    assert set(settings.ACCEPTS) <= set(DatasetSettings.__dataclass_fields__)


def message(call) -> str:
    with pytest.raises(ConfigError) as err:
        call()
    return str(err.value)


@pytest.mark.parametrize("unit,max_area", [("fraction", 0), ("fraction", 1.5), ("pixels", -3), ("cm", 0.5)])
def test_area_filter_one_rule_one_message(unit, max_area):
    from_constructor = message(lambda: AreaFilter(max_area=max_area, unit=unit))
    from_validation = message(lambda: validate({"filter": {"name": "area", "unit": unit, "max_area": max_area}}))
    assert from_constructor == from_validation and "\n" not in from_constructor
    assert from_constructor.startswith("filter.unit=" if unit == "cm" else f"filter.max_area={max_area!r}: expected")
    AreaFilter(max_area=2000, unit="pixels")  # pixels are not a fraction


@pytest.mark.parametrize("top_k", [0, -1, 1.5, True, {"lung": 0}, {"other": 1}])
def test_top_k_one_rule_one_message(top_k):
    settings = DatasetSettings(prompts="lungs", top_k=top_k)
    from_run = message(settings.top_k_per_class)
    assert from_run == message(lambda: top_k_per_class(top_k, ["lung"], "lungs"))
    assert from_run.startswith("dataset.top_k") and "\n" not in from_run
    assert top_k_per_class({"lung": 2, "heart": 1}, ["lung"], "lungs") == {"lung": 2}


def test_weights_one_rule():
    assert message(lambda: validate({"weights": "randm"})) == "weights='randm': expected pretrained or random"
    from salip_bench.engines.medsam_engine import build_medsam_engine

    assert message(lambda: build_medsam_engine(yaml_config("model", "medsam_tiny"), "randm")) == \
        "weights='randm': expected pretrained or random"


def test_a_library_built_plugin_is_checked_like_the_command_line(tiny_sam):
    from salip_bench.registry import GENERATORS, METHODS

    assert message(lambda: GENERATORS.build({"name": "sam_everything", "points_per_side": 0}, sam=tiny_sam)) == \
        "generator.points_per_side=0: expected an integer >= 1"
    assert message(lambda: METHODS.build({"name": "gt_sam", "min_component_area": -1}, sam=tiny_sam)) == \
        "method.min_component_area=-1: expected an integer >= 0"
    with pytest.raises(ConfigError, match=r"^dataset.axis=True: expected 0, 1 or 2$"):
        validate({"dataset": {"name": "cc359", "axis": True}})
