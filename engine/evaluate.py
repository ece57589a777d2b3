"""Prediction over a split, exact under any number of processes.

Each rank predicts its DistributedSampler shard (never ``drop_last``); the outputs travel with their dataset indices
and rank 0 puts them back in dataset order, so the padding the sampler adds disappears and no sample is lost.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from datasets.images import collate_uint8
from utils import dist


def eval_loader(dataset, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    sampler = DistributedSampler(dataset, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=False,
                                 drop_last=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_uint8, pin_memory=device.type == "cuda", drop_last=False,
                      persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)


@torch.inference_mode()
def predict(task, model, loader, transform, autocast, device, desc: str = "predict",
            allow_missing: bool = False) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Run ``task.predict`` over the loader; rank 0 gets ``(outputs in dataset order, predicted mask)``.

    An undecodable image raises (naming the file) unless ``allow_missing``, in which case its row is marked
    unpredicted for the caller to fill.
    """
    model.eval()
    total = len(loader.dataset)
    indices, outputs = [], []
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not dist.is_main(), leave=False, dynamic_ncols=True):
        images, *fields, dropped = batch
        if images is None:
            continue
        with autocast():
            out = task.predict(model, transform(images.to(device, non_blocking=True)))
        outputs.append(out.float().cpu().numpy())
        indices.append(fields[-1].numpy())
    width = task.output_width
    local_out = np.concatenate(outputs) if outputs else np.zeros((0, width), np.float32)
    local_idx = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    return dist.gather_by_index(local_idx, local_out, total, allow_missing=allow_missing)
