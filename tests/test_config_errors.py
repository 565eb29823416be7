"""Bad settings end in one line and exit status 2, before any model (or torch) is loaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CONF, CXR, HC18_TRAIN, REPO, SMOKE
from salip_bench.evaluation.validation import ConfigError, validate
from test_cli import run_cli


def error_line(result: subprocess.CompletedProcess, only: bool = True) -> str:
    """The run's error: its last line (``only``: its only line); no traceback, no Hydra 'Error executing job'."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "Error executing job" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and (len(lines) == 1 or not only), output[-3000:]
    return lines[-1]


def empty_image_folder(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    (tmp_path / "empty" / "images" / "notes.txt").write_text("no images here")
    return str(tmp_path / "empty")


FOLDER = ["dataset=folder", f"dataset.root={CXR}", "dataset.prompts=lungs"]
CASES = {  # name: (overrides, substrings of the error line)
    "top_k_zero": (FOLDER + ["dataset.top_k=0"], ["dataset.top_k=0", "expected an integer >= 1"]),
    "top_k_negative": (FOLDER + ["dataset.top_k=-1"], ["dataset.top_k=-1", "expected an integer >= 1"]),
    "prompts_file_missing": (FOLDER + ["dataset.prompts=/no/such/prompts.json"],
                             ["dataset.prompts=/no/such/prompts.json", "does not exist"]),
    "prompts_not_json": (FOLDER + ["dataset.prompts={bad_json}"], ["dataset.prompts=", "not valid JSON"]),
    "prompts_unset": (["dataset=folder", f"dataset.root={CXR}"], ["dataset.prompts is required"]),
    "root_missing": (["dataset=folder", "dataset.root=/no/such/root", "dataset.prompts=lungs"],
                     ["dataset.root=/no/such/root", "does not exist"]),
    "image_folder_empty": (["dataset=folder", "dataset.root={empty}", "dataset.prompts=lungs"],
                           ["dataset.image_dir=images", "has no images"]),
    "iou_threshold": (FOLDER + ["generator.pred_iou_thresh=1.5"], ["generator.pred_iou_thresh=1.5", "[0.0, 1.0]"]),
    "area_fraction": (FOLDER + ["filter.max_area=0"], ["filter.max_area=0", "(0.0, 1.0]"]),
    "checkpoint_missing": (FOLDER + ["model.checkpoint=/no/such/sam.pth"], ["model.checkpoint=/no/such/sam.pth"]),
    "limit_zero": (FOLDER + ["limit=0"], ["limit=0", "null or an integer >= 1"]),
    "resume_flag": (FOLDER + ["resume.retry_failed=maybe"], ["resume.retry_failed='maybe'", "true or false"]),
    "max_side_tiny": (FOLDER + ["dataset.max_side=8"], ["dataset.max_side=8", "integer >= 64"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_setting_is_one_line_exit_2(case, tmp_path):
    bad_json = tmp_path / "prompts.json"
    bad_json.write_text('{"lung": ["a sentence"')
    overrides, expected = CASES[case]
    overrides = [o.format(bad_json=bad_json, empty=empty_image_folder(tmp_path) if "{empty}" in o else "")
                 for o in overrides]
    result = run_cli(overrides + [f"output_dir={tmp_path / 'OUT'}"], tmp_path, timeout=120)
    line = error_line(result)
    assert all(text in line for text in expected), line
    assert not (tmp_path / "OUT" / "samples").exists() and not (tmp_path / "OUT" / "results.csv").exists()


@pytest.mark.parametrize("override,expected", [
    ("tune.split.root=/no/such/split", ["tune.split.root=/no/such/split", "does not exist"]),
    ("dataset.top_k=0", ["dataset.top_k=0", "expected an integer >= 1"]),
])
def test_bad_tuning_setting_is_one_line_exit_2(override, expected, tmp_path):
    tune_cli = str(Path(sys.executable).with_name("salip-bench-tune"))
    result = subprocess.run([tune_cli, *SMOKE, *FOLDER, f"tune.split.root={HC18_TRAIN}", override,
                             f"output_dir={tmp_path / 'OUT'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    line = error_line(result)
    assert all(text in line for text in expected), line
    assert not (tmp_path / "OUT" / "trials").exists()


def test_config_is_checked_without_importing_torch():
    code = ("import sys; from hydra import compose, initialize_config_dir; "
            "from salip_bench.evaluation.validation import validate; "
            f"initialize_config_dir(config_dir={str(CONF)!r}, version_base='1.3'); "
            f"validate(compose(config_name='config', overrides={SMOKE + FOLDER!r})); "
            "heavy = [m for m in ('torch', 'lightning', 'segment_anything', 'open_clip') if m in sys.modules]; "
            "print('HEAVY', heavy)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "HEAVY []" in result.stdout, result.stderr[-3000:]


def test_top_k_mapping_is_checked_per_class():
    base = {"dataset": {"name": "folder", "root": str(CXR), "image_dir": "images", "mask_dir": "masks",
                        "suffixes": [".png", ".jpg"], "prompts": "lungs_left_right"}}
    validate({**base, "dataset": {**base["dataset"], "top_k": {"left lung": 1, "right lung": 1}}})
    with pytest.raises(ConfigError, match=r"dataset.top_k.right lung=0: expected an integer >= 1"):
        validate({**base, "dataset": {**base["dataset"], "top_k": {"left lung": 1, "right lung": 0}}})
    with pytest.raises(ConfigError, match=r"no k for class\(es\) \['right lung'\]"):
        validate({**base, "dataset": {**base["dataset"], "top_k": {"left lung": 1}}})


class _Payload:
    """Pickles to a call of os.system: loading it with code execution allowed would create a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_code_is_refused_naming_the_file(tmp_path):
    evil = tmp_path / "sam_tiny.pth"
    torch.save({"image_encoder.weight": torch.zeros(1), "hook": _Payload(str(tmp_path / "PWNED"))}, evil)
    result = run_cli(SMOKE + FOLDER + ["weights=pretrained", f"model.checkpoint={evil}",
                                       f"output_dir={tmp_path / 'OUT'}"],
                     tmp_path, timeout=300)
    line = error_line(result, only=False)
    assert str(evil) in line and "not a plain tensor checkpoint" in line and "posix.system" in line, line
    assert "weights_only" not in result.stdout + result.stderr
    assert not (tmp_path / "PWNED").exists()


def test_truncated_checkpoint_is_named(tmp_path):
    from salip_bench.engines.weights import CheckpointError, load_state_dict

    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(3)}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:64])
    with pytest.raises(CheckpointError, match=f"{cut} is not a plain tensor checkpoint: it is truncated"):
        load_state_dict(cut)
    assert json.dumps(load_state_dict(good)["w"].tolist()) == "[0.0, 0.0, 0.0]"
