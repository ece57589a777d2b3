"""Emotional Mimicry Intensity (Hume-Vidmimic2; ABAW6, 8, 10): six intensities per video, the mean Pearson r.

Layout as released (TRACKS.md, "Emotional Mimicry Intensity")::

    train_split.csv, valid_split.csv         Filename,Admiration,Amusement,Determination,Empathic Pain,Excitement,Joy
    raw/<id5>.mp4                            the videos (<id5>: the id zero-padded to 5 digits)
    audio/<id5>.mp3                          16 kHz mono; missing for some videos, which is normal
    face_images/<id5>/<int>.jpg              face crops, frames numbered from 0 without padding: sorted numerically
    vit/<id5>.pkl, wav2vec2/<id5>.pkl        the organisers' features, one (T, D) array per video
    test_data/{raw,audio,face_images,vit,wav2vec2}/   the test videos, without a list file or labels

Quirks the reader accepts: ids are matched as integers (``0``, ``00000`` and ``00000.mp4`` are one video, in the
label files and in the folders alike), label columns are found by name (any order, spaces around names), and any
folder beside the labels that holds ``<id>.pkl`` (or ``.npy``) files is a feature set named after the folder. A
video of a labelled split needs at least one of its video, face folder or sound. The test set is the videos of
``test_data/raw/`` (``test_data/face_images/`` or ``test_data/audio/`` where there is no ``raw/``), sorted by id.

The submission is a CSV with the label header and one row per test video: ``Filename`` the unpadded integer id, rows
sorted by id, predictions clipped to [0, 1] (Skyy93/CVPR2024_abaw ``infer_hume.py`` writes it so). Bad input is one
:class:`UserError` line naming the file, the line and the reason.
"""

from __future__ import annotations

import csv
import math
import os
from typing import ClassVar

import numpy as np

from datasets.tracks.base import VideoItem, VideoSplit, numeric_sorted
from utils.atomic import atomic_write
from utils.errors import UserError

LABEL_NAMES = ("Admiration", "Amusement", "Determination", "Empathic Pain", "Excitement", "Joy")
ID_COLUMN = "Filename"
HEADER = ",".join((ID_COLUMN, *LABEL_NAMES))
LABEL_FILES = {"train": "train_split.csv", "val": "valid_split.csv"}
TEST_DIR = "test_data"
TEST_LABEL_FILE = "test_labels.csv"  # the test labels, which only the synthetic set has
RAW_DIR, AUDIO_DIR, FACES_DIR = "raw", "audio", "face_images"
VIDEO_EXTENSIONS = (".mp4",)
AUDIO_EXTENSIONS = (".mp3", ".wav")  # in this order of preference
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FEATURE_EXTENSIONS = (".pkl", ".npy")
SUBMISSION_DECIMALS = 6  # written values; the re-read check allows 1e-6
_STREAM_DIRS = (RAW_DIR, AUDIO_DIR, FACES_DIR, TEST_DIR)  # folders that are not feature sets


def padded(video_id: int) -> str:
    """The released form of an id in file and folder names: ``00042``."""
    return f"{int(video_id):05d}"


def parse_id(text: str) -> int | None:
    """The integer id of ``00042``, ``42`` or ``00042.mp4`` (surrounding spaces ignored); None if it is not one."""
    stem = text.strip()
    root, extension = os.path.splitext(stem)
    if extension and not extension[1:].isdigit():
        stem = root
    return int(stem) if stem.isascii() and stem.isdigit() else None


def _names_by_id(folder: str, extensions: tuple | None) -> dict[int, str]:
    """Integer id -> entry name of ``folder`` (files with one of ``extensions``, or folders when None); the first
    name in sorted order wins where two spell one id (``1`` and ``00001``)."""
    found = {}
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return found
    for entry in entries:
        if extensions is None:
            if not entry.is_dir():
                continue
            video_id = int(entry.name) if entry.name.isascii() and entry.name.isdigit() else None
        else:
            root, extension = os.path.splitext(entry.name)
            if extension.lower() not in extensions or not entry.is_file():
                continue
            video_id = int(root) if root.isascii() and root.isdigit() else None
        if video_id is not None:
            found.setdefault(video_id, entry.name)
    return found


def _audio_by_id(folder: str) -> dict[int, str]:
    by_extension = [_names_by_id(folder, (extension,)) for extension in AUDIO_EXTENSIONS]
    found = {}
    for names in reversed(by_extension):  # the preferred extension last, so it wins
        found.update(names)
    return found


class _Streams:
    """What one folder (the data directory, or ``test_data/``) holds per id: raw video, sound, face folder, and the
    feature sets."""

    def __init__(self, base: str):
        self.base = base
        self.raw = _names_by_id(os.path.join(base, RAW_DIR), VIDEO_EXTENSIONS)
        self.audio = _audio_by_id(os.path.join(base, AUDIO_DIR))
        self.faces = _names_by_id(os.path.join(base, FACES_DIR), None)
        self.features = {}
        try:
            folders = sorted(entry.name for entry in os.scandir(base) if entry.is_dir())
        except OSError:
            folders = []
        for name in folders:
            if name in _STREAM_DIRS or name.startswith("."):
                continue
            files = _names_by_id(os.path.join(base, name), FEATURE_EXTENSIONS)
            if files:
                self.features[name] = files

    def has(self, video_id: int) -> bool:
        return video_id in self.raw or video_id in self.faces or video_id in self.audio

    def item(self, video_id: int, label) -> VideoItem:
        faces_root = os.path.join(self.base, FACES_DIR)
        frames, numbers = [], []
        folder = self.faces.get(video_id)
        if folder is not None:
            names = [name for name in os.listdir(os.path.join(faces_root, folder))
                     if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
                     and os.path.splitext(name)[0].isascii() and os.path.splitext(name)[0].isdigit()]
            for name in numeric_sorted(names):
                frames.append(f"{folder}/{name}")
                numbers.append(int(os.path.splitext(name)[0]) + 1)  # crops count from 0; frame numbers from 1
        audio = self.audio.get(video_id)
        features = {name: os.path.join(self.base, name, files[video_id])
                    for name, files in self.features.items() if video_id in files}
        return VideoItem(id=str(video_id), frames=frames, frames_root=faces_root,
                         frame_numbers=np.asarray(numbers, np.int64),
                         audio=os.path.join(self.base, AUDIO_DIR, audio) if audio else None, features=features,
                         label=None if label is None else np.asarray(label, np.float32))


def _float_in_unit(text: str, where: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: {column} is {text.strip()!r}, not a number") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise UserError(f"{where}: {column} is {text.strip()}, outside [0, 1]")
    return value


def _header_columns(path: str, header: list[str]) -> list[int]:
    """Column index of the id and of each label name in ``header`` (names stripped, any order)."""
    names = [name.strip() for name in header]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"{path}: line 1: column {name!r} appears twice")
    unknown = [name for name in names if name not in (ID_COLUMN, *LABEL_NAMES)]
    if unknown:
        raise UserError(f"{path}: line 1: unknown column {unknown[0]!r}; expected the header {HEADER}")
    missing = [name for name in (ID_COLUMN, *LABEL_NAMES) if name not in names]
    if missing:
        raise UserError(f"{path}: line 1: no column {missing[0]!r}; expected the header {HEADER}")
    return [names.index(name) for name in (ID_COLUMN, *LABEL_NAMES)]


def read_label_file(path: str) -> list[tuple[int, np.ndarray, int]]:
    """``(id, 6 float32 intensities in label order, line number)`` per row of a split file."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{path}: unreadable label file ({error})") from None
    if not rows:
        raise UserError(f"{path}: empty file; expected the header {HEADER}")
    columns = _header_columns(path, rows[0])
    entries, seen = [], {}
    for number, row in enumerate(rows[1:], 2):
        if not any(field.strip() for field in row):
            continue
        where = f"{path}: line {number}"
        if len(row) != len(rows[0]):
            raise UserError(f"{where}: {len(row)} fields, the header has {len(rows[0])}")
        video_id = parse_id(row[columns[0]])
        if video_id is None:
            raise UserError(f"{where}: {ID_COLUMN} {row[columns[0]].strip()!r} is not a video id (an integer)")
        if video_id in seen:
            raise UserError(f"{where}: video {padded(video_id)} is listed twice (first on line {seen[video_id]})")
        seen[video_id] = number
        values = [_float_in_unit(row[column], where, name) for column, name in zip(columns[1:], LABEL_NAMES)]
        entries.append((video_id, np.asarray(values, np.float32), number))
    if not entries:
        raise UserError(f"{path}: no videos listed (an empty split)")
    return entries


def pearson(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pearson r of each column of two (N, K) arrays; a column that is constant in either array gets r = 0."""
    x = np.asarray(predictions, np.float64)
    y = np.asarray(labels, np.float64)
    # Exactly constant, tested before centring: the centred column of equal values can hold rounding residue.
    constant = (np.ptp(x, axis=0) == 0) | (np.ptp(y, axis=0) == 0)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    denominator = np.sqrt((x * x).sum(axis=0) * (y * y).sum(axis=0))
    r = np.divide((x * y).sum(axis=0), denominator, out=np.zeros(x.shape[1]), where=~constant & (denominator > 0))
    return np.clip(r, -1.0, 1.0)


class EMITrack:
    """The Emotional Mimicry Intensity track (module docstring)."""

    name: ClassVar[str] = "emi"
    title: ClassVar[str] = "Emotional Mimicry Intensity (Hume-Vidmimic2)"
    level: ClassVar[str] = "video"
    label_names: ClassVar[tuple[str, ...]] = LABEL_NAMES
    kind: ClassVar[str] = "regression"
    main_metric: ClassVar[str] = "pearson"  # the mean Pearson r over the six intensities
    synthetic: ClassVar[str] = "emi"
    submission_file: ClassVar[str] = "submission.csv"  # the organisers' CSV (one row per video)

    # ---- reading

    def find(self, data_dir: str, split: str) -> bool:
        if split in LABEL_FILES:
            return os.path.isfile(os.path.join(data_dir, LABEL_FILES[split]))
        if split == "test":
            return any(os.path.isdir(os.path.join(data_dir, TEST_DIR, name))
                       for name in (RAW_DIR, FACES_DIR, AUDIO_DIR))
        raise ValueError(f"unknown split {split!r}; expected train, val or test")

    def read_split(self, data_dir: str, split: str) -> VideoSplit:
        if not self.find(data_dir, split):
            wanted = (LABEL_FILES[split] if split in LABEL_FILES else
                      " or ".join(f"{TEST_DIR}/{name}/" for name in (RAW_DIR, FACES_DIR, AUDIO_DIR)))
            raise UserError(f"{data_dir}: not an EMI (Hume-Vidmimic2) layout: no {wanted} for the {split} split")
        if split == "test":
            return self._read_test(data_dir)
        path = os.path.join(data_dir, LABEL_FILES[split])
        entries = read_label_file(path)
        streams = _Streams(data_dir)
        items = []
        for video_id, label, number in entries:
            if not streams.has(video_id):
                raise UserError(f"{path}: line {number}: an id without a video: {padded(video_id)} is in none of "
                                f"{RAW_DIR}/, {FACES_DIR}/, {AUDIO_DIR}/ of {data_dir}")
            items.append(streams.item(video_id, label))
        return VideoSplit(items=items, source=path)

    def _read_test(self, data_dir: str) -> VideoSplit:
        base = os.path.join(data_dir, TEST_DIR)
        streams = _Streams(base)
        for name, found in ((RAW_DIR, streams.raw), (FACES_DIR, streams.faces), (AUDIO_DIR, streams.audio)):
            if os.path.isdir(os.path.join(base, name)):
                if not found:
                    raise UserError(f"{os.path.join(base, name)}: no test videos (an empty split)")
                labels = self._test_labels(data_dir)
                items = [streams.item(video_id, labels.get(video_id)) for video_id in sorted(found)]
                return VideoSplit(items=items, source=os.path.join(base, name))
        raise AssertionError("find() said the test split exists")

    @staticmethod
    def _test_labels(data_dir: str) -> dict:
        """The test labels by id, which only the synthetic set has (``test_labels.csv``), so that a run on it scores
        its own submission; {} for the released data."""
        path = os.path.join(data_dir, TEST_LABEL_FILE)
        if not os.path.isfile(path):
            return {}
        return {video_id: label for video_id, label, _ in read_label_file(path)}

    # ---- scoring

    def metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict:
        """``pearson_<emotion>`` (lower case, spaces as ``_``) for each of the six, and ``pearson``, their mean.

        A column that is constant in the predictions or in the labels has r = 0 (no correlation can be measured), so
        a constant prediction scores 0. Fewer than two videos is a :class:`UserError`."""
        predictions = np.asarray(predictions, np.float64)
        labels = np.asarray(labels, np.float64)
        width = len(LABEL_NAMES)
        if predictions.ndim != 2 or predictions.shape[1] != width or predictions.shape != labels.shape:
            raise UserError(f"EMI scores need two (videos, {width}) arrays, got {predictions.shape} and {labels.shape}")
        if len(labels) < 2:
            raise UserError(f"the Pearson correlation needs at least 2 videos, got {len(labels)}")
        if not (np.isfinite(predictions).all() and np.isfinite(labels).all()):
            raise UserError("EMI scores: predictions or labels hold NaN or infinite values")
        r = pearson(predictions, labels)
        scores = {f"pearson_{name.lower().replace(' ', '_')}": float(value) for name, value in zip(LABEL_NAMES, r)}
        scores["pearson"] = float(r.mean())
        return scores

    # ---- submission

    def write_submission(self, path: str, ids, predictions: np.ndarray) -> None:
        """Write the organisers' CSV (module docstring) atomically, then re-read it with :meth:`read_submission` and
        raise :class:`UserError` if its header, ids, count or values (within 1e-6) differ from what was meant."""
        ids = [int(video_id) if isinstance(video_id, (int, np.integer)) else parse_id(str(video_id))
               for video_id in ids]
        if any(video_id is None for video_id in ids):
            raise UserError(f"{path}: every test id must be an integer, got {ids}")
        values = np.asarray(predictions, np.float64)
        if values.shape != (len(ids), len(LABEL_NAMES)):
            raise UserError(f"{path}: {len(ids)} ids need ({len(ids)}, {len(LABEL_NAMES)}) predictions, "
                            f"got {values.shape}")
        if len(set(ids)) != len(ids):
            raise UserError(f"{path}: an id is given twice")
        if not np.isfinite(values).all():
            raise UserError(f"{path}: predictions hold NaN or infinite values")
        order = np.argsort(ids, kind="stable")
        meant_ids = [str(ids[i]) for i in order]
        meant = np.clip(values[order], 0.0, 1.0)
        with atomic_write(path) as handle:
            handle.write(HEADER + "\n")
            for video_id, row in zip(meant_ids, meant):
                handle.write(video_id + "," + ",".join(f"{value:.{SUBMISSION_DECIMALS}f}" for value in row) + "\n")
        read_ids, read_values = self.read_submission(path)
        if read_ids != meant_ids:
            raise UserError(f"{path}: re-read {len(read_ids)} ids that differ from the {len(meant_ids)} written")
        if not np.allclose(read_values, meant, rtol=0.0, atol=1e-6):
            raise UserError(f"{path}: re-read values differ from those written by more than 1e-6")

    def read_submission(self, path: str) -> tuple[list[str], np.ndarray]:
        """``(ids, (videos, 6) values)`` of a submission file, checked: the exact header, one row of 7 fields per
        video, unpadded integer ids each once, values in [0, 1]."""
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                lines = handle.read().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"{path}: unreadable submission ({error})") from None
        if not lines or lines[0] != HEADER:
            raise UserError(f"{path}: line 1: expected the header {HEADER}")
        ids, values, seen = [], [], set()
        for number, line in enumerate(lines[1:], 2):
            where = f"{path}: line {number}"
            fields = line.split(",")
            if len(fields) != 1 + len(LABEL_NAMES):
                raise UserError(f"{where}: {len(fields)} fields, expected {1 + len(LABEL_NAMES)}")
            if not (fields[0].isascii() and fields[0].isdigit()) or str(int(fields[0])) != fields[0]:
                raise UserError(f"{where}: {ID_COLUMN} {fields[0]!r} is not an unpadded integer id")
            if fields[0] in seen:
                raise UserError(f"{where}: video {fields[0]} is listed twice")
            seen.add(fields[0])
            ids.append(fields[0])
            values.append([_float_in_unit(text, where, name) for text, name in zip(fields[1:], LABEL_NAMES)])
        if not ids:
            raise UserError(f"{path}: no videos in the submission")
        return ids, np.asarray(values, np.float64)

    # ---- synthetic data



TRACK = EMITrack()
