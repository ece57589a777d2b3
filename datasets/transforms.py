"""The reference's image transforms, applied to whole uint8 batches on the device.

The reference used per-image torchvision transforms on PIL images in the loader workers. Here the loader delivers
uint8 batches and the transforms below run on the device, one call per batch, with every random parameter drawn
per sample as the per-image transforms did:

- MTL train: resize to 1.04x, ColorJitter(0.4, 0.4, 0.4, 0.1) with probability 0.2, random crop, horizontal flip p 0.5,
  ImageNet normalisation; eval: resize, normalisation.
- LSD train: resize to 1.02x, random crop, flip; eval: resize, normalisation.

How training batches are made fast (on two CPU cores the transform, not decoding, bounds the loader):

- The resize runs on uint8 in channels-last layout (the layout the loader delivers), PyTorch's SIMD kernel: ten times
  faster than its float resize, and it rounds to uint8 as the reference's PIL resize did. On a GPU, which has no uint8
  resize, the same steps run on floats in 0..255.
- Only the jittered samples (20%) become floats in [0, 1]; the jitter's four ops are a few elementwise passes each,
  per sample, in that sample's own order.
- Crop, flip and normalisation are one pass per sample, straight into the channels-last float batch the model gets:
  no index tensors, and the normalisation multiply-add runs on the sample while it is still in cache.

Evaluation resizes in float, exactly as torchvision's tensor ``Resize``. Random parameters come from the global CPU
torch generator, where the per-sample crops need them as numbers (drawing them on a GPU would make the host wait for
it); a run's saved RNG state fixes the augmentation too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, PIL's "L" conversion used by the reference's ColorJitter


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
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _crop_params(batch: int, height: int, width: int, size: int, flip_p: float) -> list[tuple[int, int, bool]]:
    """(top, left, flip) per sample: RandomCrop's uniform position, then RandomHorizontalFlip's coin."""
    tops = torch.randint(0, height - size + 1, (batch,)).tolist()
    lefts = torch.randint(0, width - size + 1, (batch,)).tolist()
    flips = (torch.rand(batch) < flip_p).tolist() if flip_p > 0 else [False] * batch
    return list(zip(tops, lefts, flips))


def random_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """A (size, size) crop at an independent uniform position per sample (one slice copy each, no index tensors)."""
    batch, channels, height, width = images.shape
    out = images.new_empty((batch, channels, size, size))
    for index, (top, left, _) in enumerate(_crop_params(batch, height, width, size, 0.0)):
        out[index].copy_(images[index, :, top:top + size, left:left + size])
    return out


def _adjust_hue(images: torch.Tensor, shift) -> torch.Tensor:
    """Rotate hue by ``shift`` (fraction of a turn in [-0.5, 0.5]: a float, or one per sample) in HSV, as
    torchvision's adjust_hue. Works on (..., 3, H, W) floats in [0, 1].

    The hue ``h`` (sixths of a turn, in [-1, 5)) is read off the RGB hexcone; each output channel follows from the
    circular distance ``d`` between the rotated hue and the channel's own hue: ``V - C * clamp(d - 1, 0, 1)`` with V
    the largest channel and C the chroma. Rotating the channels' hues the other way instead of the pixels' hue saves
    a modulo. Everything is elementwise arithmetic: comparisons and torch.where cost several times more on a CPU.
    """
    r, g, b = images.unbind(-3)
    value = images.amax(-3)
    chroma = value - images.amin(-3)
    # h * C in [-C, 5C), from the sector of the largest channel, R before G before B on ties as torchvision: exact
    # 0/1 weights from sign() and two lerps pick it.
    r_is_max = (r - value).sign_().add_(1)
    g_is_max = (g - value).sign_().add_(1)
    hue = torch.lerp((r - g).add_(chroma, alpha=4), (b - r).add_(chroma, alpha=2), g_is_max)
    hue = torch.lerp(hue, g - b, r_is_max)
    # Grey pixels (chroma 0) get h = 0 and come back unchanged, since their chroma scales the rotation.
    hue.div_(chroma.clamp(min=torch.finfo(chroma.dtype).tiny))
    # With x = h - ((channel hue - 6 shift) mod 6), in (-7, 5), the circular distance is d = 3 - |3 - |x|| (where
    # this is negative, the true distance is under 1 and both give the same clamp), so
    # V - C * clamp(d - 1, 0, 1) == (V - 2C) + C * clamp(|3 - |x||, 1, 2). The three channels go in one tensor.
    own_hue = images.new_tensor([0.0, 2.0, 4.0]).view(3, 1, 1)
    if torch.is_tensor(shift):
        centre = own_hue - 6 * shift.view(-1, 1, 1, 1).to(images)
        centre = centre - 6 * torch.floor(centre / 6)
    else:
        centre = (own_hue - 6 * shift) % 6
    folded = (hue.unsqueeze(-3) - centre).abs_().sub_(3).abs_().clamp_(1, 2)
    return torch.addcmul(torch.add(value, chroma, alpha=-2).unsqueeze(-3), chroma.unsqueeze(-3), folded)


def _jitter_params(n: int, brightness: float, contrast: float, saturation: float, hue: float):
    """Per-sample factors ``(n, 4)`` and op orders ``(n, 4)``, as ColorJitter.get_params draws them (CPU)."""

    def factor(amount: float) -> torch.Tensor:
        return torch.empty(n).uniform_(max(0.0, 1 - amount), 1 + amount)

    factors = torch.stack([factor(brightness), factor(contrast), factor(saturation),
                           torch.empty(n).uniform_(-hue, hue)], 1)
    order = torch.rand(n, 4).argsort(1)  # a random permutation of the four ops per sample
    return factors.tolist(), order.tolist()


def _jitter_image_(image: torch.Tensor, factors, order) -> torch.Tensor:
    """ColorJitter of one float (3, H, W) image in [0, 1], in place: brightness, contrast, saturation and hue
    ``factors`` applied in ``order`` (0..3), each a blend clamped to [0, 1] as torchvision's tensor ops."""
    for op in order:
        factor = factors[op]
        if op == 0:  # blend with black
            image.mul_(factor).clamp_(0, 1)
        elif op == 1:  # blend with the mean grey level (luma weights applied to the channel means)
            mean = image.mean((1, 2)) @ image.new_tensor(GREY_WEIGHTS)
            image.mul_(factor).add_(mean * (1 - factor)).clamp_(0, 1)
        elif op == 2:  # blend with the image's own grey
            r, g, b = image
            grey = (r * GREY_WEIGHTS[0]).add_(g, alpha=GREY_WEIGHTS[1]).add_(b, alpha=GREY_WEIGHTS[2])
            image.mul_(factor).add_(grey, alpha=1 - factor).clamp_(0, 1)
        else:
            image.copy_(_adjust_hue(image, factor))
    return image


def color_jitter(images: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                 p: float) -> torch.Tensor:
    """torchvision's ColorJitter inside RandomApply(p), per sample: factors and op order drawn per sample.

    ``images`` are floats in [0, 1]; a new batch is returned.
    """
    chosen = torch.nonzero(torch.rand(images.shape[0]) < p).flatten().tolist()
    out = images.clone()
    factors, order = _jitter_params(len(chosen), brightness, contrast, saturation, hue)
    for row, index in enumerate(chosen):
        _jitter_image_(out[index], factors[row], order[row])
    return out


def _normalisation_rows(size: int, device, from_255: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet normalisation as (scale, shift) rows for an image row of ``size`` RGB pixels (R, G, B repeating)."""
    std = torch.tensor(IMAGENET_STD)
    scale = 1 / (255 * std) if from_255 else 1 / std
    shift = -torch.tensor(IMAGENET_MEAN) / std
    return scale.repeat(size).to(device), shift.repeat(size).to(device)


def _crop_flip_normalise(pixels: torch.Tensor, replaced: dict, crops, size: int) -> torch.Tensor:
    """Crop, flip and normalise each sample of a (B,H,W,3) batch of 0..255 values into a channels-last float
    (B,3,size,size) batch; samples in ``replaced`` come instead from the given (H,W,3) floats in [0, 1].

    One sample at a time, in height-width-channel order: each window is read once, its float copy is still in cache
    for the multiply-add, and the multiply-add runs along whole contiguous image rows.
    """
    batch = pixels.shape[0]
    out = torch.empty((batch, size, size, 3), device=pixels.device)
    scale_255, shift = _normalisation_rows(size, pixels.device, from_255=True)
    scale_1, _ = _normalisation_rows(size, pixels.device, from_255=False)
    # views made once: the loop body is four calls, which matters at 64 samples a batch
    sources = list(pixels.unbind(0))
    for index, image in replaced.items():
        sources[index] = image
    samples = zip(sources, out.unbind(0), out.view(batch, size, size * 3).unbind(0), crops)
    for index, (source, target, rows, (top, left, flip)) in enumerate(samples):
        window = source[top:top + size, left:left + size]
        target.copy_(window.flip(1) if flip else window)
        torch.addcmul(shift, rows, scale_1 if index in replaced else scale_255, out=rows)
    return out.permute(0, 3, 1, 2)


class BatchTransform:
    """Callable turning a uint8 (B,3,H,W) batch on the device into a normalised float batch for the model.

    Memory layout (``channels_last``): None gives each path its cheaper one, channels-last for training (the models
    compute the same either way, and the frozen DAN wants it) and contiguous for evaluation; True or False forces one.
    """

    def __init__(self, img_size: int = 224, train: bool = False, resize_ratio: float = 1.0, jitter=None,
                 jitter_p: float = 0.0, flip_p: float = 0.0, channels_last: bool | None = None):
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
        if not self.train:
            # a contiguous float batch: the float resize is twice as slow on channels-last input
            x = images.to(torch.float32, memory_format=torch.contiguous_format).div_(255)
            x = normalise(resize(x, self.img_size))
            return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        # uint8 on the CPU (its fast uint8 resize); floats in 0..255 on devices without a uint8 resize kernel
        x = resize(images if images.device.type == "cpu" else images.float(), self.resize_to)
        batch, _, height, width = x.shape
        jittered = {}
        if self.jitter is not None and self.jitter_p > 0:
            chosen = torch.nonzero(torch.rand(batch) < self.jitter_p).flatten().tolist()
            factors, order = _jitter_params(len(chosen), *self.jitter)
            for row, index in enumerate(chosen):
                image = x[index].to(torch.float32, memory_format=torch.contiguous_format).div_(255)
                jittered[index] = _jitter_image_(image, factors[row], order[row]).permute(1, 2, 0)
        crops = _crop_params(batch, height, width, self.img_size, self.flip_p)
        out = _crop_flip_normalise(x.permute(0, 2, 3, 1), jittered, crops, self.img_size)
        return out if self.channels_last is not False else out.contiguous()

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
