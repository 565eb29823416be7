"""``salip-bench-report``: compare finished runs in the shape of the SaLIP paper's Table 1.

Reads every ``summary.json`` (and its ``results.csv``) below the given run directories (a single run
or a Hydra multirun) and writes to ``--out``:

- ``table.md`` / ``table.csv``: rows ROI / dataset / domain, columns method × (DSC with its seeded
  bootstrap 95 % CI and median, mIoU, NSD, HD95) and the paired Wilcoxon test of each method against
  the reference method (``--reference``, default the first SaLIP run) on per-image Dice, Holm-corrected;
- ``dice.png``: the per-image Dice distribution of each method on each dataset;
- ``failures.md`` / ``failures.csv``: for runs that recorded ``oracle_dice`` and ``retrieved_dice``,
  which stage lost each sample (generator, retriever, refinement);
- ``hc.md`` / ``hc.csv``: HC18 head-circumference absolute difference (mm), where recorded;
- ``figures/*.png``: best / median / worst image of each run and all methods side by side;
- ``report.html``: all of it on one self-contained page (images embedded).

Runs on unlabelled images (no Dice) are listed as unscored, with their figures but no scores.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from salip_bench.evaluation.entry_checks import oserror_line, output_dir_problem

# The pieces, re-exported: tests and notebooks import them from here.
from salip_bench.reporting.failures import CATEGORIES, attribute_failures  # noqa: F401
from salip_bench.reporting.labels import method_labels  # noqa: F401
from salip_bench.reporting.runs import ReportError, Run, find_runs  # noqa: F401
from salip_bench.reporting.write import write_report


def fail(message: str) -> None:
    """One line on stderr and exit status 2 (argparse's own usage errors exit 2 too)."""
    print(f"salip-bench-report: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """The ``salip-bench-report`` command line (``argv``: its arguments; default ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(prog="salip-bench-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="a run's output directory or a multirun directory (searched for summary.json)")
    parser.add_argument("--out", type=Path, required=True, metavar="REPORT", help="folder to write the report to")
    parser.add_argument("--tau", type=float, default=0.5, help="Dice a stage must reach to count as a hit (0.5)")
    parser.add_argument("--delta", type=float, default=0.05,
                        help="Dice lost in refinement that counts as a refinement loss (0.05)")
    parser.add_argument("--reference", metavar="NAME", default=None,
                        help="method (or method label) the paired tests compare against (default: the first salip run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap confidence intervals (0)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.tau <= 1.0 or args.delta < 0.0:
        fail("--tau must lie in [0, 1] and --delta be >= 0")
    problem = output_dir_problem(args.out, "--out")
    if problem:
        fail(problem)
    logging.basicConfig(format="salip-bench-report: %(message)s")  # a run it skips: one line, named
    try:
        table = write_report(args.run_dirs, args.out, args.tau, args.delta, args.reference, args.seed)
    except ReportError as err:
        fail(str(err))
    except OSError as err:  # writing the report: a full disk, a folder made read-only meanwhile
        fail(oserror_line(err))
    sys.stdout.write(table)
    print(f"report written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
