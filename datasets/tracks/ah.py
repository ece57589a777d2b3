"""Ambivalence/Hesitancy (BAH): is a person ambivalent or hesitant, per video (ABAW10/11) or per frame (ABAW8).

Video level (:data:`TRACK`, ``--track ah``), the ABAW10/11 release::

    Videos/<pid>/Visite_1/<pid>_Question_<q>_<date>_<time>_Video.mp4          the recording, with its sound
    cropped-aligned-faces/Videos/.../<video>.mp4/frame-N.jpg                   face crops, N the 0-based frame index
    transcription/Videos/.../<video>.mp4/<video>.yml                           {text, chunks: [{text, timestamp}]}
    split/train.txt, split/val.txt, split/test.txt                             video_path,label,transcript (no header)
    split/test_labels.txt                                                      the test labels (synthetic data only)

A split line is split on its first two commas only (the transcript holds commas); the test file's labels are
placeholders and are read as unknown unless ``split/test_labels.txt`` exists. A crop ``frame-N.jpg`` is frame N of
the video counted from 0 (``frame-0.jpg`` exists), so ``frame_numbers`` are N + 1, the project's 1-based decode order.
Transcript chunks come from the ``.yml`` (read with a safe loader that admits the ``!!python/tuple`` of the
timestamps as a list and refuses every other Python tag); their times restart at each of the speech recogniser's
30-s windows, so a chunk that starts before the previous one is moved to follow it (its window's offset is the
previous chunk's end), and a missing end (``null``, the last chunk) stays None. Without a ``.yml`` the split line's
transcript is one chunk without times.

Submission: ``trial-0.txt`` ... ``trial-4.txt`` (:func:`trial_name`), no header, one line per video in the reference
split file's order, ``video_path,p0,p1,pred`` (p1 with 4 decimals, p0 written as ``1 - p1`` of that rounded value in
full precision, so ``float(p0) + float(p1) == 1.0`` exactly) or ``video_path,pred``. ``pred`` is ``p1 >= threshold``
with the writer's threshold (one tuned on validation is allowed), so a reader does not require it to agree with
``p1 >= 0.5``; it must be 0 or 1.

Frame level (:data:`FRAME_TRACK`, ``--track ah_frame``), the ABAW8 release::

    annotation.yml              keyed by video path (spaces in names), each with frame_annotation: [[<frame path>, 0|1]]
    default-split/train.txt, default-split/val.txt     the video paths of each split, one a line
    videos/<video path>         the recordings
    trial-0.txt                 the organisers' example submission: frame_path,label for every test frame (the
                                test's reference order; its labels are placeholders, read as unknown: frame_labels
                                None); test_labels.txt the same with true labels (synthetic only)

Frame paths are relative to the data folder (or to its ``cropped-aligned-faces``, whichever holds them). Metric
(both): macro F1 over the two classes of ``p1 >= threshold``.
"""

from __future__ import annotations

import functools
import math
import os
import re

import numpy as np
import yaml

from datasets.tracks.base import VideoItem, VideoSplit, numeric_sorted
from utils.atomic import atomic_write
from utils.errors import UserError

SPLITS = ("train", "val", "test")
SPLIT_DIR = "split"
TEST_LABEL_FILE = "test_labels.txt"  # synthetic data only: the test split with its true labels
FACES_DIR = "cropped-aligned-faces"
TRANSCRIPT_DIR = "transcription"
FRAME_ANNOTATION = "annotation.yml"
FRAME_SPLIT_DIR = "default-split"
FRAME_VIDEOS_DIR = "videos"
FRAME_TEST_EXAMPLE = "trial-0.txt"  # the organisers' example submission: the test frames, in their order
FRAME_MISSING = -1  # frame_labels of a frame without annotation
TRIALS = 5  # trial-0.txt ... trial-4.txt
_FRAME_NAME = re.compile(r"^frame-(\d+)\.jpg$")


def trial_name(k: int) -> str:
    """The file name of submission try ``k`` (0 to 4)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) < TRIALS:
        raise UserError(f"trial {k!r}: the challenge takes trial-0.txt to trial-{TRIALS - 1}.txt")
    return f"trial-{int(k)}.txt"


# ---- YAML with the one Python tag of the transcripts

class _TranscriptLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """A safe loader that also reads ``!!python/tuple`` (as a list); every other Python tag stays refused."""


_TranscriptLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                                  lambda loader, node: loader.construct_sequence(node))


def load_yaml(path: str):
    """The document of a BAH ``.yml`` file, read safely; a malformed file or an unsafe tag is a one-line error."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.load(handle, Loader=_TranscriptLoader)  # noqa: S506 - a SafeLoader subclass
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{path}:{where} not readable as safe YAML ({problem})") from None


def _time(value, path: str, index: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{path}: chunk {index + 1}: timestamp {value!r} is not a number of seconds or null")
    return float(value)


def read_transcript(path: str) -> list[tuple[float | None, float | None, str]]:
    """(start_s, end_s, text) chunks of a transcription ``.yml`` (module text: times made continuous)."""
    document = load_yaml(path)
    if not isinstance(document, dict) or not isinstance(document.get("chunks", []), list):
        raise UserError(f"{path}: not a transcript (expected a mapping with text and a list of chunks)")
    chunks = document.get("chunks") or []
    if not chunks:
        text = document.get("text")
        if not isinstance(text, str):
            raise UserError(f"{path}: not a transcript (no chunks and no text)")
        return [(None, None, text.strip())] if text.strip() else []
    result, offset, previous = [], 0.0, None
    for index, chunk in enumerate(chunks):
        stamp = chunk.get("timestamp") if isinstance(chunk, dict) else None
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str) or \
                not isinstance(stamp, list) or len(stamp) != 2:
            raise UserError(f"{path}: chunk {index + 1} is not {{text, timestamp: [start, end]}}")
        start, end = _time(stamp[0], path, index), _time(stamp[1], path, index)
        if start is not None and previous is not None and start + offset < previous[0]:
            offset = previous[1] if previous[1] is not None else previous[0]  # a new recogniser window
        start = None if start is None else start + offset
        end = None if end is None else end + offset
        if start is not None:
            previous = (start, end)
        result.append((start, end, chunk["text"].strip()))
    return result


# ---- metric and probabilities

def _positive_probability(probabilities) -> np.ndarray:
    p = np.asarray(probabilities, np.float64)
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    return p.reshape(len(p), -1)[:, 0] if p.ndim == 2 else p


def metrics(probabilities, labels, threshold: float = 0.5) -> dict:
    """Macro F1 over the two classes of ``p1 >= threshold`` (the challenge's score), the positive class's F1, the
    accuracy and the share predicted positive. ``probabilities`` are p1 (N,) or (N, 2) [p0, p1]; ``labels`` 0/1,
    -1 (a frame without annotation) skipped."""
    from sklearn.metrics import accuracy_score, f1_score

    p1 = _positive_probability(probabilities)
    truth = np.asarray(labels).reshape(len(p1), -1)[:, 0].astype(np.int64) if len(p1) else np.zeros(0, np.int64)
    keep = truth != FRAME_MISSING
    truth, predicted = truth[keep], (p1[keep] >= threshold).astype(np.int64)
    if not len(truth):
        return {"f1_macro": float("nan"), "f1_positive": float("nan"), "accuracy": float("nan"),
                "positive_rate": float("nan"), "count": 0}
    return {"f1_macro": float(f1_score(truth, predicted, labels=[0, 1], average="macro", zero_division=0)),
            "f1_positive": float(f1_score(truth, predicted, labels=[1], average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(truth, predicted)), "positive_rate": float(predicted.mean()),
            "count": int(len(truth))}


THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.01), 2)  # the candidates of tune_threshold


def tune_threshold(probabilities, labels, candidates=THRESHOLDS) -> tuple[float, dict]:
    """The threshold on p1 with the best macro F1 over the two classes among ``candidates`` (a tie goes to the one
    nearest 0.5), and the macro F1 of each candidate. Counts come from sorted probabilities, so that a frame-level
    split of hundreds of thousands of frames costs one sort."""
    p1 = _positive_probability(probabilities)
    truth = np.asarray(labels).reshape(len(p1), -1)[:, 0].astype(np.int64) if len(p1) else np.zeros(0, np.int64)
    keep = truth != FRAME_MISSING
    p1, truth = p1[keep], truth[keep]
    candidates = np.asarray(candidates, np.float64)
    positives, negatives = np.sort(p1[truth == 1]), np.sort(p1[truth == 0])
    # predicted positive: p1 >= t, i.e. the elements from the first one >= t
    tp = len(positives) - np.searchsorted(positives, candidates, side="left")
    fp = len(negatives) - np.searchsorted(negatives, candidates, side="left")
    fn, tn = len(positives) - tp, len(negatives) - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        f1_positive = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
        f1_negative = np.where(2 * tn + fn + fp > 0, 2 * tn / np.maximum(2 * tn + fn + fp, 1), 0.0)
    macro = (f1_positive + f1_negative) / 2
    best = np.flatnonzero(macro >= macro.max() - 1e-12) if len(macro) else np.zeros(0, np.int64)
    if not len(p1) or not len(best):
        return 0.5, {}
    chosen = best[np.argmin(np.abs(candidates[best] - 0.5))]
    return float(candidates[chosen]), {float(t): float(f) for t, f in zip(candidates, macro)}


def probability_pair(p1: float) -> tuple[str, str]:
    """(p0, p1) as written: p1 with 4 decimals and p0 = 1 - that value in full precision, so that the two parsed
    back add up to exactly 1.0."""
    p1_text = f"{min(max(float(p1), 0.0), 1.0):.4f}"
    return repr(1.0 - float(p1_text)), p1_text


# ---- the video-level submission

def _lines_of(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return [line.rstrip("\r\n") for line in handle]
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror})") from None


def read_submission(path: str, reference_ids=None) -> dict:
    """Check a video-level submission and return ``{"ids", "p1" (or None), "pred"}``: both forms, every line of one
    form, probabilities in [0, 1] with ``float(p0) + float(p1) == 1.0``, pred 0 or 1, and with ``reference_ids``
    exactly those videos in that order."""
    ids, p1s, preds, form = [], [], [], None
    for number, line in enumerate(_lines_of(path), 1):
        if not line.strip():
            continue
        fields = line.rsplit(",", 3)
        this = 4 if len(fields) == 4 and _all_numbers(fields[1:]) else 2
        if form is None:
            form = this
        if this != form:
            raise UserError(f"{path}:{number}: expected {form - 1} values after the video path as on line 1, "
                            f"got {line!r}")
        if form == 2:
            fields = line.rsplit(",", 1)
            if len(fields) != 2:
                raise UserError(f"{path}:{number}: expected video_path,pred or video_path,p0,p1,pred")
        video, pred = fields[0], fields[-1].strip()
        if pred not in ("0", "1"):
            raise UserError(f"{path}:{number}: pred must be 0 or 1, got {pred!r}")
        if form == 4:
            p0, p1 = float(fields[1]), float(fields[2])
            if not (0.0 <= p0 <= 1.0 and 0.0 <= p1 <= 1.0):
                raise UserError(f"{path}:{number}: probabilities must lie in [0, 1], got {fields[1]}, {fields[2]}")
            if p0 + p1 != 1.0:
                raise UserError(f"{path}:{number}: p0 + p1 = {p0 + p1!r}, not exactly 1 "
                                f"({fields[1]} + {fields[2]})")
            p1s.append(p1)
        ids.append(video)
        preds.append(int(pred))
    if not ids:
        raise UserError(f"{path}: no predictions")
    if len(set(ids)) != len(ids):
        duplicate = next(video for k, video in enumerate(ids) if video in ids[:k])
        raise UserError(f"{path}: video {duplicate} appears twice")
    if reference_ids is not None:
        _check_order(path, ids, list(reference_ids), "video")
    return {"ids": ids, "p1": np.asarray(p1s) if form == 4 else None, "pred": np.asarray(preds, np.int64)}


def _all_numbers(texts) -> bool:
    try:
        return all(math.isfinite(float(text)) for text in texts)
    except ValueError:
        return False


def _check_order(path: str, ids: list, reference: list, what: str) -> None:
    if ids == reference:
        return
    missing = [name for name in reference if name not in set(ids)]
    extra = [name for name in ids if name not in set(reference)]
    if missing:
        raise UserError(f"{path}: {len(missing)} {what}s of the reference are missing, e.g. {missing[0]}")
    if extra:
        raise UserError(f"{path}: {len(extra)} {what}s are not in the reference, e.g. {extra[0]}")
    first = next(k for k, (a, b) in enumerate(zip(ids, reference)) if a != b)
    raise UserError(f"{path}:{first + 1}: {what} {ids[first]} where the reference order has {reference[first]}")


def write_submission(path: str, ids, probabilities, threshold: float = 0.5, with_probabilities: bool = True) -> None:
    """Write a video-level ``trial-K.txt`` (module text) for ``ids`` in the given (reference) order, then re-read it
    and raise :class:`UserError` if it does not hold exactly what was meant."""
    ids = [str(video) for video in ids]
    p1 = _positive_probability(probabilities)
    if len(p1) != len(ids):
        raise UserError(f"{path}: {len(ids)} videos but {len(p1)} predictions")
    if not np.isfinite(p1).all():
        raise UserError(f"{path}: a prediction is NaN or infinite")
    lines, meant_p1, meant_pred = [], [], []
    for video, value in zip(ids, p1):
        p0_text, p1_text = probability_pair(value)
        pred = int(float(p1_text) >= threshold)
        meant_p1.append(float(p1_text))
        meant_pred.append(pred)
        lines.append(f"{video},{p0_text},{p1_text},{pred}" if with_probabilities else f"{video},{pred}")
    with atomic_write(path) as handle:
        handle.write("".join(line + "\n" for line in lines))
    written = read_submission(path, reference_ids=ids)
    if written["pred"].tolist() != meant_pred or (with_probabilities and written["p1"].tolist() != meant_p1):
        raise UserError(f"{path}: the file read back differs from the predictions meant")


# ---- the frame-level submission

def read_frame_submission(path: str, reference_ids=None) -> tuple[list[str], np.ndarray]:
    """(frame paths, labels) of a ``frame_path,label`` file (the ABAW8 submission and its example ``trial-0.txt``);
    with ``reference_ids`` the frames must be exactly those, in that order."""
    frames, labels = [], []
    for number, line in enumerate(_lines_of(path), 1):
        if not line.strip():
            continue
        fields = line.rsplit(",", 1)
        if len(fields) != 2 or not fields[0]:
            raise UserError(f"{path}:{number}: expected frame_path,label, got {line!r}")
        label = fields[1].strip()
        if label not in ("0", "1"):
            raise UserError(f"{path}:{number}: label must be 0 or 1, got {label!r}")
        frames.append(fields[0])
        labels.append(int(label))
    if reference_ids is not None:
        _check_order(path, frames, list(reference_ids), "frame")
    return frames, np.asarray(labels, np.int64)


def write_frame_submission(path: str, frame_ids, probabilities, threshold: float = 0.5) -> None:
    """Write ``frame_path,label`` per frame in the given (the example file's) order, re-read and check it."""
    frame_ids = [str(frame) for frame in frame_ids]
    p1 = _positive_probability(probabilities)
    if len(p1) != len(frame_ids):
        raise UserError(f"{path}: {len(frame_ids)} frames but {len(p1)} predictions")
    if not np.isfinite(p1).all():
        raise UserError(f"{path}: a prediction is NaN or infinite")
    meant = (p1 >= threshold).astype(np.int64)
    with atomic_write(path) as handle:
        handle.write("".join(f"{frame},{label}\n" for frame, label in zip(frame_ids, meant)))
    _, written = read_frame_submission(path, reference_ids=frame_ids)
    if not np.array_equal(written, meant):
        raise UserError(f"{path}: the file read back differs from the predictions meant")


# ---- readers

def _frames_of(folder: str) -> tuple[list[str], np.ndarray]:
    """The ``frame-N.jpg`` names of a crop folder in frame order, and their 1-based frame numbers (N + 1)."""
    try:
        names = [name for name in os.listdir(folder) if _FRAME_NAME.match(name)]
    except OSError:
        return [], np.zeros(0, np.int64)
    names = numeric_sorted(names)
    return names, np.asarray([int(_FRAME_NAME.match(name).group(1)) + 1 for name in names], np.int64)


def _split_lines(path: str) -> list[tuple[int, str, int, str]]:
    """(line number, video_path, label, transcript) of a ``video_path,label,transcript`` file."""
    rows, seen = [], {}
    for number, line in enumerate(_lines_of(path), 1):
        if not line.strip():
            continue
        fields = line.split(",", 2)
        if len(fields) != 3:
            raise UserError(f"{path}:{number}: expected 3 columns video_path,label,transcript, got {len(fields)}")
        video, label, transcript = fields[0].strip(), fields[1].strip(), fields[2]
        if not video:
            raise UserError(f"{path}:{number}: empty video path")
        if label not in ("0", "1"):
            raise UserError(f"{path}:{number}: label must be 0 or 1, got {label!r}")
        if video in seen:
            raise UserError(f"{path}:{number}: video {video} already listed on line {seen[video]}")
        seen[video] = number
        rows.append((number, video, int(label), transcript.strip()))
    return rows


class AHTrack:
    """Ambivalence/Hesitancy per video (ABAW10/11): one binary label per video, macro F1 (module text)."""

    name = "ah"
    title = "Ambivalence/Hesitancy, per video (BAH, ABAW10/11)"
    level = "video"
    label_names = ("ambivalence/hesitancy",)
    kind = "binary"
    main_metric = "f1_macro"
    synthetic = "ah"  # datasets.synthetic.ah: both layouts in one folder
    submission_file = "trial-0.txt"  # the first of the challenge's five tries (trial_name(k) for the others)

    @staticmethod
    def split_file(data_dir: str, split: str) -> str:
        if split not in SPLITS:
            raise UserError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        return os.path.join(data_dir, SPLIT_DIR, f"{split}.txt")

    def find(self, data_dir: str, split: str) -> bool:
        return os.path.isfile(self.split_file(data_dir, split))

    def read_split(self, data_dir: str, split: str) -> VideoSplit:
        source = self.split_file(data_dir, split)
        if not os.path.isfile(source):
            raise UserError(f"{source}: no such file (the {split} split of the A/H track)")
        rows = _split_lines(source)
        known = None
        if split == "test":
            label_file = os.path.join(data_dir, SPLIT_DIR, TEST_LABEL_FILE)
            if os.path.isfile(label_file):
                known = {video: label for _, video, label, _ in _split_lines(label_file)}
        frames_root = os.path.join(data_dir, FACES_DIR)
        items = []
        for number, video, label, text in rows:
            video_file = os.path.join(data_dir, video)
            face_folder = os.path.join(frames_root, video)
            has_video, has_faces = os.path.isfile(video_file), os.path.isdir(face_folder)
            if not has_video and not has_faces:
                raise UserError(f"{source}:{number}: an id without a video: neither {video_file} nor the face "
                                f"folder {face_folder} exists")
            names, numbers = _frames_of(face_folder)
            stem = os.path.splitext(os.path.basename(video))[0]
            yml = os.path.join(data_dir, TRANSCRIPT_DIR, video, stem + ".yml")
            if os.path.isfile(yml):
                transcript = read_transcript(yml)
            else:
                transcript = [(None, None, text)] if text else None
            if split != "test":
                value = label
            elif known is not None:
                if video not in known:
                    raise UserError(f"{os.path.join(data_dir, SPLIT_DIR, TEST_LABEL_FILE)}: no label for {video} "
                                    f"({source}:{number})")
                value = known[video]
            else:
                value = None
            items.append(VideoItem(
                id=video, frames=[f"{video}/{name}" for name in names], frames_root=frames_root,
                frame_numbers=numbers, audio=video_file if has_video else None, transcript=transcript,
                label=None if value is None else np.asarray([value], np.float32)))
        return VideoSplit(items, source)

    def metrics(self, probabilities, labels, threshold: float = 0.5) -> dict:
        return metrics(probabilities, labels, threshold)

    def tune(self, probabilities, labels) -> dict:
        """The decision settings chosen on validation (``metrics`` and ``write_submission`` take them as keywords):
        the threshold on p1 with the best macro F1."""
        return {"threshold": tune_threshold(probabilities, labels)[0]}

    def write_submission(self, path: str, ids, probabilities, threshold: float = 0.5,
                         with_probabilities: bool = True) -> None:
        write_submission(path, ids, probabilities, threshold, with_probabilities)

    def read_submission(self, path: str, reference_ids=None) -> dict:
        return read_submission(path, reference_ids)

    trial_name = staticmethod(trial_name)


class AHFrameTrack(AHTrack):
    """Ambivalence/Hesitancy per frame (ABAW8): one binary label per frame, macro F1 over all frames."""

    name = "ah_frame"
    title = "Ambivalence/Hesitancy, per frame (BAH, ABAW8)"
    level = "frame"

    @staticmethod
    def split_file(data_dir: str, split: str) -> str:
        if split not in SPLITS:
            raise UserError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        if split == "test":
            return os.path.join(data_dir, FRAME_TEST_EXAMPLE)
        return os.path.join(data_dir, FRAME_SPLIT_DIR, f"{split}.txt")

    def find(self, data_dir: str, split: str) -> bool:
        if split != "test" and not os.path.isfile(os.path.join(data_dir, FRAME_ANNOTATION)):
            return False
        return os.path.isfile(self.split_file(data_dir, split))

    def read_split(self, data_dir: str, split: str) -> VideoSplit:
        source = self.split_file(data_dir, split)
        if not os.path.isfile(source):
            raise UserError(f"{source}: no such file (the {split} split of the frame-level A/H track)")
        if split == "test":
            frame_paths, _ = read_frame_submission(source)
            truth = None  # the example's labels are placeholders: unknown, unless the synthetic label file exists
            label_file = os.path.join(data_dir, TEST_LABEL_FILE)
            if os.path.isfile(label_file):
                truth = dict(zip(*read_frame_submission(label_file)))
            videos: dict[str, list] = {}
            for frame in frame_paths:
                label = FRAME_MISSING if truth is None else truth.get(frame, FRAME_MISSING)
                videos.setdefault(os.path.dirname(frame), []).append((frame, label))
        else:
            videos = self._annotated_videos(data_dir, source)
        root = _frames_root(data_dir, [pairs[0][0] for pairs in videos.values() if pairs])
        items = []
        for video, pairs in videos.items():
            frames = [frame for frame, _ in pairs]
            numbers = []
            for frame in frames:
                match = _FRAME_NAME.match(os.path.basename(frame))
                if match is None:
                    raise UserError(f"{source}: frame path {frame!r} does not end in frame-N.jpg")
                numbers.append(int(match.group(1)) + 1)
            video_file = os.path.join(data_dir, FRAME_VIDEOS_DIR, video)
            labels = np.asarray([label for _, label in pairs], np.int64)
            items.append(VideoItem(
                id=video, frames=frames, frames_root=root, frame_numbers=np.asarray(numbers, np.int64),
                audio=video_file if os.path.isfile(video_file) else None,
                frame_labels=None if split == "test" and truth is None else labels, frame_ids=list(frames)))
        return VideoSplit(items, source)

    @staticmethod
    def _annotated_videos(data_dir: str, source: str) -> dict:
        annotation_path = os.path.join(data_dir, FRAME_ANNOTATION)
        if not os.path.isfile(annotation_path):
            raise UserError(f"{annotation_path}: no such file (the frame labels of the A/H track)")
        stat = os.stat(annotation_path)
        annotation = _load_annotation(annotation_path, stat.st_mtime_ns, stat.st_size)
        if not isinstance(annotation, dict):
            raise UserError(f"{annotation_path}: expected a mapping from video path to its annotation")
        videos = {}
        for number, line in enumerate(_lines_of(source), 1):
            video = line.split(",", 1)[0].strip()
            if not video:
                continue
            entry = annotation.get(video)
            frames = entry.get("frame_annotation") if isinstance(entry, dict) else None
            if entry is None:
                raise UserError(f"{source}:{number}: an id without a video: {video} is not in {annotation_path}")
            if not isinstance(frames, list):
                raise UserError(f"{annotation_path}: {video}: no frame_annotation list")
            pairs = []
            for index, pair in enumerate(frames):
                if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                        and pair[1] in (0, 1) and not isinstance(pair[1], float)):
                    raise UserError(f"{annotation_path}: {video}: frame_annotation item {index + 1} is not "
                                    f"[frame path, 0|1], got {pair!r}")
                pairs.append((pair[0], int(pair[1])))
            by_number = {}
            for frame, label in pairs:
                match = _FRAME_NAME.match(os.path.basename(frame))
                if match is None:
                    raise UserError(f"{annotation_path}: {video}: frame path {frame!r} does not end in frame-N.jpg")
                by_number[int(match.group(1))] = (frame, label)
            videos[video] = [by_number[key] for key in sorted(by_number)]
        return videos

    def write_submission(self, path: str, frame_ids, probabilities, threshold: float = 0.5) -> None:
        write_frame_submission(path, frame_ids, probabilities, threshold)

    def read_submission(self, path: str, reference_ids=None) -> tuple[list[str], np.ndarray]:
        return read_frame_submission(path, reference_ids)


@functools.lru_cache(maxsize=2)
def _load_annotation(path: str, mtime_ns: int, size: int):
    """``annotation.yml`` once for the train and val splits (a released file of 295,526 frames takes seconds to
    parse); the file's time and size are part of the key, so a changed file is read again."""
    return load_yaml(path)


def _frames_root(data_dir: str, some_frames: list[str]) -> str:
    """The folder the frame paths are relative to: the data folder or its ``cropped-aligned-faces``."""
    for root in (data_dir, os.path.join(data_dir, FACES_DIR)):
        if any(os.path.isfile(os.path.join(root, frame)) for frame in some_frames[:8]):
            return root
    return data_dir


TRACK = AHTrack()
FRAME_TRACK = AHFrameTrack()
