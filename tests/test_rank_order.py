"""Under DDP each rank predicts one contiguous run of samples (a volume stays on one rank)."""
from __future__ import annotations

import pytest
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSamplerWrapper

from salip_bench.evaluation.rank_order import ContiguousShares


@pytest.mark.parametrize("n,world", [(12, 2), (13, 2), (7, 3), (30, 4), (0, 2), (5, 1)])
def test_lightnings_strided_predict_shares_become_contiguous_runs(n, world):
    sampler = ContiguousShares(n, world)
    shares = [list(UnrepeatedDistributedSamplerWrapper(sampler, num_replicas=world, rank=rank, shuffle=False))
              for rank in range(world)]
    assert sum(shares, []) == list(range(n))  # rank 0 the first run, rank 1 the next, ...: each sample once
    assert [len(s) for s in shares] == [len(range(r, n, world)) for r in range(world)]  # Lightning's sizes
    assert list(ContiguousShares(n, 1)) == list(range(n))  # one device: the plain order
