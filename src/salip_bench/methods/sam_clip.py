"""Method ``sam_clip``: SaLIP without the refinement stage (paper Tab. 5)."""
from __future__ import annotations

from salip_bench.methods.salip import SalipMethod
from salip_bench.methods.pipeline import Filter, Generate, Retrieve
from salip_bench.stages.refiners.none import NoRefiner
from salip_bench.registry import METHODS


@METHODS.register("sam_clip")
class SamClipMethod(SalipMethod):
    """The retrieved SAM masks are the answer; the ``refiner`` group is ignored. All four stage
    objects are injected as for :class:`SalipMethod`."""

    def __init__(self, generator: Generate, filter: Filter, retriever: Retrieve,  # noqa: A002
                 top_k: dict[str, int]) -> None:
        super().__init__(generator, filter, retriever, NoRefiner(), top_k)
