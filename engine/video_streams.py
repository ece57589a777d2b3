"""The streams of a video-level track's split, extracted once and reused: sound, the organisers' pre-extracted
features and transcript embeddings, each a short sequence per video (``datasets.video_level.VideoStreams``). The
face frames' stream comes from ``engine.features`` (a backbone's per-frame features, cached by content key).

- Sound: the video's recording (any file PyAV decodes: WAV, MP3, a video's sound stream) at the encoder's rate,
  encoded by ``--audio`` (log-mel or a speech encoder, ``engine.audio_features.AudioSource``), then pooled into at
  most ``max_tokens`` windows of ``--audio-window`` seconds spread over the recording (mean and standard deviation
  of the encoder's features in each window). A video without a recording has no sound stream.
- Pre-extracted features (``.pkl`` with numpy arrays only, or ``.npy``): the sequence shortened to at most
  ``max_tokens`` rows by segment means.
- Transcripts: one embedding per chunk of words (``models.text.TextEncoder``), at most ``max_tokens`` chunks.

A split's extracted streams are ``<feature-dir>/streams-<key>/<split>.npz``, whose key hashes the source (encoder and
settings), the split's videos and every file read (its bytes); rank 0 extracts and writes, the other processes read
the file, so every process sees the same values.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np

from datasets.tracks.base import VideoSplit, read_feature_sequence
from datasets.video_level import relative_times, segment_means
from engine.features import optional_file_sha256
from utils import dist
from utils.atomic import atomic_write
from utils.errors import UserError
from utils.monitor import log

FORMAT = 1


def decode_sound(path: str, sample_rate: int) -> np.ndarray:
    """The whole recording of ``path`` as float32 mono samples at ``sample_rate`` (empty without a sound stream)."""
    from datasets.media.video import MediaError, read_audio

    try:
        chunks = list(read_audio(path, 0.0, sample_rate))
    except MediaError as error:
        raise UserError(str(error)) from None
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def sound_sequence(source, path: str, device, autocast, max_tokens: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(features (T, source.dim), times (T,)) of one recording, or None for a file without sound."""
    from datasets.media.audio import LogMel, pool_windows

    wave = decode_sound(path, source.sample_rate)
    duration = len(wave) / source.sample_rate
    if duration <= 0:
        return None
    encoder = source.encoder
    sequence = encoder.encode(wave, device) if isinstance(encoder, LogMel) else encoder.encode(wave, device, autocast)
    count = max(1, min(max_tokens, math.ceil(duration / (source.window_s / 2))))
    centres = (np.arange(count) + 0.5) * duration / count
    features, available = pool_windows(sequence, encoder.offset_s, encoder.hop_s, centres, source.window_s)
    if not available.any():
        return None
    return features[available], (centres[available] / duration).astype(np.float32)


class StreamSource:
    """One extra stream of a split: its name, the key of its settings, and how a video's sequence is made."""

    def __init__(self, name: str, key: str, dim: int | None):
        self.name, self.key, self.dim = name, key, dim

    def files(self, item) -> list[str | None]:
        """The files a video's sequence is made from (their bytes go into the cache key)."""
        return []

    def content(self, item) -> str:
        """What else a video's sequence is made from (the transcript's words), for the cache key."""
        return ""

    def extract(self, item):
        raise NotImplementedError


class SoundSource(StreamSource):
    def __init__(self, audio, device, autocast, max_tokens: int):
        super().__init__("audio", json.dumps([audio.key, max_tokens]), audio.dim)
        self.audio, self.device, self.autocast, self.max_tokens = audio, device, autocast, max_tokens

    def files(self, item):
        return [item.audio]

    def extract(self, item):
        if not item.audio:
            return None
        if not os.path.isfile(item.audio):
            raise UserError(f"{item.audio}: the sound of video {item.id} is not there")
        return sound_sequence(self.audio, item.audio, self.device, self.autocast, self.max_tokens)


class FeatureFileSource(StreamSource):
    """The organisers' pre-extracted features of one name (e.g. ``vit``, ``wav2vec2``)."""

    def __init__(self, name: str, max_tokens: int):
        super().__init__(f"track:{name}", json.dumps(["features", name, max_tokens]), None)
        self.feature, self.max_tokens = name, max_tokens

    def files(self, item):
        return [item.features.get(self.feature)]

    def extract(self, item):
        path = item.features.get(self.feature)
        if not path:
            return None
        values = segment_means(read_feature_sequence(path), self.max_tokens)
        return values, relative_times(len(values))


class TextSource(StreamSource):
    def __init__(self, encoder, max_tokens: int):
        super().__init__("text", json.dumps([encoder.describe(), max_tokens]), encoder.dim)
        self.encoder, self.max_tokens = encoder, max_tokens

    def extract(self, item):
        chunks = [text for _, _, text in (item.transcript or []) if text and text.strip()]
        if not chunks:
            return None
        if len(chunks) > self.max_tokens:  # neighbouring chunks joined, so that no words are left out
            bounds = np.linspace(0, len(chunks), self.max_tokens + 1).round().astype(np.int64)
            chunks = [" ".join(chunks[start:end]) for start, end in zip(bounds[:-1], bounds[1:])]
        values = self.encoder.encode(chunks)
        return values.astype(np.float32), relative_times(len(values))

    def content(self, item) -> str:
        return json.dumps(item.transcript or [])


def split_key(source: StreamSource, split: VideoSplit) -> str:
    digest = hashlib.sha256(json.dumps([FORMAT, source.key, split.ids]).encode())
    for item in split.items:
        digest.update(json.dumps([optional_file_sha256(path) for path in source.files(item)]).encode())
        digest.update(source.content(item).encode())
    return digest.hexdigest()


def split_stream(source: StreamSource, split_name: str, split: VideoSplit, feature_dir: str) -> tuple[list, list, int]:
    """(values per video, times per video, dim) of one stream over a split: from the cache when its key matches,
    else extracted by rank 0."""
    key = dist.broadcast_object(split_key(source, split) if dist.is_main() else None)
    folder = os.path.join(feature_dir, f"streams-{hashlib.sha256(source.key.encode()).hexdigest()[:16]}")
    path = os.path.join(folder, f"{split_name}.npz")
    if dist.is_main():
        if _cached_key(path) != key:
            _extract(source, split_name, split, path, key)
        else:
            log(f"{split_name} {source.name} stream: reusing {path}")
    dist.barrier()
    return _load(path, key, len(split.items), source.name)


def _cached_key(path: str) -> str | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return str(data["key"])
    except (OSError, ValueError, KeyError):
        return None


def _extract(source: StreamSource, split_name: str, split: VideoSplit, path: str, key: str) -> None:
    from tqdm import tqdm

    values, times, dims = [], [], set()
    for item in tqdm(split.items, desc=f"{source.name} {split_name}", unit="video", leave=False,
                     disable=len(split.items) < 20):
        made = source.extract(item)
        if made is None:
            values.append(None), times.append(None)
            continue
        value, time = made
        dims.add(value.shape[1])
        values.append(np.asarray(value, np.float32)), times.append(np.asarray(time, np.float32))
    if len(dims) > 1:
        raise UserError(f"{source.name}: the videos of {split.source} have features of different widths "
                        f"({', '.join(map(str, sorted(dims)))}); one width is needed")
    dim = dims.pop() if dims else (source.dim or 0)
    lengths = np.array([0 if value is None else len(value) for value in values], np.int64)
    present = np.array([value is not None for value in values], bool)
    stacked = np.concatenate([value for value in values if value is not None]) if present.any() else \
        np.zeros((0, dim), np.float32)
    stacked_times = np.concatenate([time for time in times if time is not None]) if present.any() else \
        np.zeros(0, np.float32)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path, "wb") as handle:
        np.savez(handle, key=np.array(key), values=stacked, times=stacked_times, lengths=lengths, present=present,
                 dim=np.array(dim))
    log(f"{split_name} {source.name} stream: {int(present.sum())} of {len(values)} videos, {dim} values per step "
        f"-> {path}")


def _load(path: str, key: str, videos: int, name: str) -> tuple[list, list, int]:
    with np.load(path, allow_pickle=False) as data:
        if str(data["key"]) != key or len(data["lengths"]) != videos:
            raise UserError(f"{path}: another run rewrote this {name} cache while this one read it; run again")
        values, times, lengths, present = data["values"], data["times"], data["lengths"], data["present"]
        dim = int(data["dim"])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    per_video = [values[offsets[v]:offsets[v + 1]] if present[v] else None for v in range(videos)]
    per_time = [times[offsets[v]:offsets[v + 1]] if present[v] else None for v in range(videos)]
    return per_video, per_time, dim
