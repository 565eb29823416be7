"""Risk-coverage evaluation of the quality score and abstention: every number checked against an
independent brute-force computation from results.csv, and the report over runs with and without
a quality (``evaluation/risk_coverage.py``, ``reporting/quality.py``)."""
from __future__ import annotations

import itertools
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from conftest import HC18, SMOKE, compose_config
from salip_bench.evaluation.harness import run
from salip_bench.evaluation.risk_coverage import risk_coverage
from salip_bench.reporting.write import write_report

IDS = ["100_HC", "208_HC", "249_HC", "285_HC"]


def brute_force(quality: list[float], dice: list[float], failure_dice: float) -> dict:
    """The same numbers by their definitions, with plain loops (no shared code)."""
    n, risk = len(quality), [1 - d for d in dice]
    observed, previous = 0.0, 0.0
    for t in sorted(set(quality), reverse=True):  # accept every prediction at or above t
        accepted = [risk[i] for i in range(n) if quality[i] >= t]
        observed += (sum(accepted) / len(accepted)) * (len(accepted) / n - previous)
        previous = len(accepted) / n
    by_risk = sorted(risk)
    optimal = sum(sum(by_risk[:k]) / k for k in range(1, n + 1)) / n
    random = sum(risk) / n

    def ranks(values):
        order = sorted(range(n), key=lambda i: values[i])
        out = [0.0] * n
        i = 0
        while i < n:
            j = i
            while j + 1 < n and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return out

    rq, rd = ranks(quality), ranks(dice)
    mq, md = sum(rq) / n, sum(rd) / n
    rho = (sum((a - mq) * (b - md) for a, b in zip(rq, rd))
           / math.sqrt(sum((a - mq) ** 2 for a in rq) * sum((b - md) ** 2 for b in rd)))
    t_stat = rho * math.sqrt((n - 2) / (1 - rho ** 2)) if abs(rho) < 1 else math.inf
    p = 2 * scipy_stats.t.sf(abs(t_stat), n - 2)
    failures = [i for i in range(n) if dice[i] < failure_dice]
    successes = [i for i in range(n) if dice[i] >= failure_dice]
    pairs = [(1.0 if quality[s] > quality[f] else 0.5 if quality[s] == quality[f] else 0.0)
             for f, s in itertools.product(failures, successes)]
    return {"aurc": observed, "aurc_optimal": optimal, "aurc_random": random, "e_aurc": observed - optimal,
            "normalised_aurc": (random - observed) / (random - optimal), "spearman_rho": rho, "spearman_p": p,
            "failure_auroc": sum(pairs) / len(pairs) if pairs else None}


def check(numbers: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert numbers[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("seed", range(5))
def test_numbers_equal_a_brute_force_computation_with_ties(seed):
    rng = np.random.default_rng(seed)
    quality = np.round(rng.random(15), 1).tolist()  # rounded: tied qualities
    dice = np.clip(np.asarray(quality) * 0.6 + rng.random(15) * 0.5, 0, 1).round(3).tolist()
    check(risk_coverage(quality, dice, 0.5), brute_force(quality, dice, 0.5))


def test_perfect_random_and_reversed_rankings():
    dice = [0.1, 0.4, 0.7, 0.9, 0.95]
    assert risk_coverage(dice, dice)["normalised_aurc"] == pytest.approx(1.0)
    assert risk_coverage(dice, dice)["failure_auroc"] == 1.0
    assert risk_coverage([0.5] * 5, dice)["normalised_aurc"] == pytest.approx(0.0)  # constant = random
    reversed_ = risk_coverage([-d for d in dice], dice)
    assert reversed_["normalised_aurc"] < 0 and reversed_["spearman_rho"] == pytest.approx(-1.0)
    assert reversed_["failure_auroc"] == 0.0


def test_degenerate_inputs_give_none_never_nan():
    for quality, dice in (([], []), ([0.3], [0.8]), ([0.2, 0.9], [0.7, 0.7]), ([0.5, 0.5], [0.1, 0.9])):
        numbers = risk_coverage(quality, dice)
        assert not any(isinstance(v, float) and math.isnan(v) for v in numbers.values()), numbers
    assert risk_coverage([0.2, 0.9], [0.7, 0.7])["normalised_aurc"] is None  # every risk equal
    assert risk_coverage([0.2, 0.9], [0.7, 0.8])["failure_auroc"] is None  # no failure


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Smoke SaLIP on four HC18 images: without abstention, abstaining below the median quality, and
    abstaining always; plus a run with qc=none (no quality column)."""
    base = tmp_path_factory.mktemp("rc")
    root = base / "data"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in IDS:
        shutil.copy(HC18 / "images" / f"{i}.png", root / "images")
        shutil.copy(HC18 / "masks" / f"{i}_mask.png", root / "masks")
    common = SMOKE + ["dataset=folder", f"dataset.root={root}", "dataset.prompts=fetal_head", "cache.enabled=true",
                      f"cache.dir={base / 'cache'}"]
    outs = {}
    for name, extra in (("plain", []), ("none", ["qc=none"]), ("always", ["qc.abstain_below=1.0"])):
        outs[name] = base / name
        run(compose_config(common + [f"output_dir={outs[name]}", *extra]), outs[name])
    tau = float(pd.read_csv(outs["plain"] / "results.csv")["quality"].median())
    outs["median"] = base / "median"
    run(compose_config(common + [f"output_dir={outs['median']}", f"qc.abstain_below={tau}"]), outs["median"])
    return outs, tau


def test_abstention_empties_masks_and_scores_the_empty_mask(runs):
    outs, tau = runs
    plain = pd.read_csv(outs["plain"] / "results.csv").set_index("id")
    frame = pd.read_csv(outs["median"] / "results.csv").set_index("id")
    abstained = frame["abstained"].astype(bool)
    assert abstained.any() and not abstained.all()
    assert (abstained == (frame["quality"] < tau)).all()
    assert (frame.loc[abstained, "pred_area"] == 0).all() and (frame.loc[abstained, "dice"] == 0).all()
    assert (frame.loc[~abstained, "dice"] == plain.loc[~abstained, "dice"]).all()
    np.testing.assert_allclose(frame["dice_without_abstention"], plain.loc[frame.index, "dice"], atol=1e-6)
    from PIL import Image
    for sample_id in frame.index[abstained]:
        assert not np.asarray(Image.open(outs["median"] / "masks" / f"{sample_id}.png")).any()
    block = json.loads((outs["median"] / "summary.json").read_text())["quality"]
    assert block["abstention"]["coverage"] == pytest.approx(1 - abstained.mean())
    assert block["abstention"]["dice_mean"] == pytest.approx(frame["dice"].mean())
    assert block["abstention"]["dice_mean_without_abstention"] == pytest.approx(plain["dice"].mean())
    assert block["labels_used"] is False and block["estimator"] == "salip" and block["abstain_below"] == tau


def test_summary_and_report_equal_an_independent_computation_from_results_csv(runs, tmp_path):
    outs, _ = runs
    report = tmp_path / "report"
    write_report([outs["plain"], outs["none"], outs["always"]], report)
    table = pd.read_csv(report / "quality.csv")
    for name in ("plain", "always"):
        frame = pd.read_csv(outs[name] / "results.csv")
        dice = frame["dice_without_abstention"].fillna(frame["dice"]).tolist()  # empty where nothing abstained
        expected = brute_force(frame["quality"].tolist(), dice, 0.5)
        summary = json.loads((outs[name] / "summary.json").read_text())["quality"]["risk_coverage"]
        expected = {k: v for k, v in expected.items() if not (isinstance(v, float) and math.isnan(v))}
        check(summary, {k: v for k, v in expected.items() if summary[k] is not None})
        row = table[table["dataset"].notna()].iloc[["plain", "always"].index(name)]
        for key in ("aurc", "e_aurc", "normalised_aurc", "spearman_rho", "failure_auroc"):
            assert (pd.isna(row[key]) and summary[key] is None) or row[key] == pytest.approx(summary[key])
    markdown = (report / "quality.md").read_text()
    assert "no quality score recorded" in markdown  # the qc=none run
    assert (report / "risk_coverage.png").is_file() and (
        "Quality score and abstention" in (report / "report.html").read_text())
    assert table.loc[1, "coverage"] == 0.0 and table.loc[1, "n_abstained"] == len(IDS)  # every sample abstained
    assert table.loc[0, "coverage"] == 1.0
