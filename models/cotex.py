"""Masked CoTEX: K ViTs co-trained on synthetic faces for the LSD track (6 expressions).

In training each ViT sees its own random subset of patches (``mask_ratio``); the loss (cross-entropy plus a
Jensen-Shannon term between the ViTs) lives in ``utils``. In evaluation nothing is masked and the prediction is the sum
of the K logits. Each ViT is kept as ``vits.<k>``; the original code saved one ``vit.*`` state dict per ViT, which
:func:`load_cotex_checkpoint` maps onto them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.vit import build_vit, load_mae_weights, read_mae_state_dict
from models.weights import (
    constructor_arguments,
    extract_state_dict,
    is_state_dict,
    load_exactly,
    read_checkpoint,
    strip_prefix,
)
from utils.errors import UserError


class CoTEX(nn.Module):
    def __init__(self, vit_num: int = 2, num_classes: int = 6, vit_size: str = 'base', img_size: int = 224,
                 drop_path: float = 0.1, global_pool: bool = False, patch_size: int | None = None,
                 patch_embed: str = 'linear', stem_blocks=None):
        super().__init__()
        if vit_num < 1:
            raise UserError(f'CoTEX needs at least one ViT, got vit_num={vit_num}')
        self.config = dict(name='cotex', vit_num=vit_num, num_classes=num_classes, vit_size=vit_size,
                           img_size=img_size, drop_path=drop_path, global_pool=global_pool, patch_size=patch_size,
                           patch_embed=patch_embed)
        if stem_blocks is not None:  # absent means ResNet-18's blocks (or the patchify layer)
            self.config['stem_blocks'] = list(stem_blocks)
        self.vits = nn.ModuleList(
            build_vit(vit_size, img_size, num_classes=num_classes, drop_path=drop_path, global_pool=global_pool,
                      patch_size=patch_size, patch_embed=patch_embed, stem_blocks=stem_blocks)
            for _ in range(vit_num))

    @classmethod
    def from_config(cls, config: dict) -> CoTEX:
        return cls(**constructor_arguments(cls, config))

    def forward(self, x: Tensor, mask_ratio: float = 0.0) -> list[Tensor]:
        """One logits tensor per ViT; each draws its own patch mask (training mode only)."""
        return [vit(x, mask_ratio) for vit in self.vits]

    def predict(self, x: Tensor) -> Tensor:
        """Summed logits of all ViTs on the whole image, as the reference evaluates."""
        return torch.stack([vit(x) for vit in self.vits]).sum(dim=0)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """Per-frame features for a temporal model: the ViTs' pooled features side by side (``vit``)."""
        return {'vit': torch.cat([vit.forward_head(vit.forward_features(x), pre_logits=True) for vit in self.vits],
                                 dim=1)}

    def load_mae(self, sources: str | Sequence, log=print) -> list[dict]:
        """Initialise the ViTs from one MAE checkpoint for all, or from several shared out in order.

        With K ViTs and n sources (K divisible by n), ViTs ``i*K/n .. (i+1)*K/n - 1`` get source ``i``.
        """
        sources = [sources] if isinstance(sources, str) or not isinstance(sources, Sequence) else list(sources)
        vit_num = len(self.vits)
        if not sources or vit_num % len(sources):
            raise UserError(f'{len(sources)} MAE checkpoints cannot be shared out equally among {vit_num} ViTs; '
                            'give one checkpoint or a number that divides --vit-num')
        per_source = vit_num // len(sources)
        reports = []
        for index, source in enumerate(sources):
            state, name = read_mae_state_dict(source)  # read once, used by each of its ViTs
            for vit in self.vits[index * per_source:(index + 1) * per_source]:
                reports.append(load_mae_weights(vit, state, log=log, name=name))
        return reports


def load_cotex_checkpoint(model: CoTEX, path_or_obj, log=print) -> int:
    """Load the original ``{'state_dicts': [one 'vit.*' state dict per ViT], ...}`` files, or this project's
    ``{'model': ...}`` checkpoints. A ``module.`` prefix (DataParallel) is stripped; keys must match exactly."""
    checkpoint, name = read_checkpoint(path_or_obj, 'CoTEX checkpoint')
    what = f'CoTEX ({len(model.vits)} x ViT {model.config["vit_size"]})'
    if isinstance(checkpoint, dict) and 'state_dicts' in checkpoint:
        per_vit = checkpoint['state_dicts']
        if not isinstance(per_vit, (list, tuple)) or not all(is_state_dict(state) for state in per_vit):
            raise UserError(f'{name}: "state_dicts" should be a list of state dicts')
        if len(per_vit) != len(model.vits):
            raise UserError(f'{name} holds {len(per_vit)} ViTs but the model has {len(model.vits)}; '
                            f'set --vit-num {len(per_vit)}')
        state = {}
        for index, vit_state in enumerate(per_vit):
            vit_state = strip_prefix(strip_prefix(dict(vit_state), 'module.'), 'vit.')
            state.update({f'vits.{index}.{key}': value for key, value in vit_state.items()})
    else:
        state = strip_prefix(extract_state_dict(checkpoint, name, ('model', 'state_dict')), 'module.')
    loaded = load_exactly(model, state, name, what)
    epoch = checkpoint.get('epoch') if isinstance(checkpoint, dict) else None
    log(f'CoTEX checkpoint {name}' + (f' (epoch {epoch})' if epoch is not None else '') +
        f': loaded {loaded} tensors into {len(model.vits)} ViTs')
    return loaded
