"""Process-group helpers: the same code runs under torchrun (NCCL on CUDA, gloo on CPU) or as one plain process."""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device_choice: str = "auto", timeout_s: float = 600.0) -> torch.device:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1) and pick this process's device.

    A collective that waits longer than ``timeout_s`` (a rank died) raises instead of hanging forever.
    """
    use_cuda = torch.cuda.is_available() and device_choice in ("auto", "cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not is_distributed():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        kwargs = dict(backend=backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # Under torchrun the agent's store outlives a restart (--max-restarts); keys of the failed attempt would
            # point the new processes at dead peers, so each attempt gets its own key prefix.
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                                  timeout=timeout)
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            kwargs.update(store=dist.PrefixStore(f"abaw/attempt{attempt}", store), rank=int(os.environ["RANK"]),
                          world_size=world)
        dist.init_process_group(**kwargs)
    return device


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values, device) -> torch.Tensor:
    """Sum a list of numbers over all processes (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def broadcast_object(obj):
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_by_index(indices: np.ndarray, outputs: np.ndarray, total: int, allow_missing: bool = False):
    """Reassemble per-sample outputs computed on all ranks into dataset order.

    Rank 0 gets ``(outputs (total, ...), predicted mask)``, the others ``(None, None)``. Each index lands in its own
    row (the ranks' shards are disjoint, ``engine.evaluate.ShardedBatches``). A missing index is an error (a silently
    short file is worse) unless ``allow_missing``, where the caller fills the rows the mask marks unpredicted.
    """
    parts = [(indices, outputs)]
    if is_distributed():
        gathered = [None] * world_size()
        dist.all_gather_object(gathered, (indices, outputs))  # gloo and NCCL alike; outputs are small
        parts = gathered
    if not is_main():
        return None, None
    result = np.zeros((total,) + outputs.shape[1:], dtype=outputs.dtype)
    seen = np.zeros(total, dtype=bool)
    for part_indices, part_outputs in parts:
        result[part_indices] = part_outputs
        seen[part_indices] = True
    if not seen.all() and not allow_missing:
        raise RuntimeError(f"evaluation lost {int((~seen).sum())} of {total} samples")
    return result, seen


@contextmanager
def maybe_no_sync(model, enabled: bool):
    """Skip DDP's gradient all-reduce on micro-batches that do not end an accumulation cycle."""
    if enabled and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield
