"""What every track module provides, and the pieces several of them share.

A track is one challenge's data set as released: where its files are and how to read them with their quirks, its
label schema and missing codes, its metric, its submission writer (which re-reads and checks the file before it
reports success) and the name of its synthetic version's generator. Each is one module of :mod:`datasets.tracks`
exposing an instance of a :class:`Track` class; the stages ask the track and never branch on its name.

Tracks of whole videos (EMI; A/H per video and per frame) describe each video as a :class:`VideoItem`: its face
frames, its sound, the organisers' pre-extracted features and its transcript where given, and its label. The
video-level stage (``main_video.py``) turns those streams into one prediction per video, or per frame.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

from utils.errors import UserError


@dataclass
class VideoItem:
    """One video of a track's split.

    ``frames`` are face-crop images relative to ``frames_root`` in time order (may be empty: no face found);
    ``frame_numbers`` their 1-based frame numbers in the video (decode order), for frame-level tracks and the
    frames' times. ``audio`` is a sound file (WAV, MP3, or a video with a sound stream) or None; ``features`` the
    organisers' pre-extracted sequences by name (a ``.pkl`` or ``.npy`` file each, one (T, D) array);
    ``transcript`` the spoken words as ``(start_s, end_s, text)`` chunks (times may be None) or None.
    ``label`` is the video's label vector (float32) or None (test); ``frame_labels`` one label per frame for
    frame-level tracks (the track's missing code where a frame has none), and ``frame_ids`` the names its submission
    gives those frames, in the reference order."""

    id: str
    frames: list[str] = field(default_factory=list)
    frames_root: str = ""
    frame_numbers: np.ndarray | None = None
    audio: str | None = None
    features: dict[str, str] = field(default_factory=dict)
    transcript: list[tuple[float | None, float | None, str]] | None = None
    label: np.ndarray | None = None
    frame_labels: np.ndarray | None = None
    frame_ids: list[str] | None = None


@dataclass
class VideoSplit:
    """A split of a video-level track: its videos in the reference order (the order submissions keep), and the file
    that listed them (for messages)."""

    items: list[VideoItem]
    source: str

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    def labels(self) -> np.ndarray | None:
        """(videos, label width) float32, or None when any video is unlabelled."""
        if not self.items or any(item.label is None for item in self.items):
            return None
        return np.stack([np.asarray(item.label, np.float32) for item in self.items])


class Track(Protocol):
    """A track's facts. Frame and image tracks (MTL, VA, EXPR, AU, LSD, CE) keep their readers in ``datasets``
    (``datasets.mtl``, ``datasets.lsd``, ``datasets.tracks.affwild2``) and name them here; video tracks implement
    :meth:`read_split` on :class:`VideoItem`."""

    name: ClassVar[str]  # "emi", "ah", ...: the value of --track
    title: ClassVar[str]  # "Emotional Mimicry Intensity (Hume-Vidmimic2)"
    level: ClassVar[str]  # "video" (one prediction per video), "frame" or "image"
    label_names: ClassVar[tuple[str, ...]]  # one per output column (classes, or regression targets)
    kind: ClassVar[str]  # "regression" (values in [0, 1]), "binary", "multiclass", "mtl"
    main_metric: ClassVar[str]  # the key of :meth:`metrics` that ranks entries
    # The generator of its synthetic version, in the released layout: datasets.synthetic.generate(<synthetic>, OUT_DIR)
    # and python -m datasets.synthetic <synthetic> OUT_DIR (named, not imported: the generator reads the track's facts)
    synthetic: ClassVar[str]
    submission_file: ClassVar[str]  # the name of the submission file a stage writes in its output folder

    def metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict:
        """The challenge's scores of ``predictions`` (see each track) against ``labels``."""

    def write_submission(self, path: str, ids, predictions: np.ndarray) -> None:
        """Write the submission file of ``ids`` (the reference order) and re-read it, raising :class:`UserError`
        if what was read back differs from what was meant."""

    # Optional: ``tune(predictions, labels) -> dict``, decision settings chosen on validation (A/H: the threshold on
    # p1) that ``metrics`` and ``write_submission`` take as keyword arguments; a track without it decides nothing.


class VideoTrack(Track, Protocol):
    def find(self, data_dir: str, split: str) -> bool:
        """Whether ``data_dir`` holds ``split`` (train, val, test)."""

    def read_split(self, data_dir: str, split: str) -> VideoSplit:
        """The split's videos, each with its streams and label; :class:`UserError` naming file, line and reason."""


# ---- shared writers and readers

def write_lines(path: str, lines: list[str]) -> None:
    """A text file of ``lines`` written whole or not at all; a folder that cannot be written is a UserError."""
    from utils.atomic import write_text_atomic

    try:
        write_text_atomic(path, "\n".join(lines) + "\n")
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None


def read_rows(path: str, header: str, images) -> list[str]:
    """The lines of a written prediction file, after checking its header and that it has a row per listed image."""
    with open(path) as handle:
        rows = handle.read().splitlines()
    if not rows or rows[0] != header:
        raise RuntimeError(f"{path}: wrong header {rows[:1]}")
    if len(rows) - 1 != len(images):
        raise RuntimeError(f"{path}: {len(rows) - 1} rows for {len(images)} listed images")
    return rows


class _NumpyOnly(pickle.Unpickler):
    """An unpickler that admits numpy arrays and nothing else that could run code."""

    ALLOWED: ClassVar[set] = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                              ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                              ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
                              ("numpy._core.numeric", "_frombuffer"), ("builtins", "list"), ("builtins", "dict"),
                              ("builtins", "tuple"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} (only numpy arrays are admitted)")
        return super().find_class(module, name)


def read_feature_sequence(path: str) -> np.ndarray:
    """One (T, D) float32 array from an organisers' ``.pkl`` (a pickled numpy array, or a dict or list holding
    exactly one) or a ``.npy`` file, read without unpickling anything but numpy arrays."""
    try:
        if path.endswith(".npy"):
            value = np.load(path, allow_pickle=False)
        else:
            with open(path, "rb") as handle:
                value = _NumpyOnly(handle).load()
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError) as error:
        raise UserError(f"{path}: unreadable feature file ({error})") from None
    if isinstance(value, dict):
        arrays = [item for item in value.values() if isinstance(item, np.ndarray)]
        value = arrays[0] if len(arrays) == 1 else value
    elif isinstance(value, (list, tuple)) and len(value) and all(isinstance(item, np.ndarray) for item in value):
        value = np.stack(value) if len(value) > 1 and len({item.shape for item in value}) == 1 else value[0]
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu" or value.ndim not in (1, 2):
        raise UserError(f"{path}: expected one numeric array (frames x features), got {type(value).__name__}")
    array = value.astype(np.float32).reshape(len(value), -1) if value.ndim == 2 else value.astype(np.float32)[None]
    if not np.isfinite(array).all():
        raise UserError(f"{path}: holds NaN or infinite values")
    return array


def numeric_sorted(names) -> list[str]:
    """File names in the order of the number in them (``2.jpg`` before ``10.jpg``), then by name."""
    def key(name: str):
        digits = "".join(ch for ch in os.path.splitext(os.path.basename(name))[0] if ch.isdigit())
        return (int(digits) if digits else -1, name)
    return sorted(names, key=key)
