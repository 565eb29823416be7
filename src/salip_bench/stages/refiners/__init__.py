"""Stage 4 of SaLIP: turn retrieved candidates into the final mask. One file per registered refiner."""
from salip_bench.stages.refiners import none, sam_box  # noqa: F401
