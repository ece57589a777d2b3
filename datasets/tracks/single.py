"""The per-video single-task tracks of ABAW2-8 on Aff-Wild2: VA estimation, EXPR classification, AU detection.

Files and reader: ``datasets.tracks.affwild2`` (one annotation file per video and task, as released). Metrics:
mean CCC of valence and arousal; macro F1 over the 8 expressions; mean F1 over the 12 AUs (``utils.metrics``).
Submission, one file per task: header ``image_location,<the task's columns>``, then ``<video>/<frame>.jpg,<V>,<A>``
(VA), ``...,<class 0..7>`` (EXPR) or ``...,<12 AUs as 0/1>`` (AU); re-read and checked after writing.
"""

from __future__ import annotations

import numpy as np

from datasets.tracks import affwild2
from datasets.tracks.base import read_rows, write_lines


class _SingleTaskTrack:
    """What the three tracks share: the reader, the header and the row check; each says how a row is written."""

    level = "frame"
    synthetic = "tracks"
    submission_file = "test_predictions.txt"

    @property
    def header(self) -> str:
        return affwild2.SUBMISSION_HEADERS[self.name]

    @property
    def width(self) -> int:
        return affwild2.WIDTHS[self.name]

    def rows(self, values: np.ndarray) -> list[str]:
        raise NotImplementedError

    def valid_fields(self, fields: list[str]) -> str | None:
        """What is wrong with a row's value fields, or None."""
        raise NotImplementedError

    def write_submission(self, path: str, ids, predictions: np.ndarray) -> None:
        images = [str(image) for image in ids]
        values = np.asarray(predictions)
        if len(images) != len(values):
            raise ValueError("images and predictions differ in length")
        write_lines(path, [self.header] + [f"{image},{row}" for image, row in zip(images, self.rows(values))])
        self.check_file(path, images)

    def check_file(self, path: str, images) -> None:
        """Re-read a prediction file and verify it against the list it was made for."""
        rows = read_rows(path, self.header, images)
        width = 1 + self.width
        for number, (row, image) in enumerate(zip(rows[1:], images), start=2):
            fields = row.split(",")
            if len(fields) != width or fields[0] != image:
                raise RuntimeError(f"{path}, line {number}: expected {width} fields starting with {image!r}, got "
                                   f"{row!r}")
            problem = self.valid_fields(fields[1:])
            if problem:
                raise RuntimeError(f"{path}, line {number}: {problem}")



class VATrack(_SingleTaskTrack):
    name = "va"
    title = "Valence-Arousal Estimation (Aff-Wild2)"
    label_names = ("valence", "arousal")
    kind = "regression"
    main_metric = "va"

    def rows(self, values):
        values = np.clip(values.astype(np.float64), -1.0, 1.0)
        if np.isnan(values).any():
            raise ValueError("valence/arousal predictions contain NaN")
        return [f"{v:.6f},{a:.6f}" for v, a in values]

    def valid_fields(self, fields):
        return None if all(-1.0 <= float(x) <= 1.0 for x in fields) else "VA out of [-1, 1]"

    def metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict:
        from utils.metrics import va_ccc

        v, a = va_ccc(predictions, labels)
        return {"va": (v + a) / 2, "ccc_v": v, "ccc_a": a}


class EXPRTrack(_SingleTaskTrack):
    name = "expr"
    title = "Expression Classification (Aff-Wild2)"
    label_names = affwild2.EXPR_NAMES
    kind = "multiclass"
    main_metric = "f1_expr"

    def rows(self, values):
        return [str(int(c)) for c in values]

    def valid_fields(self, fields):
        return None if fields[0] in {str(i) for i in range(affwild2.NUM_EXPR)} else "expression out of 0..7"

    def metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict:
        """Macro F1 over the 8 classes on the frames with an expression label (not -1)."""
        from utils.metrics import confusion_matrix, per_class_f1

        labelled = np.asarray(labels).reshape(-1) != affwild2.EXPR_MISSING
        confusion = confusion_matrix(np.asarray(predictions)[labelled], np.asarray(labels)[labelled],
                                     affwild2.NUM_EXPR)
        return {"f1_expr": float(per_class_f1(confusion).mean())}


class AUTrack(_SingleTaskTrack):
    name = "au"
    title = "Action Unit Detection (Aff-Wild2)"
    label_names = affwild2.AU_NAMES
    kind = "multilabel"
    main_metric = "f1_au"

    def rows(self, values):
        return [",".join(str(int(x)) for x in au) for au in values]

    def valid_fields(self, fields):
        return None if all(x in ("0", "1") for x in fields) else "AU field not 0/1"

    def metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict:
        """Mean F1 over the 12 AUs, each on the frames labelled for it (not -1)."""
        from utils.metrics import binary_f1

        labels, predictions = np.asarray(labels), np.asarray(predictions)
        scores = [binary_f1(predictions[labels[:, k] != affwild2.AU_MISSING, k],
                            labels[labels[:, k] != affwild2.AU_MISSING, k]) for k in range(labels.shape[1])]
        return {"f1_au": float(np.mean(scores))}


VA, EXPR, AU = VATrack(), EXPRTrack(), AUTrack()
TRACKS = {track.name: track for track in (VA, EXPR, AU)}
