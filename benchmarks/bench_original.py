"""The original implementations' training steps, timed the way ``bench.py`` times ours: JackYFL/EMMA_CoTEX_ABAW4's
EMMA and masked CoTEX beside ``bench.py train``, facebookresearch/mae's pretraining beside ``bench.py pretrain``. Same
model size, batch, random frames and labels, one JSON line per measurement, the last one the best.

It imports an original's own modules from a checkout of its repository (nothing of it is copied here) and needs the
timm it was written for, installed apart from ours::

    git clone https://github.com/JackYFL/EMMA_CoTEX_ABAW4 /tmp/original
    pip install --no-deps --target /tmp/timm0412 timm==0.4.12
    python benchmarks/bench_original.py --repo /tmp/original --timm /tmp/timm0412 --model emma --threads 2
    python benchmarks/bench.py train --model emma --vit base --batch-size 8 --threads 2    # ours, beside it

The original step, as its training scripts run it: forward in fp32 (it has no autocast), its loss, backward through
its ``NativeScalerWithGradNormCount`` (a CUDA GradScaler, inactive on a CPU) with clipping at 0.05, AdamW over its
layer-decay groups (and EMMA's separate Adam for the VA head), the lr set by its schedule at each update. EMMA's DAN
gets random weights (the step costs the same); masked CoTEX runs two ViT-B with mask 0.75.

MAE's pretraining step (``--model mae``; ``--repo`` and ``--timm`` default to the folders below)::

    git clone https://github.com/facebookresearch/mae /tmp/mae
    pip install --no-deps --target /tmp/timm032 timm==0.3.2
    python benchmarks/bench_original.py --model mae --vit base --batch-size 8 --threads 2
    python benchmarks/bench.py pretrain --vit base --batch-size 8 --threads 2    # ours, beside it

as its ``engine_pretrain.train_one_epoch`` runs it with PRETRAIN.md's recipe: ``models_mae.mae_vit_base_patch16``
(``large_patch16``, ``huge_patch14`` with ``--vit``) with ``norm_pix_loss``, the forward at mask ratio 0.75, backward
through its ``NativeScalerWithGradNormCount`` (inactive on a CPU, as above) without clipping, AdamW (betas 0.9, 0.95)
over timm's ``add_weight_decay`` groups (0.05), the lr of its half-cycle cosine schedule set at each update. It ran the
forward under CUDA fp16 autocast; on a CPU it runs in fp32, or under bf16 autocast with ``--precision bf16``.

The original's MTL data pipeline (``--model data``), beside ``bench.py data`` on the same MTL data directory::

    python -m datasets.synthetic mtl /tmp/benchdata --videos 40 --frames 50
    python benchmarks/bench_original.py --model data --repo /tmp/original --data-dir /tmp/benchdata --workers 2
    python benchmarks/bench.py data --data-dir /tmp/benchdata --batch-size 64 --workers 2 --threads 1    # ours

as its ``EMMA_main.py`` loads training frames: its ``ABAWMTDataset`` over ``training_set_annotations.txt`` and
``cropped_aligned/``, each frame opened with PIL and put through its training transform (resize to 232 x 232, colour
jitter 0.4/0.4/0.4/0.1 on a fifth of the frames, random 224 crop, horizontal flip, ``ToTensor``, ``Normalize``) in the
loader workers, batches of 64 shuffled with the last one dropped. The batches are timed as they leave the loader,
normalised 224 x 224 float batches as ``bench.py data`` times ours. It needs no timm.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import tempfile
import time


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def emit_best(records: list[dict]) -> None:
    """The final line: the fastest run, with every run's speed."""
    best = max(records, key=lambda record: record["img_per_s"])
    emit(dict(best, run="best", final=True, runs=len(records), img_per_s_runs=[r["img_per_s"] for r in records]))


def original(module: str):
    """A module of the original's checkout (its ``utils`` or ``util`` package, not this project's)."""
    return importlib.import_module(module)


def build_emma(opts, torch):
    from net.dan import DAN
    from net.EMMA import EMMA

    lr_decay, losses = original("utils.lr_decay"), original("utils.loss")

    with tempfile.TemporaryDirectory() as folder:
        dan_path = os.path.join(folder, "dan.pth")
        torch.save({"model_state_dict": DAN(num_class=8).state_dict()}, dan_path)
        model = EMMA(num_classes=8 + 12, drop_path_rate=0.1, finetune_path=None, exp_model_path=dan_path)
    groups = lr_decay.param_groups_lrd(model.vit, 0.05, no_weight_decay_list=model.vit.no_weight_decay(),
                                       layer_decay=0.65)
    optimizer = torch.optim.AdamW(groups, 1e-4)
    for parameter in model.cnn.parameters():
        parameter.requires_grad = False
    optimizer_va = torch.optim.Adam(model.va_head.parameters(), lr=1e-4)
    loss_fn = losses.SingleMT_loss(return_losses=False)

    def labels(generator):
        va = torch.rand(opts.batch_size, 2, generator=generator) * 2 - 1
        expr = torch.randint(0, 8, (opts.batch_size, 1), generator=generator).float()
        aus = torch.randint(0, 2, (opts.batch_size, 12), generator=generator).float()
        return torch.cat([va, expr, aus], dim=1)

    def forward_loss(images, targets):
        return loss_fn(model(images), targets)

    return [model], optimizer, [optimizer_va], forward_loss, labels


def build_cotex(opts, torch):
    from net.mae_vit import ViT

    lr_decay, losses = original("utils.lr_decay"), original("utils.loss")

    models, groups = [], []
    for _ in range(opts.vit_num):
        model = ViT(num_classes=6, drop_path_rate=0.1, finetune_path=None, myismask=True)
        groups += lr_decay.param_groups_lrd(model.vit, 0.05, no_weight_decay_list=model.vit.no_weight_decay(),
                                            layer_decay=0.65)
        models.append(model)
    optimizer = torch.optim.AdamW(groups, 1e-4)
    loss_fn = losses.EmoCoT_loss(dist_num=opts.vit_num, lambda_JS=100, lambda_exp=1)

    def labels(generator):
        return torch.randint(0, 6, (opts.batch_size,), generator=generator)

    def forward_loss(images, targets):
        return loss_fn([model((images, opts.mask_ratio)) for model in models], targets)

    return models, optimizer, [], forward_loss, labels


# MAE's constructor for each --vit (its huge model has 14-pixel patches)
MAE_MODELS = {"base": "mae_vit_base_patch16", "large": "mae_vit_large_patch16", "huge": "mae_vit_huge_patch14"}
# The checkout and timm folders of each original, as the module docstring installs them (None: --repo/--timm needed)
DEFAULT_FOLDERS = {"emma": (None, None), "cotex": (None, None), "mae": ("/tmp/mae", "/tmp/timm032"),
                   "data": (None, None)}


def mae_lr(batch_size: int) -> float:
    """MAE's absolute lr: PRETRAIN.md's base lr 1.5e-4 scaled by the batch (one process, no accumulation)."""
    return 1.5e-4 * batch_size / 256


def build_mae(opts, torch):
    import models_mae
    from timm.optim import optim_factory

    model = getattr(models_mae, MAE_MODELS[opts.vit])(img_size=opts.img_size, norm_pix_loss=True)
    groups = optim_factory.add_weight_decay(model, 0.05)
    optimizer = torch.optim.AdamW(groups, lr=mae_lr(opts.batch_size), betas=(0.9, 0.95))

    def labels(generator):
        return None  # self-supervised: the loss reconstructs the images

    def forward_loss(images, targets):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=opts.precision == "bf16"):
            loss, _, _ = model(images, mask_ratio=opts.mask_ratio)
        return loss

    return [model], optimizer, [], forward_loss, labels


def bench_data(opts, torch) -> None:
    """The original's training loader over --data-dir, timed by the batch; a JSON line per run, the last the best."""
    from dataset.EmotionDataset import ABAWMTDataset
    from torch.utils.data import DataLoader
    from torchvision import transforms

    img_size = 224
    # The training transform as EMMA_main.preparation composes it
    transform = transforms.Compose([
        transforms.Resize([int(img_size * 1.04), int(img_size * 1.04)]),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.2),
        transforms.RandomCrop([img_size, img_size]),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    annotations = os.path.join(opts.data_dir, "training_set_annotations.txt")
    if not os.path.isfile(annotations):
        raise SystemExit(f"error: {annotations} does not exist (an MTL data directory: python -m datasets.synthetic "
                         "mtl DIR)")
    # It joins its root and each listed path by plain concatenation, so the root ends with a separator.
    dataset = ABAWMTDataset(annotation_path=annotations, transform=transform,
                            data_root=os.path.join(opts.data_dir, "cropped_aligned", ""))
    loader = DataLoader(dataset=dataset, batch_size=opts.batch_size, shuffle=True, drop_last=True,
                        num_workers=opts.workers, pin_memory=torch.cuda.is_available())
    if len(loader) == 0:
        raise SystemExit(f"error: {opts.data_dir} has fewer training frames than one batch of {opts.batch_size}")

    def batches():
        while True:
            yield from loader

    stream = batches()

    def run_batches(count: int) -> tuple[float, int]:
        start = time.perf_counter()
        images_done = 0
        for _ in range(count):
            images_done += next(stream)[0].shape[0]
        return time.perf_counter() - start, images_done

    run_batches(opts.warmup)  # starts the workers
    settings = dict(bench="data", implementation="original", batch_size=opts.batch_size, workers=opts.workers,
                    batches=opts.batches, img_size=img_size, frames=len(dataset), threads=torch.get_num_threads(),
                    torch=torch.__version__, device=f"cpu ({os.cpu_count()} cores)",
                    load_avg_1m=round(os.getloadavg()[0], 2))
    records = []
    for run in range(opts.repeat):
        seconds, images_done = run_batches(opts.batches)
        record = dict(settings, run=run, img_per_s=round(images_done / seconds, 1),
                      batch_ms=round(seconds / opts.batches * 1e3, 2))
        records.append(record)
        emit(record)
    emit_best(records)


def _shim_removed_names(torch) -> None:
    """Names the originals (written for torch 1.7 and 1.8) import and later releases removed (``torch._six``,
    numpy's ``np.float``), and their moves of tensors and modules to CUDA made no-ops without a GPU."""
    import collections.abc
    import math
    import types

    import numpy

    if not hasattr(numpy, "float"):  # MAE's sin-cos position embedding asks for dtype=np.float
        numpy.float = float
    six = types.ModuleType("torch._six")
    six.inf, six.string_classes, six.container_abcs = math.inf, (str, bytes), collections.abc
    sys.modules.setdefault("torch._six", six)
    # Its code moves tensors and modules to CUDA by name; on a CPU-only machine they stay where they are.
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=None, help="a checkout of JackYFL/EMMA_CoTEX_ABAW4, or of "
                                                     "facebookresearch/mae for --model mae (default: /tmp/mae)")
    parser.add_argument("--timm", default=None, help="folder holding timm 0.4.12, or 0.3.2 for --model mae "
                                                     "(pip install --target; default for mae: /tmp/timm032)")
    parser.add_argument("--model", choices=["emma", "cotex", "mae", "data"], default="emma",
                        help="a training step, or data: the MTL training loader (default: %(default)s)")
    parser.add_argument("--vit", choices=sorted(MAE_MODELS), default="base",
                        help="MAE's model size (EMMA and CoTEX are ViT-B; default: %(default)s)")
    parser.add_argument("--img-size", type=int, default=224, help="MAE's image size (the others': 224)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: MAE's forward under CPU bf16 autocast (the others have none; default: fp32)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8, and 64 for --model data")
    parser.add_argument("--steps", type=int, default=3, help="measured optimizer steps (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="unmeasured steps first (default: 1), or batches for --model data (default: 10)")
    parser.add_argument("--repeat", type=int, default=1, help="measurements; the final line is the best")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--vit-num", type=int, default=2, help="CoTEX's ViTs (default: %(default)s)")
    parser.add_argument("--mask-ratio", type=float, default=0.75,
                        help="CoTEX's and MAE's mask ratio (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="--model data: an MTL data directory")
    parser.add_argument("--workers", type=int, default=2, help="--model data: loader workers (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=100,
                        help="--model data: measured batches (default: %(default)s)")
    opts = parser.parse_args(argv)
    data = opts.model == "data"
    if opts.batch_size is None:
        opts.batch_size = 64 if data else 8
    if opts.warmup is None:
        opts.warmup = 10 if data else 1
    if data != (opts.data_dir is not None):
        parser.error("--model data needs --data-dir" if data else "--data-dir needs --model data")
    if opts.model != "mae":
        for dest, default in (("vit", "base"), ("img_size", 224), ("precision", "fp32")):
            if getattr(opts, dest) != default:
                parser.error(f"--{dest.replace('_', '-')} other than {default} needs --model mae")
    repo, timm = DEFAULT_FOLDERS[opts.model]
    opts.repo, opts.timm = opts.repo or repo, opts.timm or timm
    folders = [(opts.repo, "--repo")] + ([] if data and opts.timm is None else [(opts.timm, "--timm")])
    for path, what in folders:
        if path is None:
            parser.error(f"--model {opts.model} needs {what}")
        if not os.path.isdir(path):
            raise SystemExit(f"error: {what} {path} is not a directory")
    # The original's packages (net, utils; MAE's models_mae, util) and its timm come first; this project's own are not
    # on the path.
    sys.path[:0] = [os.path.abspath(path) for path, _ in folders]

    import torch

    _shim_removed_names(torch)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if data:
        bench_data(opts, torch)
        return
    package = "util" if opts.model == "mae" else "utils"
    lr_sched, misc = original(f"{package}.lr_sched"), original(f"{package}.misc")

    torch.manual_seed(0)
    build = {"emma": build_emma, "cotex": build_cotex, "mae": build_mae}[opts.model]
    models, optimizer, extra_optimizers, forward_loss, labels = build(opts, torch)
    for model in models:
        model.train()
    scaler = misc.NativeScalerWithGradNormCount()
    # Each recipe's schedule, its lr at an epoch past warm-up (the update costs the same at any lr), and clipping
    if opts.model == "mae":
        schedule = argparse.Namespace(lr=mae_lr(opts.batch_size), min_lr=0.0, warmup_epochs=40, epochs=800)
        first_epoch, clip_grad = 100, None
    else:
        schedule = argparse.Namespace(lr=1e-4, min_lr=1e-6, warmup_epochs=0, epochs=30, epoch_num=30)
        first_epoch, clip_grad = 10, 0.05
    generator = torch.Generator().manual_seed(0)
    # uint8 frames of the model's size, normalised per step as a loader's ToTensor + Normalize would leave them
    frames = torch.randint(0, 256, (opts.batch_size, 3, opts.img_size, opts.img_size), dtype=torch.uint8,
                           generator=generator)
    targets = labels(generator)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    parameters = [p for model in models for p in model.parameters()]

    def step(index: int) -> None:
        images = (frames.float() / 255 - mean) / std
        lr_sched.adjust_learning_rate(optimizer, first_epoch + index / 100, schedule)
        loss = forward_loss(images, targets)
        scaler(loss, optimizer, clip_grad=clip_grad, parameters=parameters, create_graph=False, update_grad=True)
        for other in extra_optimizers:
            other.step()
        optimizer.zero_grad()
        for other in extra_optimizers:
            other.zero_grad()

    for index in range(opts.warmup):
        step(index)
    settings = dict(bench="pretrain" if opts.model == "mae" else "train", implementation="original",
                    model=opts.model, vit=opts.vit, batch_size=opts.batch_size, steps=opts.steps,
                    img_size=opts.img_size, precision=opts.precision,
                    mask_ratio=opts.mask_ratio if opts.model in ("cotex", "mae") else None,
                    vit_num=opts.vit_num if opts.model == "cotex" else None, threads=torch.get_num_threads(),
                    torch=torch.__version__, device=f"cpu ({os.cpu_count()} cores)",
                    load_avg_1m=round(os.getloadavg()[0], 2))
    if opts.model == "mae":
        settings.update(patch_size=models[0].patch_embed.patch_size[0], norm_pix_loss=True)
    records = []
    for run in range(opts.repeat):
        start = time.perf_counter()
        for index in range(opts.steps):
            step(index)
        seconds = time.perf_counter() - start
        record = dict(settings, run=run, img_per_s=round(opts.steps * opts.batch_size / seconds, 3),
                      step_s=round(seconds / opts.steps, 4),
                      peak_mem_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
        records.append(record)
        emit(record)
    emit_best(records)


if __name__ == "__main__":
    main()
