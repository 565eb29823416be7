"""The pieces of ``salip-bench-report`` (:mod:`salip_bench.report`): statistics, failure attribution,
figures and the HTML page. Light imports (json/pandas/scipy/matplotlib); only the qualitative
figures build the runs' datasets (and so import torch) to read images and ground truth."""
