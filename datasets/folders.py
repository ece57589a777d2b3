"""Folders of unlabelled face images for MAE pretraining: CelebA's ``img_align_celeba/``, the ABAW ``cropped_aligned/``
tree, the LSD image folders, or any nested folder of JPEG/PNG files.

Images are found by one directory listing per folder (``os.scandir``), never one ``stat`` per file, so a million
CelebA or Aff-Wild2 frames are listed in seconds. Several roots are joined; a list file can restrict the set; a fixed
share can be held out for validation by a hash of each image's name, so the split stays the same when images are
added. The augmentation is MAE's: RandomResizedCrop (scale 0.2 to 1, ratio 3/4 to 4/3, bicubic) and a horizontal flip,
drawn per sample from its own generator (with the seed of the sample's patch mask) and applied in the loader workers on
uint8 images, as ``datasets.transforms`` does for the fine-tuning stages. Evaluation batches get MAE's eval view
(shorter side to size / ``EVAL_CROP``, centre crop) on the device (``engine.tasks.pretrain.PretrainTransform``).
"""

from __future__ import annotations

import math
import os
import random
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datasets.images import IMAGE_EXTENSIONS, ImageDecodeError, collate_uint8, decode_image
from datasets.transforms import _new_batch
from utils.errors import UserError

CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
EVAL_CROP = 0.875  # centre crop of the resized image: 224 of 256, as MAE evaluates


@dataclass
class ImageSet:
    """Images of one or more roots: ``roots``, and per image its root's index and its path under that root."""

    roots: list[str]
    root_index: np.ndarray
    names: np.ndarray  # "/"-separated paths relative to their root
    other_files: int = 0  # files without an image extension, skipped

    def __len__(self) -> int:
        return len(self.names)

    def path(self, i: int) -> str:
        return os.path.join(self.roots[self.root_index[i]], self.names[i])

    def subset(self, rows) -> ImageSet:
        rows = np.asarray(rows, dtype=np.int64)
        return ImageSet(self.roots, self.root_index[rows], self.names[rows], self.other_files)

    def describe(self) -> str:
        return f"{len(self)} images under {', '.join(self.roots)}" + (
            f" ({self.other_files} other files skipped)" if self.other_files else "")


def find_images(roots) -> ImageSet:
    """Every image file under each root, at any depth (hidden folders skipped), in sorted order per root.

    A root that is missing, unreadable or holds no image is a one-line :class:`UserError`.
    """
    roots = [roots] if isinstance(roots, str) else list(roots)
    root_index, names, other = [], [], 0
    for index, root in enumerate(roots):
        if not os.path.isdir(root):
            raise UserError(f"image folder not found: {root}")
        found, skipped = _walk(root)
        if not found:
            raise UserError(f"{root} holds no image ({', '.join(IMAGE_EXTENSIONS)} files, at any depth)"
                            + (f"; it has {skipped} other files" if skipped else ""))
        names += found
        root_index += [index] * len(found)
        other += skipped
    return ImageSet(roots, np.array(root_index, dtype=np.int64), np.array(names, dtype=object), other)


def _walk(root: str) -> tuple[list[str], int]:
    """(image paths under ``root``, count of other files). A folder reached twice (a symbolic link back up the tree,
    or to a folder already listed) is listed once."""
    found, skipped = [], 0
    pending = [""]
    listed = {_folder_identity(root)}
    while pending:
        relative = pending.pop()
        folder = os.path.join(root, relative) if relative else root
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as err:
            raise UserError(f"cannot read image folder {folder}: {err.strerror or err}") from None
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            name = f"{relative}/{entry.name}" if relative else entry.name
            try:
                is_dir = entry.is_dir()
                identity = _folder_identity(entry.path) if is_dir else None
            except OSError:  # a link that leads nowhere, or round in a circle
                skipped += 1
                continue
            if is_dir:
                if identity not in listed:
                    listed.add(identity)
                    subfolders.append(name)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(name)
            else:
                skipped += 1
        pending += reversed(subfolders)  # depth first, in name order
    return found, skipped


def _folder_identity(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def read_list_file(path: str) -> list[str]:
    """Image paths of a list file: the first field (comma or white space separated) of each line naming an image
    file; other lines (a header, blank lines) are skipped. CelebA's partition files and the ABAW annotation and test
    list files qualify as they are."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise UserError(f"cannot read --image-list {path}: {err.strerror or err}") from None
    # UTF-8 (with or without a byte-order mark), or UTF-16 with one (as Windows editors save "Unicode" text)
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        lines = data.decode(encoding).splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"--image-list {path} is not a text file (not UTF-8 or UTF-16: {err.reason} at byte "
                        f"{err.start})") from None
    entries = []
    for line in lines:
        field = line.replace(",", " ").split(maxsplit=1)
        if field and field[0].lower().endswith(IMAGE_EXTENSIONS):
            entries.append(field[0].replace("\\", "/").removeprefix("./"))
    if not entries:
        raise UserError(f"--image-list {path} names no image file")
    return entries


def restrict(images: ImageSet, list_path: str, log=print) -> ImageSet:
    """The images a list file names, by their path under their root (or their full path); listed images that are
    not found are counted in one line."""
    listed = read_list_file(list_path)
    wanted = set(listed)
    keep = [i for i in range(len(images)) if images.names[i] in wanted or images.path(i) in wanted]
    if not keep:
        raise UserError(f"none of the {len(listed)} images of --image-list {list_path} is under the image folders "
                        f"(paths are matched relative to each --data-dir, e.g. {images.names[0]})")
    missing = len(wanted) - len(keep)
    if missing > 0:
        log(f"--image-list {list_path}: {missing} of {len(wanted)} listed images were not found and are left out")
    return images.subset(keep)


def held_out(images: ImageSet, fraction: float) -> np.ndarray:
    """Boolean mask of the validation images: those whose name hashes below ``fraction``; at least one image, and
    never every image (one image alone is not held out: it trains)."""
    if fraction <= 0 or len(images) < 2:
        return np.zeros(len(images), dtype=bool)
    codes = np.array([zlib.crc32(str(name).encode()) for name in images.names], dtype=np.int64)
    chosen = codes < fraction * 2 ** 32
    if not chosen.any():
        chosen[np.argmin(codes)] = True
    if chosen.all():
        chosen[np.argmax(codes)] = False
    return chosen


class FaceImages(Dataset):
    """The images of an :class:`ImageSet` as ``(image, index)``. An image that cannot be decoded, or that is smaller
    than ``min_side`` pixels (one patch), comes back as None: the training loop skips and counts it, evaluation
    counts it as skipped."""

    def __init__(self, images: ImageSet, min_side: int = 1):
        self.images, self.min_side = images, min_side

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        try:
            image = decode_image(self.images.path(index))
        except ImageDecodeError:
            return None, index
        if min(image.shape[-2:]) < self.min_side:
            return None, index
        return image, index

    def check(self, index: int) -> str | None:
        """Why the image at ``index`` is unusable, or None."""
        path = self.images.path(index)
        try:
            image = decode_image(path)
        except ImageDecodeError as err:
            return str(err)
        height, width = image.shape[-2:]
        if min(height, width) < self.min_side:
            return f"image {path} is {width}x{height}, smaller than one {self.min_side} px patch"
        return None


@dataclass(frozen=True)
class CropParams:
    """One sample's RandomResizedCrop draw, independent of the image's size: ten (area share, log aspect) attempts
    and the crop's position as shares of the free space; the flip; and the seed of its patch mask."""

    attempts: tuple[tuple[float, float], ...]
    x: float
    y: float
    flip: bool
    mask_seed: int


class PretrainAugment:
    """MAE's pretraining augmentation of decoded uint8 samples to (img_size, img_size), with the loader's collate.

    The crop follows torchvision's ``RandomResizedCrop``: the first of ten attempts whose box fits the image, else
    the whole image cropped to the nearest allowed aspect ratio, centred; resized bicubic with antialiasing.
    """

    def __init__(self, img_size: int, scale=CROP_SCALE, ratio=CROP_RATIO, flip_p: float = 0.5):
        self.img_size, self.scale, self.ratio, self.flip_p = img_size, scale, ratio, flip_p

    def params(self, rng: random.Random) -> CropParams:
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        attempts = tuple((rng.uniform(*self.scale), rng.uniform(log_low, log_high)) for _ in range(10))
        return CropParams(attempts, rng.random(), rng.random(), rng.random() < self.flip_p, rng.getrandbits(62))

    def box(self, height: int, width: int, params: CropParams) -> tuple[int, int, int, int]:
        """(top, left, crop height, crop width) of a sample's draw on an image of this size."""
        area = height * width
        for share, log_ratio in params.attempts:
            aspect = math.exp(log_ratio)
            crop_w = int(round(math.sqrt(share * area * aspect)))
            crop_h = int(round(math.sqrt(share * area / aspect)))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                return (int(params.y * (height - crop_h + 1)) if crop_h < height else 0,
                        int(params.x * (width - crop_w + 1)) if crop_w < width else 0, crop_h, crop_w)
        aspect = width / height
        if aspect < self.ratio[0]:
            crop_w, crop_h = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            crop_h, crop_w = height, int(round(height * self.ratio[1]))
        else:
            crop_w, crop_h = width, height
        return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w

    def batch(self, samples: list) -> torch.Tensor:
        size = self.img_size
        out = _new_batch((len(samples), size, size, 3))
        for (image, params), target in zip(samples, out.unbind(0)):
            top, left, crop_h, crop_w = self.box(image.shape[1], image.shape[2], params)
            crop = image[:, top:top + crop_h, left:left + crop_w]
            if params.flip:
                crop = crop.flip(-1)
            resized = resize_uint8(crop, size, size)
            target.copy_(resized.permute(1, 2, 0))
        return out.permute(0, 3, 1, 2)

    def collate(self, samples: list):
        """``((images, mask seeds (B, 1)), indices, dropped)``: each sample's mask comes from its own seed, so a
        sample is masked the same way in any batch, on any number of processes, and after a resume."""
        images, *fields, dropped = collate_uint8(samples, stack_images=self.batch)
        if images is None:
            return (None, *fields, dropped)
        seeds = [image[1].mask_seed for image, *_ in samples if image is not None]
        return ((images, torch.tensor(seeds, dtype=torch.int64)[:, None]), *fields, dropped)


def resize_uint8(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic antialiased resize of a (3, H, W) uint8 image (PyTorch's uint8 kernel, PIL's rounding)."""
    if image.shape[-2:] == (height, width):
        return image
    batch = image[None].contiguous(memory_format=torch.channels_last)
    return F.interpolate(batch, size=(height, width), mode="bicubic", antialias=True, align_corners=False)[0]
