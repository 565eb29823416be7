"""Methods evaluated by the harness: SaLIP and the baselines. One file per registered method."""
from salip_bench.methods import (  # noqa: F401
                                 gt_sam,
                                 oracle,
                                 precomputed,
                                 salip,
                                 salip_propagate,
                                 sam3_text,
                                 sam_clip,
                                 unet,
                                 unprompted_sam,
)
