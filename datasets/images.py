"""Image decoding and batching shared by both tracks.

Images are decoded straight to uint8 (OpenCV) and stay uint8 through the loader: training batches come augmented to
the model's size by the loader workers, evaluation batches as decoded, and ``datasets.transforms`` normalises (and for
evaluation resizes) whole batches on the device. A training sample whose file cannot be decoded comes back as
``None`` and is dropped by :func:`collate_uint8`, which counts it; evaluation raises instead, because a submission
must not silently lose rows.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from utils.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# OpenCV 4.10 and later decode straight to RGB; older versions decode BGR, converted after.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


class ImageDecodeError(UserError):
    """An image file that is empty, truncated or not an image."""


def decode_image(path: str) -> torch.Tensor:
    """Read an image file as a (3, H, W) uint8 RGB tensor; raise :class:`ImageDecodeError` naming the file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise ImageDecodeError(f"cannot read image {path}: {err.strerror or err}") from None
    if not data:
        raise ImageDecodeError(f"image {path} is empty (0 bytes)")
    # libjpeg fills a truncated JPEG with grey and only warns; the end-of-image marker tells the file is complete.
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]:
        raise ImageDecodeError(f"image {path} is a truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _IMREAD_RGB or cv2.IMREAD_COLOR)
    if image is None:
        raise ImageDecodeError(f"image {path} could not be decoded (not an image?)")
    if _IMREAD_RGB is None:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return torch.from_numpy(image).permute(2, 0, 1)


def list_image_folder(folder: str) -> list[str]:
    """Sorted names of the image files directly inside ``folder`` (one directory listing)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file())


def collate_uint8(batch, stack_images=None):
    """Stack samples ``(image, *fields)``; drop samples whose image is ``None`` (undecodable, training only).

    Returns ``(images uint8 (B,3,H,W) channels-last, *stacked fields, dropped)`` where ``dropped`` lists the last field
    (the row index) of each dropped sample. ``stack_images`` makes the image batch of the kept samples' first fields
    (the training loader's augmentation); by default, images of another size than the batch's first are resized to it
    (the released frames share one size, but nothing guarantees it) and stacked. A batch with no decodable image gives
    ``(None, dropped)``.
    """
    kept = [sample for sample in batch if sample[0] is not None]
    dropped = [int(sample[-1]) for sample in batch if sample[0] is None]
    if not kept:
        return None, dropped
    images = (stack_images or _stack_uint8)([sample[0] for sample in kept])
    fields = [torch.stack([torch.as_tensor(sample[i]) for sample in kept]) for i in range(1, len(kept[0]))]
    return (images, *fields, dropped)


def _stack_uint8(images: list[torch.Tensor]) -> torch.Tensor:
    height, width = images[0].shape[-2:]
    same_size = []
    for image in images:
        if image.shape[-2:] != (height, width):
            image = F.interpolate(image[None].float(), size=(height, width), mode="bilinear", antialias=True,
                                  align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        same_size.append(image)
    # Stacked as decoded, height-width-channel, so the batch is (B,3,H,W) in channels-last layout (the models compute
    # the same in either); default_collate writes it straight into shared memory in a worker.
    return default_collate([image.permute(1, 2, 0) for image in same_size]).permute(0, 3, 1, 2)


def read_image_list(path: str, what: str = "test list") -> np.ndarray:
    """Image paths of a list file: a header, then one path per line (fields after the first comma are ignored)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            rows = handle.read().splitlines()[1:]
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    images = [row.split(",", 1)[0].strip() for row in rows]
    images = [image for image in images if image]
    if not images:
        raise UserError(f"{what} {path} names no image")
    return np.array(images, dtype=object)


class ImageListDataset(Dataset):
    """Images given by paths relative to a root, returned as ``(image, index)``; used for test lists.

    Evaluation data: an undecodable image is an error naming the file, unless ``skip_bad`` (``--allow-missing``).
    """

    def __init__(self, root: str, images, skip_bad: bool = False):
        self.root = root
        self.images = list(images)
        self.decode = TolerantDecoder(skip_bad)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.decode(os.path.join(self.root, self.images[index])), index


class TolerantDecoder:
    """Decode training images, turning undecodable files into ``None`` so that the batch goes on without them."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad

    def __call__(self, path: str):
        if not self.skip_bad:
            return decode_image(path)
        try:
            return decode_image(path)
        except ImageDecodeError:
            return None
