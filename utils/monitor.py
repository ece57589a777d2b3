"""Watching a run: console messages, ``log.jsonl``, ``args.json`` and TensorBoard, all from rank 0 only."""

from __future__ import annotations

import json
import math
import os
import sys
import time

from utils import dist
from utils.atomic import atomic_write


def log(message: str) -> None:
    """Print on rank 0 (the other ranks stay quiet)."""
    if dist.is_main():
        print(message, flush=True)


def warn(message: str) -> None:
    if dist.is_main():
        print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _plain(value):
    """JSON-safe copy: numpy and torch scalars to Python numbers, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, obj) -> None:
    """Write a JSON file atomically (rank 0 only)."""
    if not dist.is_main():
        return
    with atomic_write(path) as out:
        json.dump(_plain(obj), out, indent=2, allow_nan=False)
        out.write("\n")


class RunMonitor:
    """Appends one JSON object per epoch to ``log.jsonl`` and mirrors scalars to TensorBoard under ``tb/``."""

    def __init__(self, output_dir: str, enabled: bool = True):
        self.enabled = enabled and dist.is_main()
        self.output_dir = output_dir
        self.writer = None
        if self.enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(os.path.join(output_dir, "tb"))
            except ImportError:  # tensorboard is in requirements.txt; run without it rather than fail
                warn("tensorboard is not installed; no TensorBoard events will be written")

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None and value is not None and math.isfinite(value):
            self.writer.add_scalar(tag, value, step)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.scalar(f"{prefix}/{key}", float(value), step)

    def figure(self, tag: str, figure, step: int) -> None:
        if self.writer is not None:
            self.writer.add_figure(tag, figure, step, close=False)

    def epoch_record(self, record: dict) -> None:
        if not self.enabled:
            return
        record = dict(record, time=time.strftime("%Y-%m-%dT%H:%M:%S"))
        with open(os.path.join(self.output_dir, "log.jsonl"), "a") as out:
            out.write(json.dumps(_plain(record), allow_nan=False) + "\n")
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
