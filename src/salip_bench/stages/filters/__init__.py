"""Stage 2 of SaLIP: drop candidates. One file per registered filter."""
from salip_bench.stages.filters import area, none  # noqa: F401
