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
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler, Subset
from tqdm import tqdm

from datasets.images import collate_uint8
from engine.task import to_device
from utils import dist
from utils.errors import UserError


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


def hybrid_stems(model) -> list:
    """The model's hybrid patch embeddings (``models.vit.HybridStem``), the layers ``--bn-adapt`` acts on."""
    from models.vit import HybridStem

    return [module for module in model.modules() if isinstance(module, HybridStem)]


# --bn-adapt reads at most this many images of a split, evenly spaced through it: enough for the mean and variance
# of each channel, and a fixed cost per validation whatever the split's size.
ADAPT_IMAGES = 1024


def evenly_spaced(count: int, limit: int) -> list[int]:
    """``min(count, limit)`` distinct indices of ``range(count)``, evenly spaced from the first to the last."""
    if count <= limit:
        return list(range(count))
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64)).tolist()


@torch.no_grad()
def adapt_batchnorm(model, dataset, transform, batch_size: int, num_workers: int, device, autocast,
                    collate=collate_uint8, max_images: int | None = None) -> int:
    """AdaBN (Li et al., 2016, "Revisiting batch normalization for practical domain adaptation"): replace the running
    statistics of the BatchNorm layers of the model's hybrid stems with those of ``dataset``'s images (labels unused),
    so that a model trained on one domain normalises another domain's features by that domain's statistics.

    Each stem sees the split's images in order (``max_images`` of them, evenly spaced, when the split has more), in
    batches of ``batch_size``, with its BatchNorm layers in training mode and a cumulative average
    (``momentum=None``); only the stems run, not the rest of the model. Every rank reads the same images, so the
    statistics are the same on every rank and for any number of processes. Returns the number of images used.
    """
    if max_images is not None and len(dataset) > max_images:
        dataset = Subset(dataset, evenly_spaced(len(dataset), max_images))
    stems = hybrid_stems(model)
    norms = [m for stem in stems for m in stem.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    modes = [stem.training for stem in stems]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    # A generator of its own: the loader's base seed must not come from (and advance) the training's random state.
    loader = DataLoader(dataset, batch_sampler=ShardedBatches(len(dataset), batch_size, 0, 1), collate_fn=collate,
                        num_workers=num_workers, pin_memory=device.type == "cuda", generator=torch.Generator())
    seen = 0
    try:
        for stem in stems:
            stem.train()
        for images, *_ in tqdm(loader, desc="adapt BatchNorm", unit="batch", disable=not dist.is_main(),
                               leave=False, dynamic_ncols=True):
            if images is None:
                continue
            x = transform(to_device(images, device))
            with autocast():
                for stem in stems:
                    stem(x)
            seen += len(x)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        for stem, mode in zip(stems, modes):
            stem.train(mode)
    if seen == 0:
        raise UserError("--bn-adapt: no image of the validation split could be read")
    return seen
