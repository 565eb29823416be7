"""The pieces of ``salip-bench-report`` (:mod:`salip_bench.report`), one job each: ``runs`` finds and
reads runs, ``labels`` tells them apart, ``tables`` / ``stats`` / ``text`` build the main table,
``failures`` attributes failures, ``clinical`` the HC18 table, ``figures`` / ``qualitative`` the
pictures, ``html`` the page, ``write`` writes them all. Light imports (json/pandas/scipy/matplotlib);
only the qualitative figures build the runs' datasets (and so import torch) to read images and ground truth."""
