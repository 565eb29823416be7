"""The report's pictures: the per-image Dice plot, and the qualitative grids (the paper's Fig. 3–5)
of the best, median and worst case of each run plus one side-by-side page of all methods."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # a report is written headless (batch jobs, CI): never open a window
    import matplotlib.pyplot as plt

    return plt


def plot_dice(runs: list, labels: list[str], path: Path) -> None:
    """Per dataset one panel; per method a box plot of per-image Dice with the images as points."""
    plt = _pyplot()

    panels: dict[tuple[str, str], list[tuple[str, np.ndarray, int]]] = {}
    for run, label in zip(runs, labels):
        results = run.results
        if results is None or "dice" not in results.columns:
            values, n_failed = np.array([]), run.summary.stats.n_failed
        else:
            ok = results["status"].astype(str) == "ok"
            values = pd.to_numeric(results.loc[ok, "dice"], errors="coerce").dropna().to_numpy()
            n_failed = int((~ok).sum())
        panels.setdefault((run.roi, run.dataset), []).append((label, values, n_failed))
    methods = list(dict.fromkeys(labels))
    n_methods = max(len(series) for series in panels.values())
    figure, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 1.6 * n_methods + 2), 3.6 * len(panels)),
                                squeeze=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same runs give the same picture
    for axis, ((roi, dataset), series) in zip(axes[:, 0], sorted(panels.items())):
        data = [values for _, values, _ in series]
        positions = np.arange(1, len(series) + 1)
        if any(len(v) for v in data):
            axis.boxplot([v if len(v) else [np.nan] for v in data], positions=positions, widths=0.5, showfliers=False)
        for position, values, (label, _, _) in zip(positions, data, series):
            colour = f"C{methods.index(label) % 10}"  # one colour per method across panels
            axis.scatter(position + rng.uniform(-0.15, 0.15, len(values)), values, s=8, alpha=0.5, color=colour)
        axis.set_xticks(positions, [textwrap.fill(label, 30) + f"\nn={len(v)}" + (f", {nf} failed" if nf else "")
                                    for label, v, nf in series], fontsize=8)
        axis.set_ylim(-0.02, 1.02)
        axis.set_ylabel("Dice per image")
        axis.set_title(f"{dataset} ({roi})")
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
