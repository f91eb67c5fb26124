"""What the kit's code needs from torch.distributed when a stage runs in launched workers
(mpo_lib/runtime/launch.py); in one process every function here is the identity or does nothing.
torch is imported on first use: `import mpo_lib` stays light."""
from __future__ import annotations


def _dist():
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def rank_and_world() -> tuple[int, int]:
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)


def is_main_process() -> bool:
    """True unless this is a launched worker other than rank 0."""
    return rank_and_world()[0] == 0


def barrier() -> None:
    if dist := _dist():
        dist.barrier()


def all_reduce(tensor, op: str = "sum"):
    """The sum (or max) over the workers, in place."""
    if dist := _dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def all_gather(tensor):
    """Every worker's tensor (the same shape on each), concatenated along dimension 0 in rank order."""
    import torch
    if not (dist := _dist()):
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def gather_objects(obj) -> list:
    """Every worker's object, in rank order ([obj] in one process)."""
    if not (dist := _dist()):
        return [obj]
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts
