"""Methods evaluated by the harness: SaLIP and the baselines. One file per registered method."""
from salip_bench.methods import salip  # noqa: F401
