"""Temporal checkpoints of ``main_temporal.py`` in ``predict.py``: a sequence model over the per-frame features of a
frozen frame model, with the video's sound when it was trained with it.

While the video streams, each aligned face gets the features of the checkpoint's backbone (the parts and precision
it was trained on, ``engine.features``); once the tracks are final, each track's faces are a sequence (its frames
in order, the gaps between them kept), cut into the checkpoint's windows and assembled per frame as
``main_temporal.py --eval`` does (``datasets.temporal.WindowSet``). The sound is the video's own, resampled to the
encoder's rate and rounded to 16-bit as ``main_prepare.py``'s WAV, pooled around each frame's time
(``datasets.media.audio.pool_windows``); a video without sound is predicted with the sound masked, as the model
learnt with its modality dropout, and a warning says so.
"""

from __future__ import annotations

import numpy as np
import torch

from datasets.media.video import first_frame_time, probe, read_audio
from utils.errors import UserError
from utils.monitor import warn


def is_sequence_model(config: dict) -> bool:
    """Whether a checkpoint's model reads per-frame features of another model (a temporal checkpoint)."""
    return "features" in config


def precision_flag(name) -> str:
    """A feature key's precision name (``float32``/``fp32``, ``bfloat16``, ``float16``) as a ``--precision`` value."""
    return {"bfloat16": "bf16", "float16": "fp16"}.get(str(name), "fp32")


class SequencePredictor:
    """The frame features and the per-frame outputs of one temporal checkpoint (``task`` has loaded ``model``)."""

    def __init__(self, task, model, device: torch.device, autocast, batch_size: int):
        from datasets.transforms import BatchTransform
        from engine.features import Extraction
        from engine.runtime import make_autocast, resolve_precision

        self.task, self.model, self.device, self.autocast = task, model, device, autocast
        self.batch_size = batch_size
        backbone = task.backbone
        self.frame_model = backbone.model().to(device).eval() if backbone.parts else None
        # the backbone runs at the precision its features were extracted with in training (the checkpoint's key)
        self.frame_autocast = make_autocast(device, resolve_precision(task.args.precision, device))
        if self.frame_model is not None:
            self.extraction = Extraction(backbone.parts, 0)
            self.transform = BatchTransform(self.frame_model.config["img_size"])
            with torch.inference_mode(), self.frame_autocast():
                probe_batch = self.transform(torch.zeros(1, 3, 112, 112, dtype=torch.uint8, device=device))
                parts = self.frame_model.features(probe_batch)
            self.columns, first = {}, 0
            for part in backbone.parts:
                self.columns[part] = (first, first + parts[part].shape[1])
                first += parts[part].shape[1]
            self.width = first
        else:
            self.columns, self.width = {}, 0

    @torch.inference_mode()
    def features(self, crops: np.ndarray) -> np.ndarray:
        """The backbone's features of aligned uint8 crops (N, H, W, 3)."""
        if self.frame_model is None:
            return np.zeros((len(crops), 0), np.float32)
        batch = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).to(self.device)
        with self.frame_autocast():
            return self.extraction.predict(self.frame_model, self.transform(batch)).float().cpu().numpy()

    def outputs(self, path: str, features: np.ndarray, tracks: np.ndarray, frames: np.ndarray,
                times: np.ndarray) -> np.ndarray:
        """Per-face output rows from the faces' features, tracks, frame numbers and frame times (s) (rows in any
        order)."""
        from datasets.temporal import WindowSet, collate_windows
        from engine.evaluate import eval_loader, predict

        if len(features) == 0:
            return np.zeros((0, self.task.output_width // self.task.window), np.float32)
        images = [f"{track}/{frame:05d}.jpg" for track, frame in zip(tracks, frames)]
        sound = self._sound(path, np.asarray(times, np.float64))
        centre = self.columns.get("vit") if self.task.video_norm == "mean" else None
        windows = WindowSet(features, images, self.task.window, self.task.stride, None, centre, **sound)
        loader = eval_loader(windows, self.batch_size, 0, self.device, collate_windows)
        outputs, predicted = predict(self.task, self.model, loader, lambda inputs: inputs, self.autocast,
                                     self.device, desc="sequences")
        if not predicted.all():  # every face is in some window; a row left out would be a bug
            raise RuntimeError(f"{int((~predicted).sum())} faces were not predicted by the temporal model")
        return outputs

    def _sound(self, path: str, times: np.ndarray) -> dict:
        """The window set's audio arguments for faces at ``times`` (none when the model has no sound)."""
        source = self.task.audio
        if source is None:
            return {}
        if not probe(path).has_audio:
            warn(f"{path} has no sound; {self.task.prog} trained this checkpoint with sound ({source.choice}): "
                 f"predicted with the sound masked")
            return dict(audio=np.zeros((len(times), source.dim), np.float32),
                        audio_available=np.zeros(len(times), bool), audio_centre=self.task.audio_norm == "mean")
        chunks = list(read_audio(path, first_frame_time(path), source.sample_rate))
        wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        # as the 16-bit WAV of main_prepare.py that training read
        wave = (np.round(np.clip(wave, -1.0, 1.0) * 32767.0) / 32768.0).astype(np.float32)
        from datasets.media.audio import LogMel, pool_windows

        encoder = source.encoder
        if isinstance(encoder, LogMel):  # in fp32 always (engine.audio_features)
            sequence = encoder.encode(wave, self.device)
        else:
            sequence = encoder.encode(wave, self.device, self.autocast)
        audio, available = pool_windows(sequence, encoder.offset_s, encoder.hop_s, times, source.window_s)
        if not available.any():
            warn(f"{path}: its sound does not reach any face's frame; predicted with the sound masked")
        return dict(audio=audio, audio_available=available, audio_centre=self.task.audio_norm == "mean")


def no_images(prog: str) -> UserError:
    return UserError(f"a temporal checkpoint ({prog}) predicts the frames of a video in sequence; for images and "
                     f"single faces give a frame model's checkpoint (main_mtl.py)")
