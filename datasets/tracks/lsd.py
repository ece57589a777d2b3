"""The ABAW4 Learning from Synthetic Data track: six expressions, trained on synthetic faces, tested on real ones.

Files and reader: ``datasets.lsd`` (ABAW4.md). Metric: macro F1 over the six classes (``utils.metrics.lsd_metrics``).
Submission: header ``image,expression``, then ``<name>,<class 0..5>`` per listed image in list order; re-read and
checked after writing.
"""

from __future__ import annotations

import numpy as np

from datasets import lsd
from datasets.tracks.base import read_rows, write_lines


def write_lsd_predictions(path: str, images, classes: np.ndarray) -> None:
    """Write an LSD prediction file and check it."""
    images = [str(image) for image in images]
    classes = np.asarray(classes).astype(np.int64)
    if len(images) != len(classes):
        raise ValueError("images and predictions differ in length")
    lines = [lsd.SUBMISSION_HEADER] + [f"{image},{c}" for image, c in zip(images, classes)]
    write_lines(path, lines)
    check_lsd_file(path, images)


def check_lsd_file(path: str, images) -> None:
    rows = read_rows(path, lsd.SUBMISSION_HEADER, images)
    valid = {str(i) for i in range(lsd.NUM_CLASSES)}
    for number, (row, image) in enumerate(zip(rows[1:], images), start=2):
        name, _, label = row.rpartition(",")
        if name != image or label not in valid:
            raise RuntimeError(f"{path}, line {number}: expected '{image},<0..5>', got {row!r}")


class LSDTrack:
    name = "lsd"
    title = "ABAW4 Learning from Synthetic Data"
    level = "image"
    label_names = tuple(lsd.CLASSES)
    kind = "multiclass"
    main_metric = "f1"
    synthetic = "lsd"
    submission_file = "test_predictions.txt"
    class_folders = lsd.ClassFolders
    read_test_list = staticmethod(lsd.read_test_list)

    def metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict:
        """``predictions``: class indices (N,); ``labels`` (N,)."""
        from utils.metrics import lsd_metrics

        return lsd_metrics(predictions, labels)

    def write_submission(self, path: str, ids, predictions: np.ndarray) -> None:
        write_lsd_predictions(path, ids, predictions)



TRACK = LSDTrack()
