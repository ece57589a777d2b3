"""The streams of each video of a split, and their batches, for the video-level stage (``models.video``).

A split's streams (:class:`VideoStreams`) hold, for every stream and video, a sequence of feature rows with each
row's relative time in the video (0 at the start, 1 at the end), or nothing where the video lacks that stream (no
face found, no sound, no transcript). A sample is one video (video-level tracks) or one window of ``window``
consecutive face frames of a video with the whole video's other streams (frame-level tracks); a batch pads every
stream to its longest sequence in the batch and masks the padding and the missing streams.

Training drops whole streams of a sample at random (``stream_dropout``, drawn per sample and epoch from the run's
seed by the loader, ``datasets.transforms.sample_rng``), so that the model also predicts videos where a stream is
missing; the face stream of a frame-level sample keeps its positions (its frames are what is predicted) and loses
only its values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

MISSING_FRAME_LABEL = -1.0


@dataclass
class VideoStreams:
    """``values[s][v]``: stream s of video v as (T, dims[s]) float32 or None; ``times[s][v]`` its (T,) times."""

    names: list[str]
    dims: list[int]
    values: list[list[np.ndarray | None]]
    times: list[list[np.ndarray | None]]

    @property
    def videos(self) -> int:
        return len(self.values[0]) if self.values else 0

    def present(self) -> np.ndarray:
        """(streams, videos) bool: which videos have each stream."""
        return np.array([[value is not None and len(value) > 0 for value in stream] for stream in self.values],
                        dtype=bool).reshape(len(self.names), -1)


def evenly_spaced(count: int, most: int) -> np.ndarray:
    """Indices of at most ``most`` of ``count`` items, evenly spread, first and last included."""
    if count <= most:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, most)).astype(np.int64))


def relative_times(count: int) -> np.ndarray:
    """Times of ``count`` evenly spread rows of a video, from 0 to 1 (0.5 for a single row)."""
    if count == 1:
        return np.array([0.5], np.float32)
    return np.linspace(0.0, 1.0, count, dtype=np.float32)


def segment_means(values: np.ndarray, most: int) -> np.ndarray:
    """A (T, D) sequence shortened to at most ``most`` rows, each the mean of one of ``most`` equal segments."""
    if len(values) <= most:
        return values.astype(np.float32)
    bounds = np.linspace(0, len(values), most + 1).round().astype(np.int64)
    return np.stack([values[start:end].mean(0) for start, end in zip(bounds[:-1], bounds[1:])]).astype(np.float32)


class StreamSet(Dataset):
    """Samples of a split: videos (``window`` None) or windows of frames. Evaluation items are ``(inputs, index)``;
    training items are ``(index, index)``, cut by :class:`StreamAugment`."""

    def __init__(self, streams: VideoStreams, targets: np.ndarray | None = None, frame_targets: list | None = None,
                 window: int | None = None, train: bool = False, stream_dropout: float = 0.0):
        self.streams, self.window, self.train = streams, window, train
        self.stream_dropout = stream_dropout
        self.targets = None if targets is None else np.asarray(targets, np.float32)
        self.frame_targets = frame_targets
        if window is None:
            self.samples = [(video, 0, 0) for video in range(streams.videos)]
        else:  # windows over each video's face frames (a video without frames has nothing to predict)
            self.samples = []
            for video, frames in enumerate(streams.values[0]):
                count = 0 if frames is None else len(frames)
                self.samples += [(video, start, min(start + window, count)) for start in range(0, count, window)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        if self.train:
            return index, index
        return self.sample(index), index

    def sample(self, index: int, dropped: tuple = ()) -> list:
        """Per stream (values (T, D), times (T,)); a dropped stream or a missing one has T = 0. Frame windows cut
        the first stream to their frames and keep their positions when it is dropped (values zeroed)."""
        video, start, end = self.samples[index]
        parts = []
        for stream, (values, times) in enumerate(zip(self.streams.values, self.streams.times)):
            value, time = values[video], times[video]
            if value is None:
                value, time = np.zeros((0, self.streams.dims[stream]), np.float32), np.zeros(0, np.float32)
            if stream == 0 and self.window is not None:
                value, time = value[start:end], time[start:end]
                if stream in dropped:
                    value = np.zeros_like(value)
            elif stream in dropped:
                value, time = value[:0], time[:0]
            parts.append((value, time))
        return parts

    def target(self, index: int) -> np.ndarray:
        video, start, end = self.samples[index]
        if self.window is None:
            return self.targets[video]
        return np.asarray(self.frame_targets[video][start:end], np.float32)

    def rows(self, outputs: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame windows' outputs (samples, window) -> one value per face frame of the split, in video order, and
        which frames were predicted."""
        counts = [0 if frames is None else len(frames) for frames in self.streams.values[0]]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        values, predicted = np.zeros(offsets[-1], np.float32), np.zeros(offsets[-1], bool)
        for index, (video, start, end) in enumerate(self.samples):
            if seen[index]:
                values[offsets[video] + start: offsets[video] + end] = outputs[index, :end - start]
                predicted[offsets[video] + start: offsets[video] + end] = True
        return values, predicted


def collate_streams(samples: list, frame_window: int | None = None) -> tuple:
    """Samples (each a list of per-stream (values, times)) -> the model's inputs: values, valid, time per stream,
    padded to the longest sequence of the batch (at least one row; ``frame_window`` pads the first stream to the
    window, so that every batch's outputs have the same width)."""
    inputs = []
    for stream in range(len(samples[0])):
        parts = [sample[stream] for sample in samples]
        longest = max(1, max(len(values) for values, _ in parts))
        if stream == 0 and frame_window is not None:
            longest = frame_window
        dim = parts[0][0].shape[1]
        values = np.zeros((len(parts), longest, dim), np.float32)
        valid = np.zeros((len(parts), longest), bool)
        times = np.zeros((len(parts), longest), np.float32)
        for row, (value, time) in enumerate(parts):
            values[row, :len(value)], valid[row, :len(value)], times[row, :len(value)] = value, True, time
        inputs += [torch.from_numpy(values), torch.from_numpy(valid), torch.from_numpy(times)]
    return tuple(inputs)


def collate_eval(samples: list, frame_window: int | None = None):
    """Evaluation batch: ``(inputs, indices, dropped=[])``."""
    return (collate_streams([inputs for inputs, _ in samples], frame_window),
            torch.tensor([index for _, index in samples]), [])


class StreamAugment:
    """The training "augmentation" of a sample: which streams it drops (``params``), and the batch (``collate``)."""

    def __init__(self, dataset: StreamSet):
        self.dataset = dataset

    def params(self, rng):
        count = len(self.dataset.streams.names)
        if count < 2 or self.dataset.stream_dropout <= 0:
            return ()
        drops = tuple(stream for stream in range(count) if rng.random() < self.dataset.stream_dropout)
        return drops if len(drops) < count else drops[1:]  # never every stream of a sample

    def collate(self, samples: list):
        """``AugmentedDataset`` samples ``((index, dropped), index)`` -> ``(inputs, targets, [])``; frame targets
        are padded with the missing label."""
        window = self.dataset.window
        parts = [self.dataset.sample(index, dropped) for (index, dropped), _ in samples]
        inputs = collate_streams(parts, window)
        targets = [self.dataset.target(index) for (index, _), _ in samples]
        if window is None:
            return inputs, torch.from_numpy(np.stack(targets).astype(np.float32)), []
        padded = np.full((len(targets), window), MISSING_FRAME_LABEL, np.float32)
        for row, target in enumerate(targets):
            padded[row, :len(target)] = target
        return inputs, torch.from_numpy(padded), []
