"""The order the predict loader hands samples out in: under DDP, one contiguous run per rank.

Lightning's predict sampler (``UnrepeatedDistributedSamplerWrapper``) gives rank ``r`` of ``W`` the
loader's positions ``r, r + W, r + 2W, ...``: neighbouring slices land on different ranks. A volume
method (``method=salip_propagate``) computes a whole volume on the rank that asks for one of its
slices, so strided shares would make every rank compute every volume. Ordering the positions so
that this striding yields contiguous runs keeps a volume on one rank; only the volumes a run's end
cuts (at most ``W - 1``) are computed on two. On one device the order is the plain one.
"""
from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler


def contiguous_share_order(n: int, world_size: int) -> list[int]:
    """Positions ``0..n-1`` ordered so that ``order[r::world_size]`` is one contiguous run for each rank
    ``r``, as long as Lightning's strided shares are (``len(range(r, n, world_size))``).

    Args:
        n: the samples to hand out.
        world_size: the ranks (1: the plain order).
    """
    order = [0] * n
    start = 0
    for rank in range(world_size):
        share = len(range(rank, n, world_size))
        for j in range(share):
            order[rank + j * world_size] = start + j
        start += share
    return order


class ContiguousShares(Sampler[int]):
    """The loader's sampler: :func:`contiguous_share_order` of its ``n`` samples.

    Args:
        n: the samples to hand out.
        world_size: the ranks the Trainer will split them over.
    """

    def __init__(self, n: int, world_size: int) -> None:
        self.n, self.world_size = n, max(1, world_size)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(contiguous_share_order(self.n, self.world_size))
