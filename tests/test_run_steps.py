"""The steps of a run that the harness composes: the inputs methods declare."""
from __future__ import annotations

import pytest

from conftest import CONF
from salip_bench.evaluation.validation import ConfigError, check_method_inputs, validate
from salip_bench.registry import METHODS


@pytest.mark.parametrize("name", ["salip", "sam_clip", "sam3_text"])
def test_methods_that_read_the_prompts_declare_it(name):
    method = METHODS.get(name)
    assert method.needs_prompts
    with pytest.raises(ConfigError, match="dataset.prompts is required"):
        check_method_inputs(method, {"name": "folder", "prompts": None})
    check_method_inputs(method, {"name": "folder", "prompts": "lungs", "top_k": 1})


@pytest.mark.parametrize("name", ["unet", "gt_sam", "oracle", "unprompted_sam"])
def test_methods_that_never_read_the_prompts_run_without_them(name):
    assert not getattr(METHODS.get(name), "needs_prompts", False)
    check_method_inputs(METHODS.get(name), {"name": "folder", "prompts": "???"})


def test_validation_leaves_the_prompts_requirement_to_the_method_class():
    """validate runs before torch is imported, so it cannot read the class: a set value is still checked."""
    cfg = {"method": {"name": "salip"}, "dataset": {"name": "folder", "root": str(CONF), "prompts": None}}
    validate(cfg)
    with pytest.raises(ConfigError, match="unknown prompt set"):
        validate({**cfg, "dataset": {**cfg["dataset"], "prompts": "no_such_set"}})
