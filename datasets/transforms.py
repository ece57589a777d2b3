"""The reference's image transforms: per-sample training augmentation in the loader workers, batch normalisation
on the device.

The reference applied per-image torchvision transforms to PIL images in its loader workers:

- MTL train: resize to 1.04x, ColorJitter(0.4, 0.4, 0.4, 0.1) with probability 0.2, random crop, horizontal flip p 0.5,
  ImageNet normalisation; eval: resize, normalisation.
- LSD train: resize to 1.02x, random crop, flip; eval: resize, normalisation.

Here the loader workers do the training steps up to the crop and flip, as the reference's did, but per batch:
:class:`AugmentedDataset` draws each sample's parameters, :meth:`TrainAugment.collate` resizes the batch in one call,
jitters the chosen samples and writes each crop into the shared-memory batch that goes to the main process as uint8
crops of the model's size. :class:`BatchTransform` on the device turns those into the normalised float batch.
Evaluation batches are resized and normalised on the device. On two CPU cores this split is what keeps up: the
workers' share (decode, resize, jitter, crop) runs on both cores, and the main process only normalises.

Each sample's random parameters (jitter coin, factors and op order, crop position, flip) come from its own generator,
seeded by (run seed, epoch, sample index). A sample is augmented the same way whichever worker loads it, however many
workers there are, and after a resume from a mid-epoch checkpoint, without any random state passing between
processes.

The steps stay uint8, as the reference's PIL images were: the resize is PyTorch's SIMD uint8 kernel in channels-last
layout, rounded as PIL's resize is; the jitter ops are OpenCV lookup tables and blends that truncate to uint8 as PIL's
blend does (brightness and contrast bit-exact with PIL, saturation within one level), and a uint8 HSV hue rotation.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler, get_worker_info

from datasets.images import collate_uint8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear antialiased resize of a (B,3,H,W) batch to (size, size).

    Float batches match torchvision's tensor ``Resize``; uint8 batches (CPU) go through PyTorch's SIMD uint8 kernel in
    channels-last layout and come back uint8, rounded as PIL's resize rounds.
    """
    if images.shape[-2:] == (size, size):
        return images
    if images.dtype == torch.uint8:
        images = images.contiguous(memory_format=torch.channels_last)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean, std = _mean_std(images.device, images.dtype)
    return (images - mean) / std


# Constants made once per device: a new one each batch would be a blocking host-to-device copy each step on a GPU.
@functools.cache
def _mean_std(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(IMAGENET_MEAN, dtype=dtype, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, dtype=dtype, device=device).view(1, 3, 1, 1))


def _blend_table(degenerate: float, factor: float) -> np.ndarray:
    """PIL's ``Image.blend(degenerate, image, factor)`` of a uint8 image with a constant, as a lookup table:
    ``degenerate + factor * (x - degenerate)`` in float32, clipped to 0..255 and truncated to uint8."""
    x = np.arange(256, dtype=np.float32)
    blended = np.float32(degenerate) + np.float32(factor) * (x - np.float32(degenerate))
    return np.clip(blended, 0, 255).astype(np.uint8)


def _grey(image: np.ndarray) -> np.ndarray:
    """RGB to grey, ITU-R 601 luma as PIL's "L" (OpenCV's fixed-point rounding, at most one level from PIL's)."""
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _jitter_uint8(image: np.ndarray, factors, order) -> np.ndarray:
    """ColorJitter of one (H, W, 3) uint8 RGB image as the reference's PIL images went through it: brightness,
    contrast, saturation and hue ``factors`` applied in ``order`` (0..3), each a uint8 image again.

    Brightness and contrast blend with a constant (black, the mean grey level) through a lookup table, saturation
    blends with the image's own grey, each truncated to uint8 as PIL's blend; hue is rotated in uint8 HSV with 256
    steps per turn (PIL's HSV has 255).
    """
    for op in order:
        factor = factors[op]
        if op == 0:
            image = cv2.LUT(image, _blend_table(0, factor))
        elif op == 1:
            image = cv2.LUT(image, _blend_table(int(_grey(image).mean() + 0.5), factor))
        elif op == 2:
            grey = cv2.cvtColor(_grey(image), cv2.COLOR_GRAY2RGB)
            # OpenCV rounds to nearest; the offset makes that PIL's truncation (off only within 1e-4 of an integer)
            image = cv2.addWeighted(image, factor, grey, 1 - factor, -0.5 + 1e-4)
        else:
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)
            hsv[..., 0] += np.uint8(int(factor * 256) % 256)  # wraps around the circle, as uint8 arithmetic does
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    return image


@functools.cache
def _normalisation_rows(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet normalisation of 0..255 values as (scale, shift) rows for an image row of ``size`` RGB pixels."""
    std = torch.tensor(IMAGENET_STD)
    return (1 / (255 * std)).repeat(size).to(device), (-torch.tensor(IMAGENET_MEAN) / std).repeat(size).to(device)


def _normalise_uint8(images: torch.Tensor) -> torch.Tensor:
    """Normalised channels-last float (B,3,H,W) batch from a uint8 one.

    On a CPU one sample at a time, in height-width-channel order: the float copy of a sample is still in cache for the
    multiply-add, which runs along whole contiguous image rows. Elsewhere one batched multiply-add.
    """
    batch, _, height, width = images.shape
    pixels = images.permute(0, 2, 3, 1).contiguous()  # a no-op for the loader's channels-last batches
    scale, shift = _normalisation_rows(width, images.device)
    if images.device.type != "cpu":
        out = pixels.view(batch, height, width * 3).float().mul_(scale).add_(shift)
        return out.view(batch, height, width, 3).permute(0, 3, 1, 2)
    out = torch.empty((batch, height, width * 3))
    for source, rows in zip(pixels.view(batch, height, width * 3).unbind(0), out.unbind(0)):
        rows.copy_(source)
        torch.addcmul(shift, rows, scale, out=rows)
    return out.view(batch, height, width, 3).permute(0, 3, 1, 2)


class BatchTransform:
    """Callable turning a uint8 (B,3,H,W) batch on the device into the normalised float batch the model gets.

    Batches already of the model's size (training batches, augmented by the loader) are only normalised, into
    channels-last layout. Others (evaluation frames) are resized in float, exactly as torchvision's tensor ``Resize``,
    in contiguous layout, where the float resize is twice as fast as on channels-last input. ``channels_last`` True or
    False forces a layout; the models compute the same in either.
    """

    def __init__(self, img_size: int = 224, channels_last: bool | None = None):
        self.img_size = img_size
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 batch, got {images.dtype}")
        if images.shape[-2:] == (self.img_size, self.img_size):
            x = _normalise_uint8(images)
            return x if self.channels_last is not False else x.contiguous()
        x = images.to(torch.float32, memory_format=torch.contiguous_format).div_(255)
        x = normalise(resize(x, self.img_size))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __repr__(self) -> str:
        return f"BatchTransform(img_size={self.img_size})"


@dataclass(frozen=True)
class SampleParams:
    """One sample's draw: jitter factors (brightness, contrast, saturation, hue) and op order, or None when the
    sample is not jittered; crop corner; flip."""

    jitter: tuple[tuple[float, ...], tuple[int, ...]] | None
    top: int
    left: int
    flip: bool


class TrainAugment:
    """The training augmentation of decoded uint8 samples: resize to ``resize_ratio`` times the model's size,
    ColorJitter with probability ``jitter_p``, a random (img_size, img_size) crop, a horizontal flip with probability
    ``flip_p``; each sample with its own :class:`SampleParams`.

    :meth:`batch` makes the uint8 (B,3,img_size,img_size) channels-last batch of a list of ``(image, params)``; it is
    the loader's image-stacking step (:meth:`collate`), so in a loader worker the crops are written straight into the
    shared memory that carries the batch to the main process.
    """

    def __init__(self, img_size: int = 224, resize_ratio: float = 1.0, jitter=None, jitter_p: float = 0.0,
                 flip_p: float = 0.0):
        self.img_size = img_size
        # The reference wrote the enlarged size as int(224 * ratio); round() keeps 1.04 -> 233 as ABAW4.md states.
        self.resize_to = int(round(img_size * resize_ratio))
        self.jitter = jitter if jitter is not None and jitter_p > 0 else None
        self.jitter_p = jitter_p
        self.flip_p = flip_p

    def params(self, rng: random.Random) -> SampleParams:
        """Draw a sample's parameters in the order the reference's transforms draw them: jitter coin, factors and
        op order (ColorJitter.get_params), crop corner (RandomCrop), flip coin."""
        jitter = None
        if self.jitter is not None and rng.random() < self.jitter_p:
            brightness, contrast, saturation, hue = self.jitter
            factors = tuple(rng.uniform(max(0.0, 1 - amount), 1 + amount)
                            for amount in (brightness, contrast, saturation)) + (rng.uniform(-hue, hue),)
            jitter = (factors, tuple(rng.sample(range(4), 4)))
        span = self.resize_to - self.img_size
        top, left = rng.randint(0, span), rng.randint(0, span)
        return SampleParams(jitter, top, left, self.flip_p > 0 and rng.random() < self.flip_p)

    def batch(self, samples: list) -> torch.Tensor:
        """The augmented uint8 batch of ``(image, params)`` pairs, images (3,H,W) uint8 as decoded."""
        images = [image for image, _ in samples]
        if any(image.dtype != torch.uint8 for image in images):
            raise TypeError("expected uint8 images")
        size = self.img_size
        out = _new_batch((len(images), size, size, 3))
        for pixels, (_, params), target in zip(self._resized(images), samples, out.unbind(0)):
            if params.jitter is not None:
                pixels = torch.from_numpy(_jitter_uint8(pixels.numpy(), *params.jitter))
            window = pixels[params.top:params.top + size, params.left:params.left + size]
            target.copy_(window.flip(1) if params.flip else window)
        return out.permute(0, 3, 1, 2)

    def collate(self, samples: list):
        """The training loader's collate function (samples of :class:`AugmentedDataset`)."""
        return collate_uint8(samples, stack_images=self.batch)

    def _resized(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """The images resized to (resize_to, resize_to), each as a height-width-channel uint8 tensor: one batched
        resize in channels-last layout when the frames share a size (the released ones do), else one each."""
        if len({image.shape for image in images}) == 1:
            stacked = torch.stack([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)
            return list(resize(stacked, self.resize_to).permute(0, 2, 3, 1).unbind(0))
        return [resize(image.permute(1, 2, 0)[None].permute(0, 3, 1, 2), self.resize_to)[0].permute(1, 2, 0)
                for image in images]

    def __repr__(self) -> str:
        return (f"TrainAugment(img_size={self.img_size}, resize_to={self.resize_to}, jitter={self.jitter}, "
                f"jitter_p={self.jitter_p}, flip_p={self.flip_p})")


def _new_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised contiguous uint8 tensor; in a loader worker, in shared memory, where the batch goes to the
    main process without another copy (as ``default_collate`` allocates its batches)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The generator of one sample's augmentation in one epoch (string seeds hash the same in every process)."""
    return random.Random(f"{seed}:{epoch}:{index}")


class AugmentedDataset(Dataset):
    """A training set with augmentation parameters: indexed by ``(epoch, index)`` keys (:class:`EpochKeys` yields
    them), it returns the wrapped set's sample ``(image, *fields)`` with ``image`` replaced by ``(image, params)``,
    the parameters drawn from :func:`sample_rng`; :meth:`TrainAugment.collate` applies them. Undecodable images (None)
    pass through for the collate function to drop."""

    def __init__(self, dataset, augment: TrainAugment, seed: int):
        self.dataset, self.augment, self.seed = dataset, augment, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        image, *fields = self.dataset[index]
        if image is not None:
            image = (image, self.augment.params(sample_rng(self.seed, epoch, index)))
        return (image, *fields)


class EpochKeys(Sampler):
    """Wrap an index sampler to yield ``(epoch, index)`` keys for :class:`AugmentedDataset`, less the first ``skip``
    of each epoch (a mid-epoch resume)."""

    def __init__(self, sampler, skip: int = 0):
        self.sampler, self.skip, self.epoch = sampler, skip, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        iterator = iter(self.sampler)
        for _ in range(self.skip):
            next(iterator, None)
        for index in iterator:
            yield self.epoch, int(index)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def mtl_train_augment(img_size: int = 224) -> TrainAugment:
    """EMMA's training augmentation (reference: resize 1.04x, jitter 0.4/0.4/0.4/0.1 with p 0.2, crop, flip)."""
    return TrainAugment(img_size, resize_ratio=1.04, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.2, flip_p=0.5)


def lsd_train_augment(img_size: int = 224) -> TrainAugment:
    """Masked CoTEX's training augmentation (reference: resize 1.02x, crop, flip)."""
    return TrainAugment(img_size, resize_ratio=1.02, flip_p=0.5)
