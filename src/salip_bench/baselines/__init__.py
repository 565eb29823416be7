"""Supervised baselines: models trained on labelled data by ``salip-bench-train``, evaluated as methods."""
