"""A third-party package adds a retriever through the ``salip_bench.plugins`` entry-point group.

The plugin below lives only in the test suite: a fake installed distribution (a ``.dist-info``
folder on ``sys.path``) declares the entry point, as ``pip install`` of a real package would.
"""
from __future__ import annotations

import sys
import textwrap

import pytest

from conftest import CXR, SMOKE, compose_config
from salip_bench import registry
from salip_bench.evaluation.harness import run

PLUGIN_MODULE = textwrap.dedent('''
    import numpy as np
    from salip_bench.registry import RETRIEVERS
    from salip_bench.stages.retrievers.clip_base import ClipRetriever

    @RETRIEVERS.register("test_grey_box")
    class GreyBoxRetriever(ClipRetriever):
        """Visual prompt: the box crop in grey levels (a plugin from another package)."""

        def __init__(self, clip, class_prompts, top_k, batch_size=32, levels=16):
            super().__init__(clip, class_prompts, top_k, batch_size)
            self.levels = levels

        def visual_prompt(self, image, mask, box):
            x0, y0, x1, y1 = (int(v) for v in box)
            crop = image[y0:y1 + 1, x0:x1 + 1].mean(axis=2, keepdims=True)
            step = 256 // self.levels
            return np.repeat((crop // step * step).astype(np.uint8), 3, axis=2)
''')


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    (tmp_path / "third_party_salip_plugin.py").write_text(PLUGIN_MODULE)
    dist = tmp_path / "third_party_salip_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: third-party-salip-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[salip_bench.plugins]\ngrey = third_party_salip_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_loaded", False)
    yield
    registry.RETRIEVERS._classes.pop("test_grey_box", None)
    sys.modules.pop("third_party_salip_plugin", None)


def test_entry_point_plugin_runs_through_the_harness(installed_plugin, tmp_path):
    assert "test_grey_box" in registry.RETRIEVERS.names()
    cfg = compose_config(SMOKE + ["dataset=folder", f"dataset.root={CXR}", "dataset.prompts=lungs",
                                  "dataset.top_k=2", "limit=2", f"output_dir={tmp_path / 'out'}"])
    cfg["retriever"] = {"name": "test_grey_box", "levels": 8}  # as a yaml in the plugin's own conf would
    summary = run(cfg, tmp_path / "out")
    assert summary["n_ok"] == 2 and summary["config"]["retriever"]["name"] == "test_grey_box"
    assert summary["work"]["clip_images_encoded"] > 0


def test_plugin_typo_names_the_accepted_keys(installed_plugin):
    with pytest.raises(registry.PluginError, match="accepted keys: \\['batch_size', 'levels'\\]"):
        registry.RETRIEVERS.build({"name": "test_grey_box", "level": 8}, clip=None, class_prompts={}, top_k={})
