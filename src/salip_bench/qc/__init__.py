"""Quality estimators: a label-free score in [0, 1] per prediction, and abstention. One file per
registered estimator (``conf/qc/<name>.yaml``)."""
from salip_bench.qc import salip, sam3_score, sam_iou, unet_confidence, unet_entropy  # noqa: F401
