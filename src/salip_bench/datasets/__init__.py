"""Evaluation datasets: one file per registered dataset, all yielding :class:`~salip_bench.types.Sample`."""
from salip_bench.datasets import folder  # noqa: F401
