"""Prediction over a split, exact under any number of processes.

The split is cut into the batches one process would use (in order, the last one short, never dropped) and the
batches are dealt to the ranks in turn. Each sample is therefore computed in exactly the batch it would be in without
distribution, so the files are byte-identical whatever the number of processes (floating-point results of a batched
matrix product can depend on the batch's size and contents). Outputs travel with their dataset indices and rank 0
puts them back in order; nothing is padded and nothing is lost.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from datasets.images import collate_uint8
from engine.task import to_device
from utils import dist


class ShardedBatches(Sampler):
    """The single-process batches of a split, in order, every ``world``-th one from ``rank``."""

    def __init__(self, size: int, batch_size: int, rank: int, world: int):
        starts = range(0, size, batch_size)
        self.batches = [list(range(start, min(start + batch_size, size))) for start in starts][rank::world]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def eval_loader(dataset, batch_size: int, num_workers: int, device: torch.device,
                collate=collate_uint8) -> DataLoader:
    """This rank's share of the single-process batches of ``dataset`` (``collate``: the task's ``eval_collate``)."""
    batches = ShardedBatches(len(dataset), batch_size, dist.rank(), dist.world_size())
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers > 0 else None)


@torch.inference_mode()
def predict(task, model, loader, transform, autocast, device, desc: str = "predict",
            allow_missing: bool = False) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Run ``task.predict`` over the loader; rank 0 gets ``(outputs in dataset order, predicted mask)``.

    An undecodable image raises (naming the file) unless ``allow_missing``, in which case its row is marked
    unpredicted for the caller to fill. A dataset whose samples each give several rows (the temporal stage's windows
    of frames) has ``assemble(outputs, predicted)``, which turns the samples' outputs into the rows' on rank 0.
    """
    # Ranks may hold different numbers of batches: run the bare module, since a DDP forward can start collectives
    # (buffer broadcasts) that would wait for a rank with no batch left.
    model = model.module if isinstance(model, DistributedDataParallel) else model
    model.eval()
    total = len(loader.dataset)
    indices, outputs = [], []
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not dist.is_main(), leave=False, dynamic_ncols=True):
        images, *fields, dropped = batch
        if images is None:
            continue
        with autocast():
            out = task.predict(model, transform(to_device(images, device)))
        outputs.append(out.float().cpu().numpy())
        indices.append(fields[-1].numpy())
    width = task.output_width
    local_out = np.concatenate(outputs) if outputs else np.zeros((0, width), np.float32)
    local_idx = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    outputs, seen = dist.gather_by_index(local_idx, local_out, total, allow_missing=allow_missing)
    assemble = getattr(loader.dataset, "assemble", None)
    return assemble(outputs, seen) if assemble is not None else (outputs, seen)
