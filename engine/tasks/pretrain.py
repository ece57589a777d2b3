"""MAE pretraining on folders of face images: the :class:`engine.task.Task` of ``main_pretrain.py``.

The first stage of both recipes: an MAE (``models.mae``) learns to reconstruct the dropped 75% of each face's patches;
its encoder then initialises EMMA's and masked CoTEX's ViTs (``--mae-ckpt``). The recipe is MAE's: AdamW with betas
(0.9, 0.95) and weight decay 0.05 on the weights (not on biases and norms), blr 1.5e-4 scaled by the effective batch /
256, a cosine schedule after a warm-up, RandomResizedCrop(0.2, 1) and a flip, ``norm_pix_loss``.

Every mask comes from a seed of its own sample: in training a seed drawn with the sample's augmentation (keyed by run
seed, epoch and sample), so a run masks the same way on any number of processes and after a resume; in validation a
fixed seed per image. Validation is the mean reconstruction loss over held-out images (``--val-dir``, or a
``--val-fraction`` of the images): the number repeats exactly, whatever the batch size or the number of processes.
``--eval`` computes it over every image of ``--data-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import cached_property

import numpy as np
import torch

from datasets import folders
from datasets.images import _stack_uint8
from datasets.transforms import BatchTransform, normalise
from engine.cli import non_negative_int, open_unit_interval, positive_int, unit_interval_or_zero
from engine.runtime import unwrap
from engine.task import Selection, check_model_flags, model_from_checkpoint, save_figures, write_metrics
from models.weights import compare_keys, describe_mismatch, extract_state_dict, read_checkpoint, strip_prefix
from utils.errors import UserError
from utils.monitor import log

# Config entries of an MAE -> the flags that set them.
PRETRAIN_MODEL_FLAGS = {"vit_size": "vit", "img_size": "img_size", "patch_size": "patch_size",
                        "decoder_dim": "decoder_dim", "decoder_depth": "decoder_depth",
                        "decoder_heads": "decoder_heads", "norm_pix_loss": "norm_pix_loss"}
RECONSTRUCTION_GRID = 8  # held-out faces in each epoch's reconstruction figure
CHECKED_IMAGES = 256  # images of each split decoded before training (a folder of unusable ones fails at once)
MASK_STREAM = 1 << 40  # mask k of evaluation image i: seed MASK_STREAM * (--mask-seed + 1) + i * 64 + k


class PretrainTask:
    """MAE pretraining: images in, the mean squared error of the dropped patches out."""

    name = "pretrain"
    prog = "main_pretrain.py"
    model_name = "mae"
    many_data_dirs = True
    init_flag = "--init"
    # facebookresearch/mae's pretraining recipe (main_pretrain.py); drop path, layer decay and clipping are unused.
    defaults = dict(output_dir="runs/pretrain", epochs=400, warmup_epochs=40, batch_size=64, accum_iter=1, blr=1.5e-4,
                    min_lr=0.0, layer_decay=1.0, weight_decay=0.05, drop_path=0.0, clip_grad=0.0)
    demo_run = dict(img_size=48, patch_embed="linear", global_pool=False, output_dir="runs/demo_pretrain",
                    decoder_dim=64, decoder_depth=2, decoder_heads=2, epochs=10, warmup_epochs=1, batch_size=128,
                    blr=1.5e-3, weight_decay=0.05, clip_grad=0.0, val_fraction=0.02)
    demo_data = dict(synthetic="faces", folder="faces", full=dict(count=12000, size=64, seed=0),
                     small=dict(count=48, size=32, seed=0))
    batch_size_help = "per-process batch size (default: %(default)s, as MAE's per-GPU batch)"
    output_width = 2  # per image: reconstruction loss, and the loss of predicting each patch's mean
    selection = Selection({"loss": "loss"}, minimise=("loss",))
    ensembles = False  # --eval scores one checkpoint

    def __init__(self, args):
        self.args = args
        self._model_patch = None  # the patch size of the model --eval loaded (its checkpoint's, not the flags')

    # ---- command line
    @staticmethod
    def add_flags(groups) -> None:
        data = groups["data"]
        data.add_argument("--image-list", metavar="FILE",
                          help="only the images this file names (first field of each line, relative to its "
                               "--data-dir: CelebA's partition file, an ABAW annotation or test list, ...)")
        data.add_argument("--val-dir", metavar="DIR",
                          help="folder of validation images (default: a --val-fraction of the images)")
        data.add_argument("--val-fraction", type=unit_interval_or_zero, default=0.01, metavar="F",
                          help="share of the images held out for validation when there is no --val-dir, chosen by "
                               "a hash of each name; 0: no validation (default: %(default)s)")
        model = groups["model"]
        model.add_argument("--mask-ratio", type=open_unit_interval, default=0.75, metavar="R",
                           help="share of each image's patches dropped (default: %(default)s)")
        model.add_argument("--decoder-dim", type=positive_int, default=512, metavar="D",
                           help="decoder width (default: %(default)s)")
        model.add_argument("--decoder-depth", type=positive_int, default=8, metavar="N",
                           help="decoder blocks (default: %(default)s)")
        model.add_argument("--decoder-heads", type=positive_int, default=16, metavar="H",
                           help="decoder attention heads (default: %(default)s)")
        model.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction, default=True,
                           help="reconstruct each patch's pixels normalised to zero mean and unit variance "
                                "(default: on, as MAE's recipe)")
        model.add_argument("--init", metavar="PATH",
                           help="start from the weights of an MAE checkpoint (ours, facebookresearch/mae's, or a "
                                "face-MAE release; an encoder-only file leaves the decoder new) without its optimizer")
        evaluation = groups["evaluation"]
        evaluation.add_argument("--eval-masks", type=positive_int, default=1, metavar="K",
                                help="masks per image in validation and --eval, losses averaged (default: "
                                     "%(default)s)")
        evaluation.add_argument("--mask-seed", type=non_negative_int, default=0, metavar="S",
                                help="seed of the validation masks (default: %(default)s)")

    @staticmethod
    def derived_defaults(args) -> dict:
        return {}

    @staticmethod
    def check_flags(args, error) -> None:
        if args.patch_embed != "linear":
            error("MAE pretrains the patchify layer: --patch-embed must be linear")
        if args.global_pool:
            error("--global-pool is a fine-tuning choice; MAE pretraining encodes with the class token")
        if args.mae_ckpt:
            error("main_pretrain.py starts from weights with --init PATH (or continues a run with --resume PATH)")
        if args.test_list:
            error("MAE pretraining has no test list; --eval reports the reconstruction loss of --data-dir")
        if args.eval_masks > 64:
            error("--eval-masks is at most 64")
        for name in ("val_dir", "image_list"):
            path = getattr(args, name)
            if path and not (os.path.isdir(path) if name == "val_dir" else os.path.isfile(path)):
                error(f"--{name.replace('_', '-')} {path}: not found")

    # ---- data
    @cached_property
    def images(self) -> folders.ImageSet:
        images = folders.find_images(self.args.data_dir)
        if self.args.image_list:
            images = folders.restrict(images, self.args.image_list, log=log)
        log(f"pretraining images: {images.describe()}")
        return images

    @cached_property
    def _held_out(self) -> np.ndarray:
        if self.args.eval or self.args.val_dir:
            return np.zeros(len(self.images), dtype=bool)
        return folders.held_out(self.images, self.args.val_fraction)

    def _min_side(self) -> int:
        return self._model_patch or self.model_config()["patch_size"] or _preset_patch(self.args.vit)

    def check_inputs(self) -> None:
        """Before the first training step, a sample of the images (at most ``CHECKED_IMAGES`` of each split, evenly
        spaced) is decoded: training images that are all unusable, or validation images (read otherwise only after the
        first epoch) unusable above ``--max-bad-images``, stop the run before it trains, naming an image and why."""
        train = self.images.subset(np.flatnonzero(~self._held_out))
        if len(train):
            self._check_sample(train, "training images", 1.0)  # training skips and counts the others
        if self._val_images is not None:
            where = f"images of --val-dir {self.args.val_dir}" if self.args.val_dir else "held-out validation images"
            self._check_sample(self._val_images, where, self.args.max_bad_images)

    def _check_sample(self, images: folders.ImageSet, where: str, max_share: float) -> None:
        from engine.evaluate import evenly_spaced

        dataset = folders.FaceImages(images, min_side=self._min_side())
        rows = evenly_spaced(len(dataset), CHECKED_IMAGES)
        unusable = [row for row in rows if dataset[row][0] is None]
        share = len(unusable) / len(rows)
        if unusable and (share > max_share or len(unusable) == len(rows)):
            limit = f" > --max-bad-images {max_share:g}" if max_share < 1 else ""
            raise UserError(f"{len(unusable)} of the {len(rows)} {where} checked are unusable "
                            f"({share:.1%}{limit}), e.g. {dataset.check(unusable[0])}")

    def train_split(self):
        train = self.images.subset(np.flatnonzero(~self._held_out))
        if len(train) == 0:
            raise UserError("--val-fraction leaves no training image")
        return folders.FaceImages(train, min_side=self._min_side()), train.names

    @cached_property
    def _val_images(self) -> folders.ImageSet | None:
        if self.args.eval:
            return self.images
        if self.args.val_dir:
            return folders.find_images([self.args.val_dir])
        held = np.flatnonzero(self._held_out)
        return self.images.subset(held) if len(held) else None

    def val_split(self):
        images = self._val_images
        return None if images is None else folders.FaceImages(images)

    def test_split(self):
        return None

    def train_augment(self, img_size: int):
        return folders.PretrainAugment(img_size)

    def eval_collate(self, samples: list):
        """``((images, mask seeds (B, K), shorter sides), indices, [])``: unreadable images become blank ones of side
        0, so that every index gets a row (marked skipped by :meth:`predict`)."""
        good = [image for image, _ in samples if image is not None]
        blank = torch.zeros_like(good[0]) if good else torch.zeros((3, 1, 1), dtype=torch.uint8)
        images = [image if image is not None else blank for image, _ in samples]
        indices = torch.tensor([index for _, index in samples], dtype=torch.int64)
        sides = torch.tensor([min(image.shape[-2:]) if image is not None else 0 for image, _ in samples])
        return (_stack_uint8(images), self.eval_mask_seeds(indices), sides), indices, []

    def eval_mask_seeds(self, indices: torch.Tensor) -> torch.Tensor:
        """The seeds of the ``--eval-masks`` fixed masks of each listed image, (B, K)."""
        base = MASK_STREAM * (self.args.mask_seed + 1)
        return base + indices[:, None] * 64 + torch.arange(self.args.eval_masks)[None, :]

    def input_transform(self, img_size: int):
        return PretrainTransform(img_size)

    def random_targets(self, count: int, generator):
        return torch.arange(count)  # pretraining has no labels: the batch's field is its sample indices

    # ---- model
    def model_config(self) -> dict:
        a = self.args
        return dict(name="mae", vit_size=a.vit, img_size=a.img_size, patch_size=a.patch_size,
                    decoder_dim=a.decoder_dim, decoder_depth=a.decoder_depth, decoder_heads=a.decoder_heads,
                    norm_pix_loss=a.norm_pix_loss)

    def check_model_flags(self, config: dict, path: str) -> None:
        check_model_flags(config, self.args, path, PRETRAIN_MODEL_FLAGS)

    def load_pretrained(self, model) -> None:
        if self.args.init:
            load_init(model, self.args.init)
        else:
            log("MAE from random initialisation (MAE's)")

    def load_for_eval(self, path: str):
        """This project's MAE checkpoints rebuild their model; facebookresearch/mae's ``{'model': ...}`` files (with
        their decoder) are read into the model the flags describe."""
        from models import build_model
        from utils.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(self, checkpoint, path, self.model_name)
        if model is None:
            model = build_model(self.model_config())
            from models.weights import load_exactly

            state = strip_prefix(extract_state_dict(checkpoint, path, ("model", "state_dict")), "module.")
            load_exactly(model, state, path, f"MAE ({self.args.vit}, decoder {self.args.decoder_dim} x "
                                             f"{self.args.decoder_depth})")
        self._model_patch = model.patch
        return model

    def param_groups(self, model) -> list[dict]:
        """MAE's two groups, in its order: no weight decay on 1-D parameters and biases, decay on the rest; frozen
        position tables left out. A facebookresearch/mae optimizer state therefore loads into ours and back."""
        no_decay, decay = [], []
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
        betas = (0.9, 0.95)
        return [{"params": no_decay, "weight_decay": 0.0, "betas": betas},
                {"params": decay, "weight_decay": self.args.weight_decay, "betas": betas}]

    def scales_lr(self) -> bool:
        return True

    # ---- training and prediction
    def loss(self, model, batch):
        (images, seeds), _ = batch
        noise = mask_noise(seeds[:, 0], unwrap(model).patch_embed.num_patches)  # the model may be DDP's wrapper
        per_sample, _, _ = model(images, mask_ratio=self.args.mask_ratio, noise=noise)
        return per_sample.mean(), {}

    def predict(self, model, inputs):
        """Per image: the mean reconstruction loss over ``--eval-masks`` fixed masks, and the loss of predicting
        each dropped patch's mean; NaN for an image that could not be read or is smaller than a patch."""
        images, seeds, sides = inputs
        losses, baselines = [], []
        for k in range(seeds.shape[1]):
            noise = mask_noise(seeds[:, k], model.patch_embed.num_patches)
            per_sample, _, mask = model(images, mask_ratio=self.args.mask_ratio, noise=noise)
            target = model.target(images)
            flat = target - target.mean(dim=-1, keepdim=True)
            baselines.append((flat.pow(2).mean(-1) * mask).sum(1) / mask.sum(1))
            losses.append(per_sample)
        out = torch.stack([torch.stack(losses).mean(0), torch.stack(baselines).mean(0)], dim=1)
        return out.masked_fill((sides < model.patch)[:, None], float("nan"))

    # ---- metrics and files
    def val_metrics(self, outputs: np.ndarray) -> dict:
        readable = np.isfinite(outputs[:, 0])
        skipped = int((~readable).sum())
        if skipped:
            dataset = folders.FaceImages(self._val_images, min_side=self._min_side())
            rows = np.flatnonzero(~readable)
            reason = dataset.check(int(rows[0])) or "unreadable"
            share = skipped / len(outputs)
            if share > self.args.max_bad_images:
                raise UserError(f"{skipped} of {len(outputs)} validation images are unusable ({share:.1%} > "
                                f"--max-bad-images {self.args.max_bad_images:g}), e.g. {reason}")
            log(f"validation: {skipped} unusable images skipped, e.g. {reason}")
        if not readable.any():
            raise UserError("no validation image could be read")
        return {"loss": float(outputs[readable, 0].mean()), "patch_mean_loss": float(outputs[readable, 1].mean()),
                "images": int(readable.sum()), "masks": int(readable.sum()) * self.args.eval_masks,
                "masks_per_image": self.args.eval_masks, "mask_ratio": self.args.mask_ratio,
                "mask_seed": self.args.mask_seed, "skipped_images": skipped}

    def checkpoint_extras(self) -> dict:
        return {}

    def inference_settings(self) -> dict:  # nothing is decided after training
        return {}

    def ensemble_space(self, outputs):  # never averaged (ensembles is False): the interface's identity
        return np.asarray(outputs, dtype=np.float64)

    def output_space(self, values):
        return values

    def use_ensemble_settings(self, first_path, first_extras) -> None:
        pass

    def write_outputs(self, out_dir, val_outputs, test_outputs, test_seen, checkpoint_path) -> dict:
        from engine import plots

        val = {}
        if val_outputs is not None:
            val = self.val_metrics(val_outputs)
            write_metrics(out_dir, "val", val)
        curve = plots.loss_curve_figure(os.path.join(out_dir, "log.jsonl"))
        save_figures({"loss_curve": curve} if curve is not None else {}, out_dir)
        return val

    def epoch_figures(self, model, device, autocast) -> dict:
        """Reconstructions of the first held-out faces, with their first fixed mask."""
        from engine import plots

        if self._val_images is None:
            return {}
        dataset = folders.FaceImages(self._val_images)
        samples = [dataset[i] for i in range(min(RECONSTRUCTION_GRID, len(dataset)))]
        samples = [sample for sample in samples if sample[0] is not None]
        if not samples:
            return {}
        images, seeds, sides = self.eval_collate(samples)[0]
        transform = self.input_transform(model.config["img_size"])
        x, seeds, _ = transform((images.to(device), seeds.to(device), sides.to(device)))
        was_training = model.training
        model.eval()
        with torch.inference_mode(), autocast():
            noise = mask_noise(seeds[:, 0], model.patch_embed.num_patches)
            _, predicted, mask = model(x, mask_ratio=self.args.mask_ratio, noise=noise)
        model.train(was_training)
        views = reconstruction_views(model, x.float(), predicted.float(), mask)
        return {"reconstructions": plots.reconstruction_figure(views)}

    def demo_score(self, out_dir: str):
        path = os.path.join(out_dir, "val_metrics.json")
        if not os.path.isfile(path):
            return None
        with open(path) as handle:
            val = json.load(handle)
        return ("held-out reconstruction loss (lower is better)", val["loss"], val["patch_mean_loss"])


def mask_noise(seeds: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Masking noise (B, L) of each sample from its own seed (``models.vit.keep_random_patches`` keeps the patches
    of smallest noise): the same mask in any batch, process or run. Drawn on the CPU, then moved to the seeds'
    device."""
    rows = [torch.rand(num_patches, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds.cpu()]
    return torch.stack(rows).to(seeds.device, non_blocking=True)


def load_init(model, path: str) -> None:
    """``--init``: the weights of an MAE checkpoint (this project's, facebookresearch/mae's pretrain or visualisation
    files, an encoder-only release) without its optimizer. The encoder must match the model; decoder keys and the mask
    token the file lacks start new; the fixed position tables are always this model's (they follow the grid)."""
    checkpoint, name = read_checkpoint(path, "MAE checkpoint")
    state = strip_prefix(extract_state_dict(checkpoint, name, ("model", "state_dict")), "module.")
    own = model.state_dict()
    fixed = ("pos_embed", "decoder_pos_embed")
    state = {key: value for key, value in state.items() if key not in fixed}

    def may_be_missing(key):
        return key in fixed or key.startswith(("decoder_", "mask_token"))

    missing, unexpected, mismatched = compare_keys(own, state, may_be_missing)
    unexpected = [key for key in unexpected if not key.startswith(("head.", "fc_norm."))]
    if missing or unexpected or mismatched:
        raise UserError(f"--init {name} does not fit this MAE: {describe_mismatch(missing, unexpected, mismatched)}; "
                        f"check --vit, --patch-size and the decoder flags")
    state = {key: value for key, value in state.items() if key in own}
    model.load_state_dict(state, strict=False)
    new = [key for key in own if key not in state and key not in fixed]
    log(f"--init {name}: loaded {len(state)} tensors" + (
        f"; new (not in the file): {len(new)} tensors ({', '.join(new[:3])}{', ...' if len(new) > 3 else ''})"
        if new else ""))


def _preset_patch(size: str) -> int:
    from models.vit import VIT_PRESETS

    return VIT_PRESETS[size]["patch_size"]


class PretrainTransform:
    """Device-side transform: training inputs ``(images, mask seeds)`` (uint8 images already the model's size) are
    normalised; evaluation inputs ``(images, mask seeds, sides)`` get MAE's eval view (shorter side to size / 0.875,
    centre crop) first."""

    def __init__(self, img_size: int):
        self.img_size = img_size
        self.train = BatchTransform(img_size)

    def __call__(self, inputs):
        if len(inputs) == 2:
            images, seeds = inputs
            return self.train(images), seeds
        images, seeds, sides = inputs
        size = self.img_size
        x = images.float().div_(255)
        height, width = x.shape[-2:]
        scale = int(size / folders.EVAL_CROP) / min(height, width)
        new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
        x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True,
                                            align_corners=False).clamp_(0, 1)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        return normalise(x[..., top:top + size, left:left + size].contiguous()), seeds, sides


def reconstruction_views(model, images: torch.Tensor, predicted: torch.Tensor, mask: torch.Tensor) -> list:
    """(original, masked input, reconstruction, reconstruction with the visible patches pasted back) as uint8
    (B, H, W, 3) arrays; a ``norm_pix_loss`` prediction is mapped back through each patch's own mean and spread."""
    from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
    from models.mae import patchify, unpatchify

    patch = model.patch
    patches = patchify(images, patch)
    if model.norm_pix_loss:
        mean = patches.mean(-1, keepdim=True)
        std = (patches.var(-1, keepdim=True) + 1e-6) ** 0.5
        predicted = predicted * std + mean
    dropped = mask[..., None]
    views = [patches, patches * (1 - dropped), predicted, patches * (1 - dropped) + predicted * dropped]
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    out = []
    for index, view in enumerate(views):
        pixels = unpatchify(view, patch) * std + mean
        if index == 1:  # dropped patches shown grey
            grid = unpatchify(dropped.expand_as(view), patch)
            pixels = torch.where(grid > 0, torch.full_like(pixels, 0.5), pixels)
        out.append((pixels.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return out
