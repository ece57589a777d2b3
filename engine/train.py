"""One training epoch, for every stage.

The loop knows no stage: the task (``engine.task.Task``) turns a batch into a loss. Per micro-batch it moves the
batch (augmented by the loader workers) to the device, normalises it there, runs forward and backward under one autocast
code path, and accumulates gradients (``no_sync`` on micro-batches that do not update). Per update it sets the lr from
the schedule, clips, and steps every parameter group together. Losses stay on the device and are read only at log
intervals.

Two conditions are decided by all ranks together at each update: a non-finite loss or gradient (the update is skipped
and counted; too many in a row stops the run) and a stop request (SIGTERM/SIGINT: the caller saves and exits).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from engine.task import batch_count, to_device
from utils import dist
from utils.errors import UserError
from utils.monitor import warn


class TrainingDiverged(UserError):
    """The loss stayed non-finite for too many consecutive updates."""


@dataclass
class TrainState:
    """What the loop needs across epochs and what a checkpoint records of it."""

    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of ``epoch`` already done (a mid-epoch save)
    step: int = 0  # optimizer updates so far
    skipped_updates: int = 0
    consecutive_skipped: int = 0
    bad_images: int = 0
    seen_images: int = 0
    bad_examples: list = field(default_factory=list)
    stop_requested: bool = False  # set by the signal handler

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                "skipped_updates": self.skipped_updates, "bad_images": self.bad_images,
                "seen_images": self.seen_images}


@dataclass
class LoopConfig:
    accum_iter: int
    clip_grad: float
    log_interval: int
    max_bad_fraction: float
    max_consecutive_skips: int = 5
    max_steps: int | None = None


def train_one_epoch(task, model, loader, transform, optimizer, scaler, schedule, autocast, device, state: TrainState,
                    config: LoopConfig, monitor=None, image_names=None) -> dict:
    """Train for one epoch (or the rest of it after a mid-epoch resume); returns the epoch's mean losses and speed.

    Returns early, with ``state.stop_requested`` set, when a stop was requested; ``state.batch_in_epoch`` then counts
    the micro-batches done, all of them included in an update.
    """
    model.train()
    total_batches = len(loader) + state.batch_in_epoch
    if config.max_steps:
        total_batches = min(total_batches, config.max_steps)
    start_batch = state.batch_in_epoch
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums: dict[str, torch.Tensor] = {}
    count = 0
    images_done = 0
    start_time = time.perf_counter()
    interval_start, interval_images = start_time, 0
    pending_bad_loss = torch.zeros((), dtype=torch.bool, device=device)
    last_good = None
    progress = tqdm(total=total_batches, initial=start_batch, desc=f"epoch {state.epoch}", unit="batch",
                    disable=not dist.is_main(), dynamic_ncols=True, leave=False)

    batch_index = start_batch
    loader_iter = iter(loader)
    try:
        while batch_index < total_batches:
            batch = next(loader_iter)
            cycle_start = batch_index - (batch_index % config.accum_iter)
            cycle_len = min(config.accum_iter, total_batches - cycle_start)
            is_update = batch_index + 1 == cycle_start + cycle_len
            if batch_index == cycle_start:
                schedule.apply(optimizer, state.epoch + batch_index / total_batches)

            images, *fields, dropped = batch
            weight = 1.0
            if dropped:
                _count_bad(state, dropped, image_names)
            if images is None:  # every image of the batch was undecodable
                if last_good is None or not dist.is_distributed():
                    state.seen_images += len(dropped)
                    batch_index += 1
                    progress.update(1)
                    if is_update:
                        _finish_update(optimizer, scaler, params, config, pending_bad_loss, state, device, model)
                    continue
                images, fields, weight = last_good[0], last_good[1], 0.0  # keep the ranks' collectives in step
            else:
                last_good = (images, fields)
            count_in_batch = batch_count(images)
            state.seen_images += count_in_batch * int(weight) + len(dropped)
            _check_bad_fraction(state, config)

            images = to_device(images, device)
            fields = [f.to(device, non_blocking=True) for f in fields]
            with dist.maybe_no_sync(model, enabled=not is_update):
                with autocast():
                    loss, parts = task.loss(model, (transform(images), fields[0]))
                loss = loss * (weight / cycle_len)
                pending_bad_loss |= ~torch.isfinite(loss.detach())
                scaler.scale(loss).backward()

            for key, value in parts.items():
                sums[key] = sums.get(key, 0) + value.detach().float()
            sums["loss"] = sums.get("loss", 0) + loss.detach().float() * cycle_len
            count += 1
            images_done += count_in_batch * int(weight)
            interval_images += count_in_batch * int(weight)
            batch_index += 1
            progress.update(1)

            if is_update:
                pending_bad_loss = _finish_update(optimizer, scaler, params, config, pending_bad_loss, state, device,
                                                  model)
                state.batch_in_epoch = batch_index
                if state.stop_requested:
                    break

            if batch_index % config.log_interval == 0 and dist.is_main():
                now = time.perf_counter()
                speed = interval_images * dist.world_size() / max(now - interval_start, 1e-9)
                interval_start, interval_images = now, 0
                lr = max(group["lr"] for group in optimizer.param_groups if group.get("fixed_lr") is None)
                mean_loss = (sums["loss"] / max(count, 1)).item()
                progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.0f}")
                if monitor is not None:
                    step = state.epoch * total_batches + batch_index
                    monitor.scalar("train/loss", mean_loss, step)
                    monitor.scalar("train/lr", lr, step)
                    monitor.scalar("train/images_per_s", speed, step)
    finally:
        progress.close()

    if not state.stop_requested:
        state.batch_in_epoch = 0
        _check_bad_fraction(state, config, final=True)
    elapsed = time.perf_counter() - start_time
    means = {key: (value / max(count, 1)).item() if torch.is_tensor(value) else float(value)
             for key, value in sums.items()}
    return {"losses": means, "images": images_done * dist.world_size(), "seconds": elapsed,
            "images_per_s": images_done * dist.world_size() / max(elapsed, 1e-9)}


def _finish_update(optimizer, scaler, params, config, pending_bad_loss, state, device, model):
    """Clip and step, or skip the update on every rank when any rank saw a non-finite loss or gradient."""
    scaler.unscale_(optimizer)
    max_norm = config.clip_grad if config.clip_grad > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    # fp16 overflows are the GradScaler's business (it skips and lowers the scale); a non-finite loss is ours.
    bad = pending_bad_loss if scaler.is_enabled() else pending_bad_loss | ~torch.isfinite(grad_norm)
    flags = dist.all_reduce_sum([float(bad.item()), float(state.stop_requested)], device)
    bad_anywhere, stop_anywhere = flags[0].item() > 0, flags[1].item() > 0
    state.stop_requested = stop_anywhere
    if bad_anywhere:
        optimizer.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.update()
        state.skipped_updates += 1
        state.consecutive_skipped += 1
        warn(f"non-finite loss or gradient at update {state.step + 1}: update skipped on every rank "
             f"({state.skipped_updates} so far)")
        if state.consecutive_skipped >= config.max_consecutive_skips:
            raise TrainingDiverged(f"the loss was not finite for {state.consecutive_skipped} updates in a row; "
                                   f"the run stopped (lower --blr, use --precision fp32 or bf16, check the data)")
    else:
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state.consecutive_skipped = 0
    state.step += 1
    return torch.zeros((), dtype=torch.bool, device=device)


def _count_bad(state: TrainState, dropped, image_names) -> None:
    state.bad_images += len(dropped)
    names = [str(image_names[i]) if image_names is not None else str(i) for i in dropped]
    if len(state.bad_examples) < 5:
        state.bad_examples += names[: 5 - len(state.bad_examples)]
    warn(f"skipped {len(dropped)} undecodable training image(s): {', '.join(names[:3])} "
         f"({state.bad_images} so far)")


def _check_bad_fraction(state: TrainState, config: LoopConfig, final: bool = False) -> None:
    # Judge the fraction once enough images were seen for it to mean something (and at the end of each epoch).
    if state.bad_images and (final or state.seen_images >= 200 or state.bad_images > 20):
        fraction = state.bad_images / max(state.seen_images, 1)
        if fraction > config.max_bad_fraction:
            raise UserError(f"{state.bad_images} of {state.seen_images} training images could not be decoded "
                            f"({fraction:.1%} > --max-bad-images {config.max_bad_fraction:g}), e.g. "
                            f"{', '.join(state.bad_examples)}; repair the data copy")
