"""What a run needs around its life cycle: loaders, device precision, attention kernel, memory policy, seeds, and
the optimiser set-up of the lr rule.

``engine.runner`` (training and evaluation runs) and ``benchmarks/bench.py`` build their runs from these, so a
benchmark measures exactly what a run does.
"""

from __future__ import annotations

import ctypes
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from datasets.transforms import AugmentedDataset, EpochKeys
from utils import dist
from utils.optim import WarmupCosine, build_optimizer, scaled_lr


def make_train_loader(train_set, augment, batch_size: int, num_workers: int, device: torch.device, seed: int,
                      shard: bool = True) -> tuple[DataLoader, EpochKeys]:
    """The training loader: this rank's shuffled shard (the whole set without ``shard``), augmented by ``augment``
    in the workers, as uint8 batches of the model's size (pinned for a GPU); returns it and its sampler
    (``set_epoch``, and ``skip`` for a mid-epoch resume).

    Workers stay alive across epochs (an epoch of small frames is short, and starting workers costs a fork and
    imports each time) and keep four batches ready each.
    """
    replicas, rank = (dist.world_size(), dist.rank()) if shard else (1, 0)
    sampler = EpochKeys(DistributedSampler(train_set, num_replicas=replicas, rank=rank, shuffle=True, seed=seed,
                                           drop_last=True))
    loader_kwargs = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=augment.collate,
                         pin_memory=device.type == "cuda", drop_last=True,
                         # worker seeds from the loader's own generator: creating an iterator (again after a resume)
                         # leaves the global one, and with it the rest of the run, untouched
                         generator=torch.Generator().manual_seed(seed + rank))
    if num_workers > 0:
        loader_kwargs.update(persistent_workers=True, prefetch_factor=4)
    return DataLoader(AugmentedDataset(train_set, augment, seed), sampler=sampler, **loader_kwargs), sampler


def resolve_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32. auto: bf16 where the device computes it natively, else fp32."""
    if choice == "fp32":
        return None
    if choice == "fp16":
        return torch.float16
    if choice == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if _cpu_has_native_bf16() else None


# CPU flags (as /proc/cpuinfo names them) of instructions that compute bf16 products natively: x86's AVX512_BF16 and
# AMX, Arm's BF16 extension. oneDNN also "supports" bf16 on plain AVX-512 by emulation, 3x slower than fp32.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags of the first CPU listed in ``path`` (empty where there is no such file)."""
    try:
        with open(path) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def _cpu_has_native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in NATIVE_BF16_CPU_FLAGS)


def describe_precision(choice: str, dtype: torch.dtype | None, device: torch.device) -> str:
    """E.g. 'precision fp32 (auto: this CPU has no native bf16); device cpu'."""
    name = "fp32" if dtype is None else str(dtype).replace("torch.", "").replace("bfloat16", "bf16")
    if choice == "auto":
        where = "this GPU" if device.type == "cuda" else "this CPU"
        name += f" (auto: {where} {'computes bf16 natively' if dtype else 'has no native bf16'})"
    return f"precision {name}; device {device}"


def make_autocast(device: torch.device, dtype: torch.dtype | None):
    def autocast():
        return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
    return autocast


def choose_attention_kernel(model, device: torch.device, dtype: torch.dtype | None) -> bool:
    """Use timm's fused attention (``scaled_dot_product_attention``) where it is the faster kernel; returns whether.

    Everywhere but bf16 on a CPU: there PyTorch's flash kernel is slower than timm's explicit product, softmax and
    product (with the latter, EMMA ViT-B trains 9% and masked CoTEX 12% more images/s on two cores; measured with
    ``benchmarks/bench.py --attention``). Both compute the same attention.
    """
    fused = not (device.type == "cpu" and dtype == torch.bfloat16)
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    return fused


def keep_freed_memory() -> bool:
    """Let this process (and its loader workers) reuse freed memory instead of returning it to the system.

    glibc gives every block over 32 MiB (a batch of 64 float images is 38 MiB) its own mapping and unmaps it when
    freed, so each new large tensor is zero-filled page by page: on a CPU run that costs more than the image transform
    itself. Raising the mapping and trimming thresholds keeps such blocks for reuse, as a caching allocator would.
    Returns whether it applied (glibc only).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters, glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, (1 << 31) - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model):
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


@dataclass
class Optimisation:
    """The optimiser, the fp16 scaler (inactive unless fp16), the lr schedule, and the lr with how it was derived."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: WarmupCosine
    lr: float
    lr_rule: str


def build_optimisation(task, model, args, device: torch.device, dtype: torch.dtype | None,
                       world_size: int | None = None) -> Optimisation:
    """AdamW over the task's parameter groups at the run's lr: ``--lr``, else ``--blr`` scaled by the effective batch
    (blr * batch * accum * world / 256) where the task's recipe scales it, else ``--blr`` itself."""
    world_size = dist.world_size() if world_size is None else world_size
    scale = task.scales_lr()
    if args.lr is not None:
        lr, rule = args.lr, "--lr"
    elif scale:
        lr, rule = scaled_lr(args.blr, args.batch_size, args.accum_iter, world_size), "scaled"
    else:
        lr, rule = args.blr, "unscaled, as the reference recipe"
    rule = (f"blr {args.blr:g}, batch {args.batch_size} x accum {args.accum_iter} x world {world_size}, {rule}")
    optimizer = build_optimizer(task.param_groups(model), lr, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    schedule = WarmupCosine(lr, args.min_lr, args.warmup_epochs, args.epochs)
    return Optimisation(optimizer, scaler, schedule, lr, rule)
