"""The Compound Expression track (C-EXPR-DB; ABAW6-9): 7 compound expressions per frame of raw videos.

As released (TRACKS.md)::

    <video>.mp4                                 56 test videos, ``01`` ... ``56``, raw (no face crops, no labels)
    CVPR_6th_ABAW_CE_test_set_sample.txt        the frames to predict, ``01/00001.jpg`` (1-based, 5 digits), with a
                                                header ``image_location,...`` or none, rows possibly with more fields

There is no training data: teams trained on RAF-DB's compound images (a folder per class) or worked zero-shot from a
basic-expression model. This project prepares the videos with ``main_prepare.py`` (``cropped_aligned/<video>/``),
reads compound image folders whose names match the classes case-insensitively with ``_``, ``-`` or spaces between
the words (``Fearfully Surprised``, ``fearfully_surprised``), and writes the submission: header
``image_location,<the 7 classes>`` (8 fields), then ``<frame>,<class index>`` for exactly the sample file's frames in
its order. The synthetic set also writes ``test_set_annotations.txt`` (``image_location,label``), so that a demo can
score its own submission.

Metric: macro F1 over the 7 classes (a class absent from both predictions and labels scores 0, as scikit-learn's
``f1_score(average="macro", labels=range(7))``).

Zero-shot rule (:meth:`CETrack.zero_shot`): a compound's score is the geometric mean of the probabilities of its two
basic expressions, ``sqrt(p_a * p_b)``, and the 7 scores of a frame are renormalised to sum to 1. The geometric mean
asks both expressions to be present: one confident basic expression alone (a pure surprise) does not make every
compound that contains it likely, as an arithmetic mean would.
"""

from __future__ import annotations

import re
from typing import ClassVar

import numpy as np

from datasets.lsd import ClassFolders
from utils.abaw import EXPR_NAMES, NUM_EXPR
from utils.atomic import write_text_atomic
from utils.errors import UserError

SAMPLE_FILE = "CVPR_6th_ABAW_CE_test_set_sample.txt"
TEST_LABEL_FILE = "test_set_annotations.txt"  # the synthetic set's test labels: image_location,label
TEST_LABEL_HEADER = "image_location,label"
COMPOUND_DIR = "compound_images"  # the synthetic set's compound image folders: {train,val}/<class>/
LOCATION = "image_location"

# The 7 compounds in the submission header's order, each with its two basic expressions (TRACKS.md).
COMPOUNDS = (
    ("Fearfully_Surprised", ("Fear", "Surprise")),
    ("Happily_Surprised", ("Happiness", "Surprise")),
    ("Sadly_Surprised", ("Sadness", "Surprise")),
    ("Disgustedly_Surprised", ("Disgust", "Surprise")),
    ("Angrily_Surprised", ("Anger", "Surprise")),
    ("Sadly_Fearful", ("Sadness", "Fear")),
    ("Sadly_Angry", ("Sadness", "Anger")),
)
CLASSES = tuple(name for name, _ in COMPOUNDS)
NUM_CLASSES = len(CLASSES)
# compound index -> the indices of its two basic expressions in utils.abaw.EXPR_NAMES
BASIC_PAIRS = tuple(tuple(EXPR_NAMES.index(basic) for basic in pair) for _, pair in COMPOUNDS)
SUBMISSION_HEADER = ",".join((LOCATION,) + CLASSES)

_FRAME = re.compile(r"^(?P<video>[^/\\]+)/(?P<frame>\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", name.strip()).lower()


_CLASS_KEYS = {_key(name): index for index, name in enumerate(CLASSES)}


def class_index(folder: str) -> int:
    """The class of a compound folder name: case-insensitive, words joined by ``_``, ``-`` or spaces."""
    index = _CLASS_KEYS.get(_key(folder))
    if index is None:
        raise UserError(f"unknown compound class folder {folder!r}; expected one of {', '.join(CLASSES)} (any case, "
                        f"words joined by _, - or a space)")
    return index


def frame_key(name: str) -> tuple[str, int]:
    """``01/00042.jpg`` -> ("01", 42)."""
    match = _FRAME.match(name)
    if match is None:
        raise ValueError(name)
    return match.group("video"), int(match.group("frame"))


def read_sample_file(path: str) -> list[str]:
    """The frames the sample file lists, in its order (header optional, fields after the first ignored)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"CE sample file not found: {path}; pass --test-list") from None
    frames, seen = [], set()
    for number, line in enumerate(lines, start=1):
        name = line.split(",", 1)[0].strip()
        if not name or (number == 1 and name.lower() == LOCATION):
            continue
        try:
            _, frame = frame_key(name)
        except ValueError:
            raise UserError(f"{path}, line {number}: expected '<video>/<frame>.jpg' (e.g. 01/00001.jpg), got "
                            f"{line!r}") from None
        if frame < 1:
            raise UserError(f"{path}, line {number}: frame numbers start at 1 (00001.jpg), got {name!r}")
        if name in seen:
            raise UserError(f"{path}, line {number}: {name} is listed twice")
        seen.add(name)
        frames.append(name)
    if not frames:
        raise UserError(f"CE sample file {path} lists no frame")
    return frames


def read_test_labels(path: str) -> dict[str, int]:
    """``frame -> class index`` of a labelled frame list (``image_location,label`` rows; synthetic data only)."""
    labels = {}
    with open(path, encoding="utf-8-sig") as handle:
        for number, row in enumerate(handle.read().splitlines(), start=1):
            if not row.strip() or (number == 1 and row.split(",", 1)[0].strip().lower() == LOCATION):
                continue
            fields = [field.strip() for field in row.split(",")]
            if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) >= NUM_CLASSES:
                raise UserError(f"{path}, line {number}: expected '<video>/<frame>.jpg,<class 0..6>', got {row!r}")
            labels[fields[0]] = int(fields[1])
    return labels


class CompoundFolders(ClassFolders):
    """The images of a compound class-folder split, as ``<folder>/<file>`` paths relative to ``root``, and their
    class indices (the LSD reader's rules with the 7 compounds' names)."""

    classes = CLASSES
    what = "compound image"
    missing_hint = "check --data-dir, --train-dir and --val-dir"
    class_index = staticmethod(class_index)


def read_submission(path: str, sample_frames) -> np.ndarray:
    """The class indices of a CE submission file, after checking it against the sample file's frames: the header,
    two fields a row, every frame once in the sample file's order, classes 0..6; :class:`UserError` naming the line."""
    sample_frames = [str(frame) for frame in sample_frames]
    try:
        with open(path, encoding="utf-8") as handle:
            rows = handle.read().splitlines()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    if not rows or rows[0].strip() != SUBMISSION_HEADER:
        raise UserError(f"{path}, line 1: expected the header {SUBMISSION_HEADER!r}, got {rows[:1]}")
    if len(rows) - 1 != len(sample_frames):
        raise UserError(f"{path}: {len(rows) - 1} rows for the {len(sample_frames)} frames of the sample file")
    classes = np.empty(len(sample_frames), np.int64)
    valid = {str(index): index for index in range(NUM_CLASSES)}
    for number, (row, frame) in enumerate(zip(rows[1:], sample_frames), start=2):
        fields = row.split(",")
        if len(fields) != 2 or fields[0] != frame:
            raise UserError(f"{path}, line {number}: expected '{frame},<class 0..6>' (the sample file's order), got "
                            f"{row!r}")
        if fields[1] not in valid:
            raise UserError(f"{path}, line {number}: class {fields[1]!r} is not one of 0..6")
        classes[number - 2] = valid[fields[1]]
    return classes


class CETrack:
    """C-EXPR-DB: 7 compound classes per frame, macro F1, the sample file's frames in its order."""

    name: ClassVar[str] = "ce"
    title: ClassVar[str] = "Compound Expression (C-EXPR-DB)"
    level: ClassVar[str] = "frame"
    label_names: ClassVar[tuple[str, ...]] = CLASSES
    kind: ClassVar[str] = "multiclass"
    main_metric: ClassVar[str] = "f1_macro"
    synthetic: ClassVar[str] = "ce"  # datasets.synthetic.ce: raw videos, the sample file, compound image folders
    submission_file: ClassVar[str] = "test_predictions.txt"
    basic_pairs: ClassVar[tuple] = BASIC_PAIRS

    def metrics(self, predicted_classes, labels) -> dict:
        """Macro F1 over the 7 classes, per-class F1, accuracy and the confusion matrix (rows = true)."""
        from utils.metrics import lsd_metrics

        scores = lsd_metrics(np.asarray(predicted_classes), np.asarray(labels), NUM_CLASSES)
        return {"f1_macro": scores["f1"], "accuracy": scores["acc"],
                "f1_per_class": dict(zip(CLASSES, scores["f1_per_class"])), "confusion": scores["confusion"]}

    def zero_shot(self, expr_probabilities) -> np.ndarray:
        """(N, 8) basic-expression probabilities (``utils.abaw.EXPR_NAMES`` order) -> (N, 7) compound scores: the
        geometric mean of each compound's two basic probabilities, renormalised to sum to 1 per row."""
        probabilities = np.asarray(expr_probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or probabilities.shape[1] != NUM_EXPR:
            raise ValueError(f"expected (N, {NUM_EXPR}) expression probabilities, got {probabilities.shape}")
        first, second = (np.array(side) for side in zip(*BASIC_PAIRS))
        scores = np.sqrt(probabilities[:, first] * probabilities[:, second])
        total = scores.sum(1, keepdims=True)
        # a row with no mass on any compound's pair (e.g. certain Neutral) gets the uniform distribution
        return np.divide(scores, total, out=np.full_like(scores, 1.0 / NUM_CLASSES), where=total > 0)

    def write_submission(self, path: str, frames, classes) -> None:
        """Write the submission for ``frames`` (the sample file's, in its order) and read it back; a difference from
        what was meant is a :class:`UserError`."""
        frames = [str(frame) for frame in frames]
        classes = np.asarray(classes)
        if classes.shape != (len(frames),) or classes.dtype.kind not in "iu":
            raise ValueError(f"expected {len(frames)} integer classes, got {classes.shape} {classes.dtype}")
        if len(classes) and (classes.min() < 0 or classes.max() >= NUM_CLASSES):
            raise ValueError("a class index is outside 0..6")
        text = "\n".join([SUBMISSION_HEADER] + [f"{frame},{int(c)}" for frame, c in zip(frames, classes)]) + "\n"
        try:
            write_text_atomic(path, text)
        except OSError as error:
            raise UserError(f"cannot write {path}: {error.strerror or error}") from None
        if not np.array_equal(read_submission(path, frames), classes):
            raise UserError(f"{path}: the file read back differs from the predictions")

    def read_submission(self, path: str, sample_frames) -> np.ndarray:
        return read_submission(path, sample_frames)


TRACK = CETrack()
