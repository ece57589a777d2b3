"""Challenge submission files (ABAW4.md), written atomically and checked after writing.

MTL: header ``image,valence,arousal,expression,aus``, then ``<image>,<V>,<A>,<expr 0..7>,<12 AUs as 0/1>`` per listed
image in list order (16 fields under a 5-field header), VA clipped to [-1, 1].
LSD: header ``image,expression``, then ``<name>,<class 0..5>`` per listed image in list order.
Single-task tracks (ABAW2-8), one file per task: header ``image_location,<the task's columns>``, then
``<video>/<frame>.jpg,<V>,<A>`` (VA), ``...,<class 0..7>`` (EXPR) or ``...,<12 AUs as 0/1>`` (AU).
"""

from __future__ import annotations

import numpy as np

from datasets import lsd, mtl
from datasets.tracks import affwild2 as tracks
from utils.atomic import write_text_atomic
from utils.errors import UserError


def _write_lines(path: str, lines: list[str]) -> None:
    try:
        write_text_atomic(path, "\n".join(lines) + "\n")
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None


def _read_rows(path: str, header: str, images) -> list[str]:
    """The lines of a written prediction file, after checking its header and that it has a row per listed image."""
    with open(path) as handle:
        rows = handle.read().splitlines()
    if not rows or rows[0] != header:
        raise RuntimeError(f"{path}: wrong header {rows[:1]}")
    if len(rows) - 1 != len(images):
        raise RuntimeError(f"{path}: {len(rows) - 1} rows for {len(images)} listed images")
    return rows


def write_mtl_predictions(path: str, images, va: np.ndarray, expr: np.ndarray, aus: np.ndarray) -> None:
    """Write an MTL prediction file and check it (header, one row per image in order, 16 fields, value ranges)."""
    images = [str(image) for image in images]
    va = np.clip(np.asarray(va, dtype=np.float64), -1.0, 1.0)
    expr = np.asarray(expr).astype(np.int64)
    aus = np.asarray(aus).astype(np.int64)
    if not (len(images) == len(va) == len(expr) == len(aus)):
        raise ValueError("images and predictions differ in length")
    if np.isnan(va).any():
        raise ValueError("valence/arousal predictions contain NaN")
    lines = [mtl.SUBMISSION_HEADER]
    for image, (v, a), e, au in zip(images, va, expr, aus):
        lines.append(f"{image},{v:.6f},{a:.6f},{e}," + ",".join(str(x) for x in au))
    _write_lines(path, lines)
    check_mtl_file(path, images)


def check_mtl_file(path: str, images) -> None:
    """Re-read an MTL prediction file and verify it against the list it was made for."""
    rows = _read_rows(path, mtl.SUBMISSION_HEADER, images)
    for number, (row, image) in enumerate(zip(rows[1:], images), start=2):
        fields = row.split(",")
        # An image path may itself contain commas only in theory; the released names never do.
        if len(fields) != 16 or fields[0] != image:
            raise RuntimeError(f"{path}, line {number}: expected 16 fields starting with {image!r}, got {row!r}")
        v, a = float(fields[1]), float(fields[2])
        if not (-1.0 <= v <= 1.0 and -1.0 <= a <= 1.0):
            raise RuntimeError(f"{path}, line {number}: VA out of [-1, 1]")
        if fields[3] not in {str(i) for i in range(8)} or any(x not in ("0", "1") for x in fields[4:]):
            raise RuntimeError(f"{path}, line {number}: expression or AU field out of range")


def write_lsd_predictions(path: str, images, classes: np.ndarray) -> None:
    """Write an LSD prediction file and check it."""
    images = [str(image) for image in images]
    classes = np.asarray(classes).astype(np.int64)
    if len(images) != len(classes):
        raise ValueError("images and predictions differ in length")
    lines = [lsd.SUBMISSION_HEADER] + [f"{image},{c}" for image, c in zip(images, classes)]
    _write_lines(path, lines)
    check_lsd_file(path, images)


def check_lsd_file(path: str, images) -> None:
    rows = _read_rows(path, lsd.SUBMISSION_HEADER, images)
    valid = {str(i) for i in range(lsd.NUM_CLASSES)}
    for number, (row, image) in enumerate(zip(rows[1:], images), start=2):
        name, _, label = row.rpartition(",")
        if name != image or label not in valid:
            raise RuntimeError(f"{path}, line {number}: expected '{image},<0..5>', got {row!r}")


def write_track_predictions(path: str, task: str, images, values: np.ndarray) -> None:
    """Write a single-task prediction file (``task`` va, expr or au; ``values`` (N, 2) VA, (N,) class indices or
    (N, 12) AU decisions) and check it."""
    images = [str(image) for image in images]
    values = np.asarray(values)
    if len(images) != len(values):
        raise ValueError("images and predictions differ in length")
    if task == "va":
        values = np.clip(values.astype(np.float64), -1.0, 1.0)
        if np.isnan(values).any():
            raise ValueError("valence/arousal predictions contain NaN")
        rows = [f"{v:.6f},{a:.6f}" for v, a in values]
    elif task == "expr":
        rows = [str(int(c)) for c in values]
    else:
        rows = [",".join(str(int(x)) for x in au) for au in values]
    _write_lines(path, [tracks.SUBMISSION_HEADERS[task]] + [f"{image},{row}" for image, row in zip(images, rows)])
    check_track_file(path, task, images)


def check_track_file(path: str, task: str, images) -> None:
    """Re-read a single-task prediction file and verify it against the list it was made for."""
    rows = _read_rows(path, tracks.SUBMISSION_HEADERS[task], images)
    width = 1 + tracks.WIDTHS[task]
    for number, (row, image) in enumerate(zip(rows[1:], images), start=2):
        fields = row.split(",")
        if len(fields) != width or fields[0] != image:
            raise RuntimeError(f"{path}, line {number}: expected {width} fields starting with {image!r}, got {row!r}")
        if task == "va":
            if not all(-1.0 <= float(x) <= 1.0 for x in fields[1:]):
                raise RuntimeError(f"{path}, line {number}: VA out of [-1, 1]")
        elif task == "expr":
            if fields[1] not in {str(i) for i in range(8)}:
                raise RuntimeError(f"{path}, line {number}: expression out of 0..7")
        elif any(x not in ("0", "1") for x in fields[1:]):
            raise RuntimeError(f"{path}, line {number}: AU field not 0/1")
