"""Evaluation datasets: one file per registered dataset, all yielding :class:`~salip_bench.types.Sample`."""
from salip_bench.datasets import cc359, cxr, folder, hc18, nnunet, volumes  # noqa: F401
