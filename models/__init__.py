"""Models of both tracks: EMMA (MTL) and masked CoTEX (LSD), on an MAE-style ViT; the frozen DAN used by EMMA; the MAE
that pretrains their ViT; the temporal model over per-frame features of a video; the video-level model over a
video's streams.

``build_model(config)`` rebuilds a model from the plain ``config`` dict it carries (saved in checkpoints), so a
checkpoint can be evaluated with no model flags.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from models.cotex import CoTEX, load_cotex_checkpoint
from models.dan import DAN, load_dan_weights
from models.emma import EMMA, load_emma_checkpoint
from models.mae import MAE
from models.temporal import TemporalModel
from models.video import VideoModel
from models.vit import VIT_PRESETS, MaskedViT, build_vit, load_mae_weights
from utils.errors import UserError

MODELS = {'emma': EMMA, 'cotex': CoTEX, 'mae': MAE, 'temporal': TemporalModel, 'video': VideoModel}


def build_model(config: Mapping) -> nn.Module:
    """A fresh model from ``{'name': 'emma' | 'cotex' | 'mae' | 'temporal' | 'video', **constructor arguments}`` (e.g.
    ``model.config``)."""
    if not isinstance(config, Mapping) or config.get('name') not in MODELS:
        name = config.get('name') if isinstance(config, Mapping) else config
        raise UserError(f'unknown model {name!r} in model config; expected one of {", ".join(MODELS)}')
    return MODELS[config['name']].from_config(dict(config))


__all__ = [
    'CoTEX', 'DAN', 'EMMA', 'MAE', 'MODELS', 'MaskedViT', 'VIT_PRESETS', 'build_model', 'build_vit',
    'TemporalModel', 'VideoModel', 'load_cotex_checkpoint', 'load_dan_weights', 'load_emma_checkpoint',
    'load_mae_weights',
]
