"""Optimiser parameter groups and the learning-rate schedule of the reference recipes.

- The ViT's parameters get layer-wise lr decay groups from timm (``param_groups_layer_decay``); each group carries an
  ``lr_scale`` that the schedule multiplies in at every update.
- A group marked ``fixed_lr`` keeps that lr for the whole run (EMMA's VA head: the reference trained it with its own
  Adam at a constant 1e-4).
- Schedule: linear warm-up, then half-cycle cosine down to ``min_lr``, evaluated at the fractional epoch of each
  optimizer update (the MAE fine-tuning rule).
"""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_layer_decay


def scaled_lr(blr: float, batch_size: int, accum_iter: int, world_size: int) -> float:
    """lr = blr * effective batch / 256 (the MAE rule), counting every process."""
    return blr * batch_size * accum_iter * world_size / 256


def vit_param_groups(vit: torch.nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """Layer-decay groups of a ViT; no weight decay on biases, norms, tokens and position embeddings."""
    skip = set(vit.no_weight_decay()) if hasattr(vit, "no_weight_decay") else set()
    groups = param_groups_layer_decay(vit, weight_decay=weight_decay, no_weight_decay_list=skip,
                                      layer_decay=layer_decay)
    # timm puts the final norm with the last block; the MAE recipe gives it the head's scale (1.0). Move it there.
    final_norm = {id(p) for name, p in vit.named_parameters() if name.startswith("norm.")}
    moved = []
    for group in groups:
        kept = [p for p in group["params"] if id(p) not in final_norm]
        moved += [p for p in group["params"] if id(p) in final_norm]
        group["params"] = kept
    groups = [g for g in groups if g["params"]]
    if moved:
        groups.append({"params": moved, "weight_decay": 0.0, "lr_scale": 1.0})
    return groups


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups of a model trained from scratch at one lr: matrices decay, and biases, norms and the names in
    ``model.no_weight_decay()`` (learned embeddings) do not."""
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 or name in skip else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]


def build_optimizer(param_groups: list[dict], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the groups, fused where the device has the kernel (same arithmetic; one pass over the parameters
    instead of several: on a CPU a ViT-B step takes 0.1 s instead of 0.4 s)."""
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.999), fused=fused)


class WarmupCosine:
    """lr(epoch) = warm-up then half-cycle cosine; :meth:`apply` writes it into every group (times ``lr_scale``)."""

    def __init__(self, lr: float, min_lr: float, warmup_epochs: float, epochs: float):
        self.lr, self.min_lr, self.warmup_epochs, self.epochs = lr, min_lr, warmup_epochs, epochs

    def value(self, epoch: float) -> float:
        if epoch < self.warmup_epochs:
            return self.lr * epoch / self.warmup_epochs
        span = max(self.epochs - self.warmup_epochs, 1e-12)
        progress = min((epoch - self.warmup_epochs) / span, 1.0)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, epoch: float) -> float:
        lr = self.value(epoch)
        for group in optimizer.param_groups:
            if group.get("fixed_lr") is not None:
                group["lr"] = group["fixed_lr"]
            else:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr
