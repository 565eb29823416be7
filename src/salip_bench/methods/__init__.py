"""Methods evaluated by the harness: SaLIP and the baselines. One file per registered method."""
from salip_bench.methods import gt_sam, oracle, precomputed, salip, sam3_text, sam_clip, unet, unprompted_sam  # noqa: F401
