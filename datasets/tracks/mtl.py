"""The ABAW4 Multi-Task Learning track (s-Aff-Wild2): valence, arousal, 8 expressions and 12 AUs per frame.

Files and reader: ``datasets.mtl`` (ABAW4.md). Metric: P_MTL = mean CCC of valence and arousal + macro F1 of the
expressions + mean F1 of the AUs (``utils.metrics.mtl_metrics``). Submission: header
``image,valence,arousal,expression,aus``, then ``<image>,<V>,<A>,<expr 0..7>,<12 AUs as 0/1>`` per listed image in
list order (16 fields under a 5-field header), VA clipped to [-1, 1]; re-read and checked after writing.
"""

from __future__ import annotations

import numpy as np

from datasets import mtl
from datasets.tracks.base import read_rows, write_lines
from utils.abaw import AU_NAMES, EXPR_NAMES


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
    write_lines(path, lines)
    check_mtl_file(path, images)


def check_mtl_file(path: str, images) -> None:
    """Re-read an MTL prediction file and verify it against the list it was made for."""
    rows = read_rows(path, mtl.SUBMISSION_HEADER, images)
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


class MTLTrack:
    name = "mtl"
    title = "ABAW4 Multi-Task Learning (s-Aff-Wild2)"
    level = "frame"
    label_names = ("valence", "arousal", "expression", *AU_NAMES)
    classes = EXPR_NAMES
    kind = "mtl"
    main_metric = "p_mtl"
    synthetic = "mtl"
    submission_file = "test_predictions.txt"
    read_annotations = staticmethod(mtl.read_annotations)
    read_test_list = staticmethod(mtl.read_test_list)

    def metrics(self, predictions: tuple, labels: np.ndarray) -> dict:
        """``predictions``: (VA (N, 2), expression classes (N,), AU decisions (N, 12)); ``labels`` (N, 15)."""
        from utils.metrics import mtl_metrics

        return mtl_metrics(*predictions, labels)

    def write_submission(self, path: str, ids, predictions: tuple) -> None:
        write_mtl_predictions(path, ids, *predictions)



TRACK = MTLTrack()
