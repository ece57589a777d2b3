"""The reference's image transforms, applied to whole uint8 batches on the device.

The reference used per-image torchvision transforms on PIL images in the loader workers. Here the loader delivers
uint8 batches and the transforms below run on the device, one batched call each, with every random parameter drawn
per sample as the per-image transforms did:

- MTL train: resize to 1.04x, ColorJitter(0.4, 0.4, 0.4, 0.1) with probability 0.2, random crop, horizontal flip p 0.5,
  ImageNet normalisation; eval: resize, normalisation.
- LSD train: resize to 1.02x, random crop, flip; eval: resize, normalisation.

Random numbers come from the global torch generator of the batch's device, so a run's RNG state (saved in its
checkpoint) fixes the augmentation too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a float (B,3,H,W) batch to (size, size), antialiased like torchvision's tensor Resize."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def random_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """A (size, size) crop at an independent uniform position per sample."""
    batch, _, height, width = images.shape
    if (height, width) == (size, size):
        return images
    top = torch.randint(0, height - size + 1, (batch,), device=images.device)
    left = torch.randint(0, width - size + 1, (batch,), device=images.device)
    offsets = torch.arange(size, device=images.device)
    rows = (top[:, None] + offsets)[:, :, None]  # (B, size, 1)
    cols = (left[:, None] + offsets)[:, None, :]  # (B, 1, size)
    samples = torch.arange(batch, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[samples, rows, cols].permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Horizontal flip of each sample with probability ``p``."""
    flip = torch.rand(images.shape[0], device=images.device) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def _grey(images: torch.Tensor) -> torch.Tensor:
    weights = images.new_tensor((0.299, 0.587, 0.114)).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def _adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` (fraction of a turn, per sample) through HSV, as torchvision's adjust_hue."""
    r, g, b = images.unbind(1)
    maxc, _ = images.max(1)
    minc, _ = images.min(1)
    delta = maxc - minc
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    saturation = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    rc, gc, bc = (maxc - r) / safe_delta, (maxc - g) / safe_delta, (maxc - b) / safe_delta
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0

    sector = hue * 6.0
    index = sector.floor()
    fraction = sector - index
    index = index.long() % 6
    value = maxc
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    choices = torch.stack([
        torch.stack([value, q, p, p, t, value], 1),
        torch.stack([t, value, value, q, p, p], 1),
        torch.stack([p, p, t, value, value, q], 1),
    ], 1)  # (B, 3 channels, 6 sectors, H, W)
    return choices.gather(2, index[:, None, None].expand(-1, 3, 1, -1, -1)).squeeze(2)


def color_jitter(images: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                 p: float) -> torch.Tensor:
    """torchvision's ColorJitter inside RandomApply(p), per sample: factors and op order drawn per sample.

    ``images`` are floats in [0, 1].
    """
    batch = images.shape[0]
    device = images.device
    chosen = torch.nonzero(torch.rand(batch, device=device) < p).flatten()
    if chosen.numel() == 0:
        return images
    subset = images[chosen]
    n = subset.shape[0]

    def factor(amount: float) -> torch.Tensor:
        return torch.empty(n, 1, 1, 1, device=device).uniform_(max(0.0, 1 - amount), 1 + amount)

    factors = {"brightness": factor(brightness), "contrast": factor(contrast), "saturation": factor(saturation),
               "hue": torch.empty(n, device=device).uniform_(-hue, hue)}
    order = torch.rand(n, 4, device=device).argsort(1)  # a random permutation of the four ops per sample
    for position in range(4):
        for op_index, op in enumerate(("brightness", "contrast", "saturation", "hue")):
            rows = torch.nonzero(order[:, position] == op_index).flatten()
            if rows.numel() == 0:
                continue
            part, amount = subset[rows], factors[op][rows]
            if op == "brightness":
                part = _blend(part, torch.zeros_like(part), amount)
            elif op == "contrast":
                part = _blend(part, _grey(part).mean((1, 2, 3), keepdim=True), amount)
            elif op == "saturation":
                part = _blend(part, _grey(part), amount)
            else:
                part = _adjust_hue(part, amount)
            subset = subset.index_copy(0, rows, part)
    return images.index_copy(0, chosen, subset)


class BatchTransform:
    """Callable turning a uint8 (B,3,H,W) batch on the device into a normalised float batch for the model."""

    def __init__(self, img_size: int = 224, train: bool = False, resize_ratio: float = 1.0, jitter=None,
                 jitter_p: float = 0.0, flip_p: float = 0.0, channels_last: bool = False):
        self.img_size = img_size
        self.train = train
        # The reference wrote the enlarged size as int(224 * ratio); round() keeps 1.04 -> 233 as ABAW4.md states.
        self.resize_to = int(round(img_size * resize_ratio)) if train else img_size
        self.jitter = jitter
        self.jitter_p = jitter_p
        self.flip_p = flip_p
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 batch, got {images.dtype}")
        x = images.float().div_(255.0)
        x = resize(x, self.resize_to)
        if self.train:
            if self.jitter is not None and self.jitter_p > 0:
                x = color_jitter(x, *self.jitter, p=self.jitter_p)
            x = random_crop(x, self.img_size)
            if self.flip_p > 0:
                x = random_flip(x, self.flip_p)
        x = normalise(x)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def __repr__(self) -> str:
        parts = [f"img_size={self.img_size}", f"train={self.train}", f"resize_to={self.resize_to}"]
        if self.train:
            parts += [f"jitter={self.jitter}", f"jitter_p={self.jitter_p}", f"flip_p={self.flip_p}"]
        return f"BatchTransform({', '.join(parts)})"


def mtl_train_transform(img_size: int = 224) -> BatchTransform:
    """EMMA's training augmentation (reference: resize 1.04x, jitter 0.4/0.4/0.4/0.1 with p 0.2, crop, flip)."""
    return BatchTransform(img_size, train=True, resize_ratio=1.04, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.2,
                          flip_p=0.5)


def lsd_train_transform(img_size: int = 224) -> BatchTransform:
    """Masked CoTEX's training augmentation (reference: resize 1.02x, crop, flip)."""
    return BatchTransform(img_size, train=True, resize_ratio=1.02, flip_p=0.5)


def eval_transform(img_size: int = 224) -> BatchTransform:
    """Evaluation for both tracks: resize and normalise."""
    return BatchTransform(img_size, train=False)

