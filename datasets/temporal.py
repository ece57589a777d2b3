"""Windows of consecutive frames of each video over per-frame features, for the temporal stage.

A video's frames are its listed frames (ABAW4 MTL frames are a subsample of the video) in order of frame number; a
window of ``window`` frames counts listed frames, and each frame carries its gap to the previous listed frame of its
video (frame-number difference, 1 for a video's first frame). Rows are the rows of the split's list (and of its
feature file).

- Evaluation (:class:`WindowSet`): windows every ``stride`` frames, the last one aligned with the video's end, a video
  shorter than the window padded; every frame lies in at least one window, and :meth:`WindowSet.assemble` averages
  the outputs of all windows over each frame, in window order, so the result does not depend on how the windows were
  shared out among processes.
- Training (:class:`TrainWindows` with :class:`WindowAugment`): the same windows shifted back by a random offset in
  ``[0, stride)`` drawn per window and epoch from the run's seed (``datasets.transforms.sample_rng``), so the draw is
  the same on any number of processes and after a resume.

Padding and frames without a feature (``available`` False) are invalid: the model masks them out and the loss
skips them (their targets carry the missing codes).

Sound: with ``audio`` (per-frame audio features, rows of the same list) a window also carries its audio features and
an audio mask (False on padding, on frames without sound, and for a whole training window whose audio was dropped:
``audio_dropout``, drawn per window and epoch like the offset, so that the model learns to predict videos without
sound); with ``frame_dropout`` the frame features of a share of the other training windows are zeroed, so that the
model also learns what the sound alone tells. ``audio_centre`` subtracts each video's mean audio feature over its
frames with sound (the recording's level and channel, which a microphone sets, drop out).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from datasets.mtl import video_and_frame
from utils import abaw

# The label row of a padded position: every field missing, so masked losses ignore it.
MISSING_ROW = np.array([abaw.VA_MISSING, abaw.VA_MISSING, abaw.EXPR_MISSING] + [abaw.AU_MISSING] * abaw.NUM_AU,
                       dtype=np.float32)


def video_runs(images) -> tuple[list[np.ndarray], np.ndarray]:
    """The rows of each video in frame order (videos in order of first appearance), and each row's gap."""
    videos, frames = video_and_frame(images)
    codes, _ = pd.factorize(pd.Series(videos, dtype=object))
    order = np.lexsort((frames, codes))
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    runs = np.split(order, bounds) if len(order) else []
    gaps = np.ones(len(images), np.float32)
    for rows in runs:
        gaps[rows[1:]] = np.diff(frames[rows])
    return runs, gaps


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Starts of the evaluation windows over a video of ``length`` frames: every ``stride``, the last at the end."""
    last = max(length - window, 0)
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


class _Windows:
    """What both window sets share: the features (memory-mapped), gaps, availability and the window table.

    ``centre`` (first, end): feature columns from which each video's mean over its available frames is subtracted
    (per-video normalisation: what stays constant over a video, such as the person's identity, drops out).
    """

    def __init__(self, features: np.ndarray, images, window: int, stride: int, available: np.ndarray | None = None,
                 centre: tuple[int, int] | None = None, audio: np.ndarray | None = None,
                 audio_available: np.ndarray | None = None, audio_centre: bool = False):
        if len(features) != len(images) or (audio is not None and len(audio) != len(images)):
            raise ValueError(f"{len(features)} feature rows and {None if audio is None else len(audio)} audio rows "
                             f"for {len(images)} frames")
        self.features, self.window, self.stride = features, window, stride
        self.runs, self.gaps = video_runs(images)
        self.available = np.ones(len(images), bool) if available is None else np.asarray(available, bool)
        self.centre, self.means = centre, None
        if centre is not None:
            first, end = centre
            self.row_video = np.zeros(len(images), np.int64)
            self.means = np.zeros((len(self.runs), end - first), np.float32)
            for video, rows in enumerate(self.runs):
                self.row_video[rows] = video
                kept = rows[self.available[rows]]
                if len(kept):
                    self.means[video] = np.asarray(self.features[kept, first:end], np.float64).mean(axis=0)
        self.audio, self.audio_means = audio, None
        if audio is not None:
            self.audio_available = (np.ones(len(images), bool) if audio_available is None
                                    else np.asarray(audio_available, bool))
            if audio_centre:
                self.audio_video = np.zeros(len(images), np.int64)
                self.audio_means = np.zeros((len(self.runs), audio.shape[1]), np.float32)
                for video, rows in enumerate(self.runs):
                    self.audio_video[rows] = video
                    heard = rows[self.audio_available[rows]]
                    if len(heard):
                        self.audio_means[video] = np.asarray(audio[heard], np.float64).mean(axis=0)

    def gather(self, rows: np.ndarray, drop_audio: bool = False, drop_frames: bool = False):
        """(features (T, D), gaps (T,), valid (T,)) of a window's rows, -1 marking padding; with sound also
        (audio (T, A), audio_valid (T,)), the audio of every frame masked when ``drop_audio``, the frame features
        zeroed (the frames stay valid) when ``drop_frames``."""
        valid = rows >= 0
        safe = np.where(valid, rows, 0)
        features = np.array(self.features[safe], dtype=np.float32)
        if self.means is not None:
            first, end = self.centre
            features[:, first:end] -= self.means[self.row_video[safe]]
        valid &= self.available[safe]
        features[~valid | drop_frames] = 0.0
        inputs = (torch.from_numpy(features), torch.from_numpy(self.gaps[safe] * valid), torch.from_numpy(valid))
        if self.audio is None:
            return inputs
        audio = np.array(self.audio[safe], dtype=np.float32)
        if self.audio_means is not None:
            audio -= self.audio_means[self.audio_video[safe]]
        heard = valid & self.audio_available[safe] & (not drop_audio)
        audio[~heard] = 0.0
        return inputs + (torch.from_numpy(audio), torch.from_numpy(heard))

    def window_rows(self, run: np.ndarray, start: int) -> np.ndarray:
        rows = np.full(self.window, -1, np.int64)
        begin, end = max(start, 0), min(start + self.window, len(run))
        rows[begin - start:end - start] = run[begin:end]
        return rows


class WindowSet(_Windows, Dataset):
    """Evaluation windows; item ``i`` is ``((features, gaps, valid), i)``."""

    def __init__(self, features, images, window: int, stride: int, available=None, centre=None, **audio):
        super().__init__(features, images, window, stride, available, centre, **audio)
        self.table = np.array([self.window_rows(run, start) for run in self.runs
                               for start in window_starts(len(run), window, stride)], dtype=np.int64)
        self.table = self.table.reshape(-1, window)
        self.frames = len(images)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int):
        return self.gather(self.table[index]), index

    def assemble(self, outputs: np.ndarray | None, seen: np.ndarray | None):
        """Window outputs (windows, window * width) -> per-frame outputs (frames, width), averaged over the windows
        that hold each frame; and which frames were predicted (in a predicted window, with a feature)."""
        if outputs is None:
            return None, None
        width = outputs.shape[1] // self.window
        per_window = outputs.reshape(len(outputs), self.window, width).astype(np.float64)
        total = np.zeros((self.frames, width))
        count = np.zeros(self.frames)
        for index in np.flatnonzero(seen):
            rows = self.table[index]
            kept = rows >= 0
            total[rows[kept]] += per_window[index][kept]
            count[rows[kept]] += 1
        predicted = (count > 0) & self.available
        frames = np.zeros((self.frames, width), np.float32)
        frames[predicted] = (total[predicted] / count[predicted, None]).astype(np.float32)
        return frames, predicted


def collate_windows(samples: list):
    """Evaluation batch: ``((features, gaps, valid), indices, dropped=[])``."""
    parts = [torch.stack(column) for column in zip(*(inputs for inputs, _ in samples))]
    return tuple(parts), torch.tensor([index for _, index in samples]), []


class TrainWindows(_Windows, Dataset):
    """Training slots, one per evaluation window; the slot's window, shifted by its offset, is cut by
    :class:`WindowAugment` (``AugmentedDataset`` passes the slot and its drawn offset)."""

    def __init__(self, features, images, targets: np.ndarray, window: int, stride: int, available=None,
                 centre=None, audio_dropout: float = 0.0, frame_dropout: float = 0.0, **audio):
        super().__init__(features, images, window, stride, available, centre, **audio)
        self.audio_dropout, self.frame_dropout = audio_dropout, frame_dropout
        self.targets = np.asarray(targets, np.float32)
        self.slots = np.array([(v, start) for v, run in enumerate(self.runs)
                               for start in window_starts(len(run), window, stride)], dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, index: int):
        return index, index

    def sample(self, index: int, offset: int, drop_audio: bool = False, drop_frames: bool = False):
        """Slot ``index``'s window shifted back by ``offset``: (features, gaps, valid[, audio, audio_valid]),
        targets (T, 15)."""
        video, start = self.slots[index]
        rows = self.window_rows(self.runs[video], int(start) - offset)
        inputs = self.gather(rows, drop_audio, drop_frames)
        targets = np.where(inputs[2].numpy()[:, None], self.targets[np.where(rows >= 0, rows, 0)], MISSING_ROW)
        return inputs, torch.from_numpy(targets.astype(np.float32))


class WindowAugment:
    """The training "augmentation" of a window: its random offset (``params``) and the batch (``collate``)."""

    def __init__(self, windows: TrainWindows):
        self.windows = windows

    def params(self, rng):
        """The window's offset; with sound, (offset, whether its audio is dropped)."""
        offset = rng.randrange(self.windows.stride)
        if self.windows.audio is None:
            return offset
        drop_audio = rng.random() < self.windows.audio_dropout
        drop_frames = not drop_audio and rng.random() < self.windows.frame_dropout
        return offset, drop_audio, drop_frames

    def collate(self, samples: list):
        """``AugmentedDataset`` samples ``((slot, params), slot)`` -> ``(inputs, targets, [])``."""
        cut = [self.windows.sample(slot, *(drawn if isinstance(drawn, tuple) else (drawn,)))
               for (slot, drawn), _ in samples]
        inputs = tuple(torch.stack(column) for column in zip(*(inputs for inputs, _ in cut)))
        return inputs, torch.stack([targets for _, targets in cut]), []
