"""The LSD track's files: class folders of synthetic training images and real validation images, and the test list.

Layout (ABAW4.md)::

    training_set_synthetic_images/<CLASS>/<name>.jpg
    validation_set_real_images/<CLASS>/<name>.jpg
    LSD_Challenge_test_set_release.txt      header ``image,expression`` then ``0.jpg``, ``1.jpg``, ...
    <test image folder>/<name>.jpg           folder name given by a flag
    test_set_annotations.txt                 test labels (only the synthetic generator writes it)

Class folders map to indices by name, case-insensitively, in the fixed order below; the anger folder has been released
as ``ANGER``, ``ANGRER`` and ``ANGERE``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.images import TolerantDecoder, list_image_folder, read_image_list
from utils.abaw import LSD_CLASSES
from utils.errors import UserError

CLASSES = [name.upper() for name in LSD_CLASSES]  # the class folders' names
NUM_CLASSES = len(CLASSES)
_ALIASES = {"ANGRER": 0, "ANGERE": 0}

TRAIN_DIR = "training_set_synthetic_images"
VAL_DIR = "validation_set_real_images"
TEST_DIR = "test_set_real_images"
TEST_LIST_FILE = "LSD_Challenge_test_set_release.txt"
TEST_LABEL_FILE = "test_set_annotations.txt"
SUBMISSION_HEADER = "image,expression"


def class_index(folder: str) -> int:
    """Index of a class folder name (case-insensitive, anger aliases accepted); :class:`UserError` if unknown."""
    name = folder.strip().upper()
    if name in CLASSES:
        return CLASSES.index(name)
    if name in _ALIASES:
        return _ALIASES[name]
    raise UserError(f"unknown LSD class folder {folder!r}; expected one of {', '.join(CLASSES)} "
                    f"(anger may be spelled ANGRER or ANGERE)")


class ClassFolders:
    """Images of a split as relative paths ``<CLASS folder>/<file>`` and their class indices. A track with other
    classes subclasses it with its own ``class_index``, class names and wording (``datasets.tracks.ce``)."""

    classes = CLASSES
    what = "LSD split"  # in messages
    missing_hint = "check --data-dir and the split folder flags"

    @staticmethod
    def class_index(folder: str) -> int:
        return class_index(folder)

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise UserError(f"{self.what} folder not found: {root}; {self.missing_hint}")
        self.root = root
        images, labels = [], []
        with os.scandir(root) as entries:
            folders = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        seen = {}
        for folder in folders:
            index = self.class_index(folder)
            if index in seen:
                raise UserError(f"{root}: folders {seen[index]!r} and {folder!r} both name class "
                                f"{self.classes[index]}")
            seen[index] = folder
            names = list_image_folder(os.path.join(root, folder))
            images += [f"{folder}/{name}" for name in names]
            labels += [index] * len(names)
        if not images:
            raise UserError(f"{self.what} {root} holds no image (expected <class folder>/<name>.jpg)")
        self.images = np.array(images, dtype=object)
        self.labels = np.array(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def class_counts(self) -> np.ndarray:
        """Images per class, in class-index order (for balanced sampling or loss weights)."""
        return np.bincount(self.labels, minlength=len(self.classes))


class LSDDataset(Dataset):
    """``(image uint8 (3,H,W), class index, row index)`` for a class-folder split."""

    def __init__(self, folders: ClassFolders, skip_bad: bool = False):
        self.root = folders.root
        self.images = folders.images
        self.labels = torch.from_numpy(folders.labels)
        self.decode = TolerantDecoder(skip_bad)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.decode(os.path.join(self.root, self.images[index])), self.labels[index], index


def read_test_list(path: str) -> np.ndarray:
    """Image paths of the LSD test list, in list order."""
    return read_image_list(path, "LSD test list")


def read_test_labels(path: str) -> dict[str, int]:
    """``name -> class index`` from a labelled list (``image,expression`` rows)."""
    labels = {}
    with open(path, encoding="utf-8-sig") as handle:
        for line_number, row in enumerate(handle.read().splitlines()[1:], start=2):
            if not row.strip():
                continue
            fields = [field.strip() for field in row.split(",")]
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit() or not 0 <= int(fields[1]) < NUM_CLASSES:
                raise UserError(f"{path}, line {line_number}: expected '<name>,<class 0..5>', got {row!r}")
            labels[fields[0]] = int(fields[1])
    return labels
