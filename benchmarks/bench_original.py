"""The original implementation's training step (JackYFL/EMMA_CoTEX_ABAW4), timed the way ``bench.py train`` times
ours: same model size, batch, random frames and labels, one JSON line per measurement, the last one the best.

It imports the original's own modules from a checkout of that repository (nothing of it is copied here) and needs
the timm it was written for, installed apart from ours::

    git clone https://github.com/JackYFL/EMMA_CoTEX_ABAW4 /tmp/original
    pip install --no-deps --target /tmp/timm0412 timm==0.4.12
    python benchmarks/bench_original.py --repo /tmp/original --timm /tmp/timm0412 --model emma --threads 2
    python benchmarks/bench.py train --model emma --vit base --batch-size 8 --threads 2    # ours, beside it

The original step, as its training scripts run it: forward in fp32 (it has no autocast), its loss, backward through
its ``NativeScalerWithGradNormCount`` (a CUDA GradScaler, inactive on a CPU) with clipping at 0.05, AdamW over its
layer-decay groups (and EMMA's separate Adam for the VA head), the lr set by its schedule at each update. EMMA's DAN
gets random weights (the step costs the same); masked CoTEX runs two ViT-B with mask 0.75.
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


def original(module: str):
    """A module of the original's checkout (its ``utils`` package, not this project's)."""
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


def _shim_removed_names(torch) -> None:
    """Names the original (written for torch 1.7) imports and later releases removed (``torch._six``), and its
    moves of tensors and modules to CUDA made no-ops without a GPU."""
    import collections.abc
    import math
    import types

    six = types.ModuleType("torch._six")
    six.inf, six.string_classes, six.container_abcs = math.inf, (str, bytes), collections.abc
    sys.modules.setdefault("torch._six", six)
    # Its code moves tensors and modules to CUDA by name; on a CPU-only machine they stay where they are.
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", required=True, help="a checkout of JackYFL/EMMA_CoTEX_ABAW4")
    parser.add_argument("--timm", required=True, help="folder holding timm 0.4.12 (pip install --target)")
    parser.add_argument("--model", choices=["emma", "cotex"], default="emma")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="measured optimizer steps (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="measurements; the final line is the best")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--vit-num", type=int, default=2, help="CoTEX's ViTs (default: %(default)s)")
    parser.add_argument("--mask-ratio", type=float, default=0.75, help="CoTEX's mask ratio (default: %(default)s)")
    opts = parser.parse_args(argv)
    for path, what in ((opts.repo, "--repo"), (opts.timm, "--timm")):
        if not os.path.isdir(path):
            raise SystemExit(f"error: {what} {path} is not a directory")
    # The original's packages (net, utils) and its timm come first; this project's own are not on the path.
    sys.path[:0] = [os.path.abspath(opts.repo), os.path.abspath(opts.timm)]

    import torch

    _shim_removed_names(torch)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    lr_sched, misc = original("utils.lr_sched"), original("utils.misc")

    torch.manual_seed(0)
    models, optimizer, extra_optimizers, forward_loss, labels = (build_emma if opts.model == "emma" else
                                                                build_cotex)(opts, torch)
    for model in models:
        model.train()
    scaler = misc.NativeScalerWithGradNormCount()
    schedule = argparse.Namespace(lr=1e-4, min_lr=1e-6, warmup_epochs=0, epochs=30, epoch_num=30)
    generator = torch.Generator().manual_seed(0)
    # uint8 frames of the model's size, normalised per step as a loader's ToTensor + Normalize would leave them
    frames = torch.randint(0, 256, (opts.batch_size, 3, 224, 224), dtype=torch.uint8, generator=generator)
    targets = labels(generator)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    parameters = [p for model in models for p in model.parameters()]

    def step(index: int) -> None:
        images = (frames.float() / 255 - mean) / std
        lr_sched.adjust_learning_rate(optimizer, 10 + index / 100, schedule)
        loss = forward_loss(images, targets)
        scaler(loss, optimizer, clip_grad=0.05, parameters=parameters, create_graph=False, update_grad=True)
        for other in extra_optimizers:
            other.step()
        optimizer.zero_grad()
        for other in extra_optimizers:
            other.zero_grad()

    for index in range(opts.warmup):
        step(index)
    settings = dict(bench="train", implementation="original", model=opts.model, vit="base",
                    batch_size=opts.batch_size, steps=opts.steps, img_size=224, precision="fp32",
                    mask_ratio=opts.mask_ratio if opts.model == "cotex" else None,
                    vit_num=opts.vit_num if opts.model == "cotex" else None, threads=torch.get_num_threads(),
                    torch=torch.__version__, device=f"cpu ({os.cpu_count()} cores)",
                    load_avg_1m=round(os.getloadavg()[0], 2))
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
    best = max(records, key=lambda record: record["img_per_s"])
    emit(dict(best, run="best", final=True, runs=len(records), img_per_s_runs=[r["img_per_s"] for r in records]))


if __name__ == "__main__":
    main()
