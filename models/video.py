"""The video-level model: several streams of one video (face-frame features, sound, the organisers' pre-extracted
features, transcript embeddings) read together by one transformer, then one prediction per video (attention
pooling) or per frame.

Each stream is a sequence ``(values (B, T, D), valid (B, T), time (B, T))``: ``time`` is a token's place in its
video, from 0 (start) to 1 (end), so that streams sampled at different rates meet on one clock. A token is its
stream's projection of its values (LayerNorm, then a linear map to the model width), plus a learned embedding of the
stream, plus an embedding of its time (sinusoids of the time, mapped linearly). The tokens of all streams, and one
learned summary token, go through a transformer encoder; padding and missing streams are masked out, and the
summary token keeps every video's attention defined when all its streams are missing.

- ``level="video"``: attention pooling over the valid tokens (a learned score per token, softmax over the video),
  then a linear head of ``out_width`` values.
- ``level="frame"``: one value per token of the first stream (the face frames), each from its own encoded token and
  the video's pooled summary.

The outputs are logits: the stage reads them through a sigmoid (intensities in [0, 1], or the probability of a
binary label).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

TIME_FREQUENCIES = 8  # sinusoids of a token's relative time, at periods from 2 down to 2 / 2 ** 7 of the video


def time_features(time: Tensor) -> Tensor:
    """(B, T) relative times in [0, 1] -> (B, T, 2 * TIME_FREQUENCIES) sines and cosines."""
    scales = math.pi * (2.0 ** torch.arange(TIME_FREQUENCIES, device=time.device, dtype=torch.float32))
    angles = time.float()[..., None] * scales
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class AttentionPool(nn.Module):
    """Softmax-weighted mean of the valid tokens, the weights from a small scoring network."""

    def __init__(self, width: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, tokens: Tensor, valid: Tensor) -> Tensor:
        scores = self.score(tokens).squeeze(-1).float().masked_fill(~valid, float("-inf"))
        weights = scores.softmax(dim=1).to(tokens.dtype)
        return (weights.unsqueeze(-1) * tokens).sum(dim=1)


class VideoModel(nn.Module):
    def __init__(self, streams: list, width: int = 128, layers: int = 1, heads: int = 4, dropout: float = 0.1,
                 out_width: int = 1, level: str = "video", inputs: dict | None = None):
        super().__init__()
        if level not in ("video", "frame"):
            raise ValueError(f"level must be video or frame, got {level!r}")
        if not streams:
            raise ValueError("the video model needs at least one stream")
        self.config = dict(name="video", streams=[[str(name), int(dim)] for name, dim in streams], width=width,
                           layers=layers, heads=heads, dropout=dropout, out_width=out_width, level=level,
                           inputs=dict(inputs or {}))  # what the streams were made from (the stage reads it)
        self.level = level
        self.projections = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width))
                                         for _, dim in streams)
        self.stream_embedding = nn.Parameter(torch.zeros(len(streams), width))
        self.time_embedding = nn.Linear(2 * TIME_FREQUENCIES, width)
        self.summary = nn.Parameter(torch.zeros(1, 1, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.pool = AttentionPool(width)
        self.head = nn.Linear(width if level == "video" else 2 * width, out_width)
        nn.init.trunc_normal_(self.stream_embedding, std=0.02)
        nn.init.trunc_normal_(self.summary, std=0.02)

    @classmethod
    def from_config(cls, config: dict) -> VideoModel:
        return cls(**{key: value for key, value in config.items() if key != "name"})

    def no_weight_decay(self) -> set[str]:
        return {"stream_embedding", "summary"}

    def forward(self, *inputs: Tensor) -> Tensor:
        """``inputs``: values, valid, time of each stream in config order. Returns (B, out_width) logits, or
        (B, T_first_stream) for the frame level (out_width 1)."""
        if len(inputs) != 3 * len(self.projections):
            raise ValueError(f"expected 3 tensors per stream ({len(self.projections)} streams), got {len(inputs)}")
        tokens, masks = [], []
        for index, projection in enumerate(self.projections):
            values, valid, time = inputs[3 * index: 3 * index + 3]
            token = projection(values) + self.stream_embedding[index] + self.time_embedding(time_features(time))
            tokens.append(token)
            masks.append(valid.bool())
        batch = tokens[0].shape[0]
        summary = self.summary.expand(batch, 1, -1).to(tokens[0].dtype)
        x = torch.cat([summary, *tokens], dim=1)
        valid = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=x.device), *masks], dim=1)
        x = self.norm(self.encoder(x, src_key_padding_mask=~valid))
        pooled = self.pool(x, valid)
        if self.level == "video":
            return self.head(pooled)
        frames = x[:, 1:1 + tokens[0].shape[1]]
        joined = torch.cat([frames, pooled.unsqueeze(1).expand_as(frames)], dim=-1)
        return self.head(joined).squeeze(-1)
