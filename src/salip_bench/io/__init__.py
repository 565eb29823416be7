"""Run outputs: per-sample records written atomically, results.csv, summary.json, mask PNGs."""
