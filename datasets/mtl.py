"""The MTL track's files (s-Aff-Wild2 static frames), read exactly as released.

Layout of a data directory (ABAW4.md)::

    cropped_aligned/<video>/<frame>.jpg
    training_set_annotations.txt
    validation_set_annotations.txt
    MTL_Challenge_test_set_release.txt          test list, no labels
    test_set_annotations.txt                    test labels (only the synthetic generator writes it)

Annotation rows are ``image,valence,arousal,expression,AU1,...,AU26`` (16 fields, read by position: the header text is
not guaranteed). Missing labels are coded -5 (VA) and -1 (expression, AU) and are kept as such in the targets.
"""

from __future__ import annotations

import io
import os
import re
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from datasets.images import TolerantDecoder, list_image_folder, read_image_list
from utils.abaw import (
    AU_MISSING,
    AU_NAMES,
    EXPR_MISSING,
    LABEL_AU,
    LABEL_COLUMNS,
    LABEL_EXPR,
    LABEL_VA,
    NUM_EXPR,
    VA_MISSING,
)
from utils.errors import UserError

IMAGE_DIR = "cropped_aligned"
TRAIN_FILE = "training_set_annotations.txt"
VAL_FILE = "validation_set_annotations.txt"
TEST_LIST_FILE = "MTL_Challenge_test_set_release.txt"
TEST_LABEL_FILE = "test_set_annotations.txt"

FIELD_NAMES = ("image", "valence", "arousal", "expression", *AU_NAMES)
NUM_FIELDS = len(FIELD_NAMES)  # image + the label columns
SUBMISSION_HEADER = "image,valence,arousal,expression,aus"


@dataclass
class Annotations:
    """Parsed annotation file: relative image paths, (N, 15) float32 targets and the file's line numbers."""

    images: np.ndarray
    targets: np.ndarray
    lines: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, keep: np.ndarray) -> Annotations:
        return Annotations(self.images[keep], self.targets[keep], self.lines[keep], self.source)


def _bad_row(path: str, line: int, reason: str) -> UserError:
    return UserError(f"{path}, line {line}: {reason}; fix or remove that row")


def _read_raw_rows(path: str, max_fields: int) -> pd.DataFrame:
    """Read every data row as strings, one column per comma-separated field, blank lines kept (line numbers)."""
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"annotation file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    try:
        return pd.read_csv(io.StringIO(text), header=None, skiprows=1, dtype=str, names=range(max_fields),
                           skip_blank_lines=False, keep_default_na=False, na_filter=False, engine="c")
    except pd.errors.ParserError as err:
        # The C parser stops at the first row with too many fields: "Expected N fields in line L, saw M".
        found = re.search(r"line (\d+), saw (\d+)", str(err))
        if found:
            raise _bad_row(path, int(found.group(1)), f"{found.group(2)} fields instead of {NUM_FIELDS}") from None
        raise UserError(f"{path}: cannot parse ({str(err).strip()})") from None
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=range(max_fields), dtype=str)


def read_annotations(path: str) -> Annotations:
    """Parse and validate an MTL annotation file.

    A bad row raises :class:`UserError` naming the file, the line number and the reason. Windows line endings, a UTF-8
    byte-order mark, spaces around fields and blank lines are accepted.
    """
    # One spare column catches a trailing comma (an empty 17th field), which is harmless.
    raw = _read_raw_rows(path, NUM_FIELDS + 1)
    line_numbers = np.arange(len(raw)) + 2  # the header is line 1
    raw = raw.apply(lambda column: column.str.strip())
    blank = (raw == "").all(axis=1).to_numpy()
    raw, line_numbers = raw[~blank], line_numbers[~blank]

    extra = (raw[NUM_FIELDS] != "").to_numpy()
    if extra.any():
        line = int(line_numbers[np.argmax(extra)])
        raise _bad_row(path, line, f"more than {NUM_FIELDS} fields")
    empty = (raw.iloc[:, :NUM_FIELDS] == "").to_numpy()
    if empty.any():
        row, col = np.argwhere(empty)[0]
        present = NUM_FIELDS - int(empty[row].sum())
        reason = (f"{present} fields instead of {NUM_FIELDS}" if empty[row, present:].all()
                  else f"field {col + 1} ({FIELD_NAMES[col]}) is empty")
        raise _bad_row(path, int(line_numbers[row]), reason)

    values = np.empty((len(raw), LABEL_COLUMNS), dtype=np.float64)
    for col in range(1, NUM_FIELDS):
        numbers = pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numbers)
        if bad.any():
            row = int(np.argmax(bad))
            raise _bad_row(path, int(line_numbers[row]),
                           f"field {col + 1} ({FIELD_NAMES[col]}) is {raw[col].iloc[row]!r}, not a number")
        values[:, col - 1] = numbers

    va = values[:, LABEL_VA]
    bad_va = ~(((va >= -1.0) & (va <= 1.0)) | (va == VA_MISSING))
    if bad_va.any():
        row, col = np.argwhere(bad_va)[0]
        raise _bad_row(path, int(line_numbers[row]),
                       f"{FIELD_NAMES[col + 1]} {va[row, col]:g} is outside [-1, 1] and not the missing code -5")
    expr = values[:, LABEL_EXPR]
    bad_expr = ~(np.isin(expr, np.arange(NUM_EXPR)) | (expr == EXPR_MISSING))
    if bad_expr.any():
        row = int(np.argmax(bad_expr))
        raise _bad_row(path, int(line_numbers[row]),
                       f"expression {raw[3].iloc[row]!r} is not an integer in 0..7 or the missing code -1")
    aus = values[:, LABEL_AU]
    bad_au = ~np.isin(aus, (0, 1, AU_MISSING))
    if bad_au.any():
        row, col = np.argwhere(bad_au)[0]
        raise _bad_row(path, int(line_numbers[row]),
                       f"{FIELD_NAMES[col + 4]} is {raw[col + 4].iloc[row]!r}, not 0, 1 or the missing code -1")

    images = raw[0].to_numpy(dtype=object)
    return Annotations(images=images, targets=values.astype(np.float32), lines=line_numbers, source=path)


def read_test_list(path: str) -> np.ndarray:
    """Image paths of the MTL test list, in list order."""
    return read_image_list(path, "MTL test list")


def list_available(image_root: str, images) -> np.ndarray:
    """Boolean mask of the images present on disk, listing each video folder once (not one ``stat`` per row)."""
    folders: dict[str, set] = {}
    present = np.zeros(len(images), dtype=bool)
    for i, image in enumerate(images):
        folder, _, name = image.rpartition("/")
        if folder not in folders:
            full = os.path.join(image_root, folder)
            folders[folder] = set(list_image_folder(full)) if os.path.isdir(full) else set()
        present[i] = name in folders[folder]
    return present


def summarise_missing(what: str, missing, log=print, shown: int = 5) -> None:
    """One summary line for images listed but absent on disk."""
    missing = list(missing)
    if missing:
        examples = ", ".join(missing[:shown]) + (", ..." if len(missing) > shown else "")
        log(f"{what}: {len(missing)} listed frames have no image and are left out ({examples})")


def load_split(data_dir: str, annotation_file: str, log=print) -> Annotations:
    """Read an annotation file of ``data_dir`` and leave out the frames whose image is absent (one summary line)."""
    path = annotation_file if os.path.isabs(annotation_file) else os.path.join(data_dir, annotation_file)
    annotations = read_annotations(path)
    present = list_available(os.path.join(data_dir, IMAGE_DIR), annotations.images)
    summarise_missing(os.path.basename(path), annotations.images[~present], log=log)
    annotations = annotations.subset(present)
    if len(annotations) == 0:
        raise UserError(f"{path}: no annotated frame has an image under {os.path.join(data_dir, IMAGE_DIR)}; "
                        f"check --data-dir")
    return annotations


def nearest_frames(image_root: str, images, missing: np.ndarray) -> dict[str, str]:
    """For each missing image, the available frame of the same video whose frame number is closest."""
    replacement = {}
    listing: dict[str, list] = {}
    for image in np.asarray(images, dtype=object)[missing]:
        folder, _, name = image.rpartition("/")
        if folder not in listing:
            full = os.path.join(image_root, folder)
            listing[folder] = list_image_folder(full) if os.path.isdir(full) else []
        candidates = listing[folder]
        if not candidates:
            raise UserError(f"{image} is missing and its video folder has no frame to stand in for it")
        number = _frame_number(name)
        best = min(candidates, key=lambda other: (abs(_frame_number(other) - number), other))
        replacement[image] = f"{folder}/{best}" if folder else best
    return replacement


def _frame_number(name: str) -> int:
    digits = "".join(ch for ch in os.path.splitext(name)[0] if ch.isdigit())
    return int(digits) if digits else 0


def video_and_frame(images) -> tuple[np.ndarray, np.ndarray]:
    """Video name and frame number of each relative image path (for temporal smoothing)."""
    videos = np.array([image.rpartition("/")[0] for image in images], dtype=object)
    frames = np.array([_frame_number(image.rpartition("/")[2]) for image in images], dtype=np.int64)
    return videos, frames


def video_folds(images, folds: int) -> np.ndarray:
    """The fold (0 .. folds-1) of each frame's video: a CRC-32 of the video name, so a video's frames share a fold and
    the assignment does not change when videos are added."""
    videos, _ = video_and_frame(images)
    names, codes = np.unique(videos.astype(str), return_inverse=True)
    per_video = np.array([zlib.crc32(name.encode()) % folds for name in names], dtype=np.int64)
    return per_video[codes] if len(names) else np.zeros(0, np.int64)


class MTLDataset(Dataset):
    """Annotated frames: ``(image uint8 (3,H,W), target float32 (15,), row index)``.

    With ``skip_bad`` (training), an undecodable image yields ``None`` for the image, which ``collate_uint8`` drops
    and counts; otherwise it is an error naming the file.
    """

    def __init__(self, image_root: str, annotations: Annotations, skip_bad: bool = False):
        self.image_root = image_root
        self.images = annotations.images
        self.targets = torch.from_numpy(np.ascontiguousarray(annotations.targets))
        self.decode = TolerantDecoder(skip_bad)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.decode(os.path.join(self.image_root, self.images[index]))
        return image, self.targets[index], index
