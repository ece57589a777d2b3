"""A Hugging Face speech encoder (Wav2Vec2, HuBERT, WavLM) as an audio feature encoder of the temporal stage.

``--audio PATH_OR_ID`` names a folder written by ``save_pretrained`` (or a hub id already in the local Hugging Face
cache: nothing is downloaded). ``--audio-layer k`` takes hidden state k (0: the convolutional features after the
positional convolution, k: the output of transformer layer k); the layers above k are not run. Middle layers hold
more of the speaker's voice and prosody than the last ones, which a speech model tunes towards words, so the default
is the middle layer.

A long recording is encoded in chunks of ``CHUNK_S`` seconds that overlap by ``2 * OVERLAP_S``; each output element
comes from the chunk where it has at least ``OVERLAP_S`` of context on both sides (or the recording's edge), so memory
stays bounded on a 15-minute video and, for a layer whose context is shorter than the overlap, the result equals one
pass over the whole recording. Chunks of one length run in batches of ``batch_size`` on the device, under the run's
autocast (bf16 where ``--precision auto`` picks it).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from datasets.media.audio import SAMPLE_RATE, chunk_starts
from utils.errors import UserError

CHUNK_S = 20.0
OVERLAP_S = 2.0


def folder_sha256(folder: str) -> str:
    """A digest of every file of a model folder: names and bytes."""
    digest = hashlib.sha256()
    for base, dirs, names in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(base, name)
            digest.update(os.path.relpath(path, folder).encode() + b"\0")
            with open(path, "rb") as handle:
                while block := handle.read(1 << 24):
                    digest.update(block)
    return digest.hexdigest()


def resolve_folder(source: str) -> str:
    """A local model folder, or a hub id's snapshot in the local Hugging Face cache; else a one-line error."""
    if os.path.isdir(source):
        return source
    if os.path.exists(source):
        raise UserError(f"--audio {source}: a file, not a speech encoder folder (one written by save_pretrained, "
                        f"with config.json and the weights)")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(source, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means: not there without the network
        raise UserError(f"--audio {source}: no such folder, and no model of that id in the local Hugging Face "
                        f"cache (nothing is downloaded at run time; fetch it once with `huggingface-cli download "
                        f"{source}`)") from None


class SpeechEncoder:
    """A speech encoder's hidden states as an audio feature sequence (``datasets.media.audio`` interface)."""

    name = "speech"

    def __init__(self, model, layer: int | None = None, source: str = "", sha256: str = "", preprocessor=None,
                 batch_size: int = 8, chunk_s: float = CHUNK_S, overlap_s: float = OVERLAP_S):
        """``model``: a loaded Wav2Vec2-like model (:meth:`load` reads one from a folder or the cache)."""
        config = model.config
        if not all(hasattr(model, part) for part in ("feature_extractor", "encoder")) or \
                not hasattr(config, "conv_stride"):
            raise UserError(f"--audio {source}: a {type(model).__name__}, not a speech encoder (Wav2Vec2, HuBERT, "
                            f"WavLM or another model with a convolutional feature extractor)")
        layers = int(config.num_hidden_layers)
        self.layer = layers // 2 if layer is None else int(layer)
        if not 0 <= self.layer <= layers:
            raise UserError(f"--audio-layer {self.layer}: {source} has hidden states 0 to {layers}")
        # Layers above the chosen one are not run; one more is kept so that hidden state k is the intermediate one
        # even in models whose last hidden state gets a final layer norm.
        model.encoder.layers = model.encoder.layers[:min(layers, self.layer + 1)]
        self.model, self.source, self.sha256 = model.eval(), source, sha256
        self.dim = int(config.hidden_size)
        self.stride = int(np.prod(config.conv_stride))
        span = config.conv_kernel[0]
        for kernel, previous in zip(config.conv_kernel[1:], np.cumprod(config.conv_stride)[:-1]):
            span += (kernel - 1) * int(previous)
        self.span = int(span)
        preprocessor = preprocessor or {}
        self.sample_rate = int(preprocessor.get("sampling_rate", SAMPLE_RATE))
        self.normalize = bool(preprocessor.get("do_normalize", True))
        self.batch_size = batch_size
        self.chunk = max(self.span, int(chunk_s * self.sample_rate) // self.stride * self.stride)
        self.overlap = int(overlap_s * self.sample_rate) // self.stride * self.stride

    @classmethod
    def load(cls, source: str, layer: int | None = None, sha256: str | None = None, **settings) -> SpeechEncoder:
        """The encoder of a ``save_pretrained`` folder or a cached hub id; an unreadable one is a one-line error."""
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # the loader's per-weight progress bar, for a small file
        folder = resolve_folder(source)
        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            model = AutoModel.from_pretrained(folder, config=config, local_files_only=True)
        except Exception as error:  # noqa: BLE001 - transformers raises many kinds for a bad folder
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"--audio {source}: not a readable speech encoder folder ({reason[:200]})") from None
        preprocessor = {}
        path = os.path.join(folder, "preprocessor_config.json")
        if os.path.isfile(path):
            with open(path) as handle:
                preprocessor = json.load(handle)
        return cls(model, layer, source, sha256 or folder_sha256(folder), preprocessor, **settings)

    @property
    def hop_s(self) -> float:
        return self.stride / self.sample_rate

    @property
    def offset_s(self) -> float:
        return self.span / 2 / self.sample_rate

    def describe(self) -> dict:
        return {"encoder": self.name, "model": self.source, "sha256": self.sha256, "layer": self.layer,
                "sample_rate": self.sample_rate, "normalize": self.normalize}

    def _run(self, waves: torch.Tensor) -> torch.Tensor:
        return self.model(waves, output_hidden_states=True).hidden_states[self.layer]

    def encode(self, wave: np.ndarray, device=None, autocast=None) -> np.ndarray:
        """A whole recording -> (elements, dim) float32, chunk by chunk (module docstring)."""
        import contextlib

        device = device or torch.device("cpu")
        autocast = autocast or contextlib.nullcontext
        self.model.to(device)
        wave = np.asarray(wave, np.float32)
        if len(wave) < self.span:
            return np.zeros((0, self.dim), np.float32)
        if self.normalize:  # the feature extractor's per-recording normalisation, over the whole recording
            wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
        starts = chunk_starts(len(wave), self.chunk, self.overlap, self.stride)
        outputs = {}
        full = [start for start in starts if start + self.chunk <= len(wave)]
        groups = [full[i:i + self.batch_size] for i in range(0, len(full), self.batch_size)]
        groups += [[start] for start in starts if start + self.chunk > len(wave)]
        with torch.inference_mode():
            for group in groups:
                end = min(group[0] + self.chunk, len(wave))
                batch = torch.from_numpy(np.stack([wave[start:start + end - group[0]] for start in group]))
                with autocast():
                    hidden = self._run(batch.to(device))
                for start, states in zip(group, hidden.float().cpu().numpy()):
                    outputs[start] = states
        pieces, done = [], 0
        for k, start in enumerate(starts):
            first = start // self.stride
            states = outputs[start]
            keep_end = first + len(states) if k == len(starts) - 1 else (start + self.chunk - self.overlap) // \
                self.stride
            pieces.append(states[done - first:keep_end - first])
            done = keep_end
        return np.concatenate(pieces).astype(np.float32)
