"""Running a method over a dataset: the harness, the Lightning predict module, records, resume, tuned values."""
