"""Which config keys change predictions. One list for the resume fingerprint (harness) and for the
report, which tells runs apart by the keys that do (a light module: the report needs no torch)."""
from __future__ import annotations

# Top-level keys that change no prediction: out of the fingerprint and of the report's run labels.
NON_SEMANTIC_KEYS = ("output_dir", "resume", "fail_fast", "limit", "num_workers", "save_masks", "trainer", "logger",
                     "cache", "memory_limit_gb")
NON_SEMANTIC_NESTED = ("retriever.workers",  # threads building visual prompts
                       "dataset.extra_metrics")  # extra result columns: computed from predictions, never change them
# Inside a non-semantic group but changing predictions: bf16 autocast (trainer.precision=bf16-mixed).
SEMANTIC_NESTED = ("trainer.precision",)
FULL_PRECISION = ("32-true", "32", "64-true", "64")  # trainer.precision values that use no autocast
