"""Sequence models over per-frame features of a video window: the temporal stage (``main_temporal.py``).

Input of a window of T frames: features (B, T, D) from a frozen backbone, each frame's gap to the previous listed
frame of its video (B, T; frame-number differences, as ABAW's annotated frames are a subsample of the video), and a
validity mask (B, T; False on padding and on frames without a feature). Output: one MTL row per frame (B, T, 22).

- ``transformer`` (default): input projection, sinusoidal or learned positions, pre-norm encoder layers with the
  padding masked out of attention (the second stage of the ABAW5-7 winners: 4 layers, 4 heads, width 128).
- ``tcn``: residual blocks of dilated 1-D convolutions (kernel ``kernel``, dilation 1, 2, 4, ...), each frame seeing a
  centred neighbourhood; padding is zeroed after every block so it never leaks into real frames.

Sound (``audio_dim`` > 0): a second stream of per-frame audio features (B, T, A) with its own mask (B, T; False where
a frame has no sound: a silent video, a frame past the end of the recording, or a window whose audio training dropped),
fused in one of two ways before the sequence model:

- ``concat``: each stream its own projection (the visual one to ``width - audio_width``, the audio one to
  ``audio_width``), joined per frame into one token of ``width``; a frame without sound has its audio input zeroed
  and a "no sound" flag set, which the audio projection reads.
- ``cross``: the visual tokens (width) attend to the window's audio tokens (width, positions added to both) in one
  pre-norm cross-attention block with a residual, frames without sound masked out of the keys.

``features`` (``in_dim`` 0) may be left out for a model of the sound alone: its visual stream is then the frame gaps
only. A config without audio entries builds the visual-only model with the same parameter names as before sound
existed, so older checkpoints load and predict unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.weights import constructor_arguments
from utils.abaw import OUTPUT_WIDTH
from utils.errors import UserError

KINDS = ('transformer', 'tcn')
FUSIONS = ('concat', 'cross')
POSITIONS = ('sinusoidal', 'learned')
MAX_GAP = 100  # frame gaps are clipped here before the log (a longer hole in the annotation means "far")


def sinusoidal_table(length: int, width: int) -> Tensor:
    """The fixed (length, width) table of "Attention is all you need" (sin on even, cos on odd columns)."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float64) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return table.float()


class TemporalModel(nn.Module):
    """``features``: a plain record of the features it was trained on (backbone, content key, parts), kept in the
    config so that evaluation can refuse features of another backbone; it does not change the network."""

    def __init__(self, in_dim: int, kind: str = 'transformer', width: int = 128, layers: int = 4, heads: int = 4,
                 dropout: float = 0.1, positions: str = 'sinusoidal', window: int = 100, kernel: int = 5,
                 out_width: int = OUTPUT_WIDTH, features: dict | None = None, audio_dim: int = 0,
                 audio_width: int | None = None, fusion: str = 'concat', audio: dict | None = None):
        super().__init__()
        if kind not in KINDS:
            raise UserError(f'unknown temporal model {kind!r}; choose one of {", ".join(KINDS)}')
        if positions not in POSITIONS:
            raise UserError(f'unknown positions {positions!r}; choose one of {", ".join(POSITIONS)}')
        if fusion not in FUSIONS:
            raise UserError(f'unknown fusion {fusion!r}; choose one of {", ".join(FUSIONS)}')
        if (kind == 'transformer' or (audio_dim and fusion == 'cross')) and width % heads:
            raise UserError(f'--width {width} must be a multiple of --heads {heads}')
        if audio_dim and audio_width is None:
            audio_width = width // 2 if fusion == 'concat' else width
        if audio_dim and fusion == 'concat' and not 0 < audio_width < width:
            raise UserError(f'the audio stream\'s width {audio_width} must lie between 0 and --width {width}')
        self.config = dict(name='temporal', in_dim=in_dim, kind=kind, width=width, layers=layers, heads=heads,
                           dropout=dropout, positions=positions, window=window, kernel=kernel, out_width=out_width,
                           features=dict(features or {}))
        if audio_dim:  # recorded only with sound, so that a visual model's config is what it always was
            self.config.update(audio_dim=audio_dim, audio_width=audio_width, fusion=fusion, audio=dict(audio or {}))
        self.kind, self.window = kind, window
        self.audio_dim, self.fusion = audio_dim, fusion
        visual_width = width - audio_width if audio_dim and fusion == 'concat' else width
        self.input_norm = nn.LayerNorm(in_dim) if in_dim else nn.Identity()
        self.embed = nn.Linear(in_dim + 1, visual_width)  # the features and log(1 + gap)
        if audio_dim:
            self.audio_norm = nn.LayerNorm(audio_dim)
            self.audio_embed = nn.Linear(audio_dim + 1, audio_width)  # the audio features and "no sound here"
            if fusion == 'cross':
                self.register_buffer('audio_position', sinusoidal_table(window, width)[None], persistent=False)
                self.cross_query_norm = nn.LayerNorm(width)
                self.cross_key_norm = nn.LayerNorm(width)
                self.cross = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        if kind == 'transformer':
            if positions == 'learned':
                self.position = nn.Parameter(torch.zeros(1, window, width))
                nn.init.trunc_normal_(self.position, std=0.02)
            else:
                self.register_buffer('position', sinusoidal_table(window, width)[None], persistent=False)
            layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation='gelu', batch_first=True,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        else:
            if kernel % 2 == 0:
                raise UserError(f'--tcn-kernel must be odd (a centred neighbourhood), got {kernel}')
            self.blocks = nn.ModuleList(
                nn.Sequential(nn.Conv1d(width, width, kernel, padding=(kernel - 1) // 2 * 2 ** i, dilation=2 ** i),
                              nn.GELU(), nn.Dropout(dropout), nn.Conv1d(width, width, 1))
                for i in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_width)

    @classmethod
    def from_config(cls, config: dict) -> TemporalModel:
        return cls(**constructor_arguments(cls, config))

    def no_weight_decay(self) -> set[str]:
        return {'position'}

    def forward(self, features: Tensor, gaps: Tensor, valid: Tensor, audio: Tensor | None = None,
                audio_valid: Tensor | None = None) -> Tensor:
        length = features.shape[1]
        if length > self.window and (self.kind == 'transformer' or (self.audio_dim and self.fusion == 'cross')):
            raise UserError(f'windows of {length} frames exceed the model\'s {self.window}; lower --window')
        keep = valid.unsqueeze(-1).to(features.dtype)
        gap = torch.log1p(gaps.clamp(0, MAX_GAP).to(features.dtype)).unsqueeze(-1)
        x = self.embed(torch.cat([self.input_norm(features) * keep, gap * keep], dim=-1))
        if self.audio_dim:
            x = self.fuse_audio(x, keep, audio, audio_valid)
        if self.kind == 'transformer':
            x = self.drop(x + self.position[:, :length].to(x.dtype))
            # a window with no valid frame would give NaN attention; let its (ignored) rows attend to themselves
            empty = ~valid.any(dim=1, keepdim=True)
            x = self.encoder(x, src_key_padding_mask=~(valid | empty))
        else:
            x = self.drop(x) * keep
            x = x.transpose(1, 2)
            mask = keep.transpose(1, 2)
            for block in self.blocks:
                x = (x + block(x)) * mask
            x = x.transpose(1, 2)
        return self.head(self.norm(x))

    def fuse_audio(self, x: Tensor, keep: Tensor, audio: Tensor | None, audio_valid: Tensor | None) -> Tensor:
        """The visual tokens ``x`` (B, T, visual width) joined with the audio stream (module docstring)."""
        batch, length = x.shape[:2]
        if audio is None:  # no sound given: every frame without it
            audio = x.new_zeros(batch, length, self.audio_dim)
            audio_valid = torch.zeros(batch, length, dtype=torch.bool, device=x.device)
        heard = (audio_valid & (keep[..., 0] > 0)).unsqueeze(-1).to(x.dtype)
        tokens = self.audio_embed(torch.cat([self.audio_norm(audio.to(x.dtype)) * heard, 1.0 - heard], dim=-1))
        if self.fusion == 'concat':
            return torch.cat([x, tokens * keep], dim=-1)
        position = self.audio_position[:, :length].to(x.dtype)
        keys = self.cross_key_norm(tokens + position)
        silent = heard[..., 0] == 0
        none_heard = silent.all(dim=1, keepdim=True)  # attention over no key at all would give NaN
        heard_out, _ = self.cross(self.cross_query_norm(x + position), keys, keys,
                                  key_padding_mask=silent & ~none_heard, need_weights=False)
        return x + heard_out * (~none_heard).unsqueeze(-1).to(x.dtype) * keep
