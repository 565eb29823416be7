"""Method ``sam_clip``: SaLIP without the refinement stage (paper Tab. 5)."""
from __future__ import annotations

from salip_bench.methods.salip import SalipMethod
from salip_bench.registry import METHODS


@METHODS.register("sam_clip")
class SamClipMethod(SalipMethod):
    """The same four configured stages as :class:`SalipMethod`; only its yaml differs, choosing
    ``refiner=none`` (the retrieved SAM masks are the answer). A ``refiner=`` given with it is used,
    like every other stage choice: ``method=sam_clip refiner=sam_box`` computes what ``salip`` does.

    The name stays a method of its own so that report rows and Tab. 5's sweep read ``sam_clip``.
    """
