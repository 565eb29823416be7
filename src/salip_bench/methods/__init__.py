"""Methods evaluated by the harness: SaLIP and the baselines. One file per registered method."""
from salip_bench.methods import (gt_sam, oracle, precomputed, salip, salip_propagate, sam3_text, sam_clip,  # noqa: F401
                                 unet, unprompted_sam)
