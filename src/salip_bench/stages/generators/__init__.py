"""Stage 1 of SaLIP: propose part masks. One file per registered generator."""
from salip_bench.stages.generators import sam_everything  # noqa: F401
