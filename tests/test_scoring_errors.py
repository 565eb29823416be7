"""An error while scoring one sample (its metrics, its dataset columns), not while predicting it, fails
that sample with the reason and the run goes on (tiny random models)."""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import HC18, SMOKE, compose_config
from salip_bench.evaluation import lightning_module, predict_loop
from salip_bench.evaluation.harness import run


def config(out) -> dict:
    return compose_config(SMOKE + ["dataset=folder", f"dataset.root={HC18}", "dataset.prompts=fetal_head",
                                   "method=oracle", "limit=3", f"output_dir={out}"])


def broken_for(bad_id: str, function):
    def patched(*args, **kwargs):
        samples = [a for a in (*args, *kwargs.values()) if getattr(a, "id", None) == bad_id]
        if samples:
            raise ValueError("spacing is not finite")
        return function(*args, **kwargs)
    return patched


@pytest.mark.parametrize("where", ["score", "extra_metrics"])
def test_a_scoring_error_fails_that_sample_and_the_run_goes_on(tmp_path, monkeypatch, where):
    if where == "score":
        monkeypatch.setattr(lightning_module.PredictModule, "score",
                            broken_for("208_HC", lightning_module.PredictModule.score))
    else:  # the dataset's own columns (HC18's circumference), computed after the prediction too
        columns = predict_loop.extra_metrics
        monkeypatch.setattr(predict_loop, "extra_metrics",
                            lambda names: broken_for("208_HC", columns(names) or (lambda sample, mask: {})))
    summary = run(config(tmp_path / "out"), tmp_path / "out")
    frame = pd.read_csv(tmp_path / "out" / "results.csv").set_index("id")
    assert summary["n_total"] == 3 and summary["n_ok"] == 2 and summary["n_failed"] == 1
    assert frame.loc["208_HC", "status"] == "failed"
    assert frame.loc["208_HC", "failure"] == "scoring failed: ValueError: spacing is not finite"
    assert frame.loc[["100_HC", "249_HC"], "status"].tolist() == ["ok", "ok"]
    assert frame.loc[["100_HC", "249_HC"], "dice"].notna().all()


def test_fail_fast_raises_a_scoring_error(tmp_path, monkeypatch):
    monkeypatch.setattr(lightning_module.PredictModule, "score",
                        broken_for("100_HC", lightning_module.PredictModule.score))
    cfg = config(tmp_path / "out")
    cfg["fail_fast"] = True
    with pytest.raises(ValueError, match="spacing is not finite"):
        run(cfg, tmp_path / "out")
