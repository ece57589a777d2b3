"""A stand-in for the AffectNet DAN checkpoint, for runs on synthetic data.

EMMA's VA head reads the frozen DAN's 8 expression scores. The reference used a DAN trained on AffectNet; synthetic
faces have no such checkpoint, and a randomly initialised DAN gives large, meaningless scores that swamp the VA head.
This trains a DAN briefly on the training split's expression labels (the same role AffectNet played: a separate
expression model, frozen afterwards) and saves it in the released checkpoint format ``{'model_state_dict': ...}``,
so EMMA loads it through ``--dan-ckpt`` like the real one.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
from torch.utils.data import Subset

from datasets import mtl
from datasets.transforms import BatchTransform, mtl_train_augment
from engine.runner import make_autocast, make_train_loader, resolve_precision
from models.dan import DAN
from utils.checkpoint import save_atomic
from utils.monitor import log


def train_dan_standin(data_dir: str, out_path: str, img_size: int, steps: int, batch_size: int = 64,
                      lr: float = 2e-3, num_workers: int = 2, seed: int = 0) -> str:
    """Train a DAN on the expression labels of ``data_dir``'s training split for ``steps`` updates (a short warm-up,
    then a cosine decay to zero); save it."""
    torch.manual_seed(seed)
    annotations = mtl.load_split(data_dir, mtl.TRAIN_FILE, log=lambda _: None)
    labelled = np.flatnonzero(annotations.targets[:, 2] >= 0)
    dataset = Subset(mtl.MTLDataset(os.path.join(data_dir, mtl.IMAGE_DIR), annotations), labelled)
    loader, sampler = make_train_loader(dataset, mtl_train_augment(img_size), min(batch_size, len(dataset)),
                                        num_workers, torch.device("cpu"), seed, shard=False)
    transform = BatchTransform(img_size)
    dan = DAN(num_class=mtl.NUM_EXPR).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(dan.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps)))
    autocast = make_autocast(torch.device("cpu"), resolve_precision("auto", torch.device("cpu")))
    dan.train()
    start, step, correct, seen = time.perf_counter(), 0, 0, 0
    log(f"training a DAN stand-in for the AffectNet checkpoint: {steps} steps on {len(labelled)} labelled synthetic "
        "frames")
    epoch = 0
    while step < steps:
        sampler.set_epoch(epoch)
        epoch += 1
        for images, targets, _, _ in loader:
            x = transform(images)
            with autocast():
                logits = dan(x)[0]
            loss = torch.nn.functional.cross_entropy(logits.float(), targets[:, 2].long())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step > steps // 2:  # accuracy over the second half, when the model has learned something
                correct += int((logits.argmax(1) == targets[:, 2].long()).sum())
                seen += len(targets)
            if step == steps:
                break
    dan.eval()
    save_atomic({"model_state_dict": dan.state_dict()}, out_path)
    log(f"DAN stand-in: {steps} steps in {time.perf_counter() - start:.0f} s, training accuracy over the second half "
        f"{correct / max(seen, 1):.3f}; saved {out_path}")
    return out_path

