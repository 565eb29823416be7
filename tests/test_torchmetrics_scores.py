"""Dice / IoU through torchmetrics' integer stat scores: per sample and pooled over the run, equal to
the last digit to what the hand-written numpy counts gave (the values below were computed by them on
the shared fetal-head masks), under the one empty-mask rule, and logged to W&B."""
from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
from torch.utils.data import DataLoader
from torchmetrics.classification import BinaryStatScores

from conftest import HC18
from salip_bench.datasets.folder import FolderDataset
from salip_bench.evaluation.lightning_module import PredictModule
from salip_bench.evaluation.loop_module import LoopModule
from salip_bench.evaluation.wandb_log import log_run
from salip_bench.metrics import confusion_counts, dice_iou
from salip_bench.types import Prediction, Sample

# (id, counts, dice, iou) of the prediction `shifted` makes, by the numpy implementation this replaced.
PINNED = [
    ("100_HC", {"tp": 62204, "fp": 1923, "fn": 42461}, 0.7370491492487795, 0.5835928997635756),
    ("208_HC", {"tp": 107077, "fp": 9087, "fn": 12089}, 0.9100157226023031, 0.8348888525024756),
    ("249_HC", {"tp": 138525, "fp": 12209, "fn": 63407}, 0.7855874963846813, 0.6468868642623318),
]
PINNED_POOLED = ({"tp": 307806, "fp": 23219, "fn": 117957}, 0.8134537016971728, 0.6855642319736649)


def shifted(sample: Sample, index: int) -> np.ndarray:
    """The ground truth moved and cut: fp and fn differ, as for a real prediction."""
    prediction = np.roll(sample.mask.astype(bool), (11 * (index + 1), -5), axis=(0, 1))
    prediction[:, : prediction.shape[1] // 3] = False
    return prediction


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    dataset = FolderDataset(str(HC18))
    return [dataset[i] for i in range(len(PINNED))]


def test_per_sample_scores_are_unchanged_to_the_last_digit(samples):
    module = PredictModule(lambda s: None, {}, True, "f")
    assert isinstance(module.sample_counts, BinaryStatScores) and isinstance(module.run_counts, BinaryStatScores)
    for index, (sample, (sample_id, counts, dice, iou)) in enumerate(zip(samples, PINNED)):
        assert sample.id == sample_id
        scores, confusion = module.score(shifted(sample, index), sample)
        assert confusion == counts and (scores["dice"], scores["iou"]) == (dice, iou)  # exact, not approx
        assert confusion_counts(shifted(sample, index), sample.mask) == counts
        assert dice_iou(shifted(sample, index), sample.mask) == (dice, iou)


def test_run_counts_pool_every_scored_sample_and_go_to_wandb(samples):
    masks = {s.id: shifted(s, i) for i, s in enumerate(samples)}
    unlabelled = Sample(id="unlabelled", image=samples[0].image, mask=None, meta={})
    module = PredictModule(lambda s: Prediction(mask=masks.get(s.id, np.zeros(s.image.shape[:2], bool))), {},
                           True, "f")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    loop = LoopModule([module], [{s.id for s in [*samples, unlabelled]}], {})  # the run's one predict loop
    out = trainer.predict(loop, DataLoader([*samples, unlabelled], batch_size=1, collate_fn=list))
    assert [records[0][1][0].confusion for records in out[:3]] == [counts for _, counts, _, _ in PINNED]
    counts, dice, iou = PINNED_POOLED
    assert module.pooled == {**counts, "dice": dice, "iou": iou}

    logged = {}

    class Experiment:
        summary: dict = {}

        def log(self, data: dict) -> None:
            logged.update(data)

        def finish(self) -> None:
            pass

    class Logger:  # what log_run asks of Lightning's WandbLogger
        experiment = Experiment()

        def log_metrics(self, metrics: dict) -> None:
            logged.update(metrics)

        def log_table(self, key: str, dataframe) -> None:
            logged[key] = dataframe

    log_run(Logger(), {"n_ok": 4}, pd.DataFrame({"id": ["a"]}), [], module.pooled)
    assert {k: logged[f"pooled/{k}"] for k in module.pooled} == module.pooled


def test_nothing_scored_pools_nothing(samples):
    module = PredictModule(lambda s: Prediction(mask=np.zeros(s.image.shape[:2], bool)), {}, True, "f")
    unlabelled = Sample(id="u", image=samples[0].image, mask=None, meta={})
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.predict(module, DataLoader([unlabelled], batch_size=1, collate_fn=list))
    assert module.pooled == {}


def test_empty_masks_follow_the_one_rule(samples):
    module = PredictModule(lambda s: None, {}, True, "f")
    empty = Sample(id="e", image=samples[0].image, mask=np.zeros(samples[0].mask.shape, np.uint8), meta={})
    nothing = np.zeros(empty.mask.shape, bool)
    scores, confusion = module.score(nothing, empty)
    assert (scores["dice"], scores["iou"], confusion) == (1.0, 1.0, {"tp": 0, "fp": 0, "fn": 0})
    scores, _ = module.score(~nothing, empty)
    assert (scores["dice"], scores["iou"]) == (0.0, 0.0)
