"""Per-frame audio features of a split, extracted once and reused: the sound stream of the temporal stage.

``--audio logmel`` (``datasets.media.audio.LogMel``, no weights) or ``--audio PATH_OR_ID`` (a Hugging Face speech
encoder, ``models.speech``) turns each video's recording into a feature sequence; a listed frame takes the mean and
standard deviation of the sequence over ``--audio-window`` seconds centred on its time (``pool_windows``). Where the
recordings and times come from is the layout ``main_prepare.py`` writes (``datasets.media.prepared``): the WAVs in
``--audio-dir`` (default ``<data-dir>/audio``), ``videos.json`` and ``times/<video>.txt`` beside that folder. A crop
folder belongs to its video by ``source_video`` (``<video>_left`` and ``<video>_right`` share ``<video>.wav``), and
frame k of a folder is at line k of its video's times.

A video without sound (``audio_seconds`` null in ``videos.json``), and a frame whose window lies past the end of the
recording, get no feature: the ``available`` mask is False there and the temporal model sees "no sound".

A split's features are ``<split>.npy`` (float32, one row per listed frame, in list order) with ``<split>.json`` in
``<feature-dir>/audio-<source key>/``. The content key hashes the encoder (the speech model's file bytes and layer, or
the log-mel settings), the window, the sample rate, the precision of a speech encoder, the split's frame list, and
every WAV and times file it reads: anything else extracts again. Videos are shared out among processes (video i to
rank i mod world) and each video's features do not depend on the others, so the file is the same for any number of
processes.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from datasets.media import prepared
from datasets.media.audio import LogMel, pool_windows
from datasets.mtl import video_and_frame
from engine.features import optional_file_sha256
from utils import dist
from utils.atomic import atomic_write
from utils.errors import UserError
from utils.monitor import log

FORMAT = 1


class AudioSource:
    """The audio encoder of ``--audio``, the per-frame window, and the key of its features."""

    def __init__(self, choice: str, layer: int | None, window_s: float, precision_name: str):
        if choice == "logmel":
            if layer is not None:
                raise UserError("--audio-layer chooses a hidden layer of a speech encoder; --audio logmel has none")
            self.encoder = LogMel()
        else:
            from models.speech import SpeechEncoder, folder_sha256, resolve_folder

            folder = resolve_folder(choice) if dist.is_main() else None
            sha = dist.broadcast_object(folder_sha256(folder) if dist.is_main() and os.path.isdir(folder) else None)
            self.encoder = SpeechEncoder.load(choice, layer, sha256=sha)
        self.choice, self.window_s = choice, float(window_s)
        # A speech encoder under bf16 autocast gives other values than in fp32; the log-mel runs in fp32 always.
        self.precision = precision_name if choice != "logmel" else "fp32"
        self.key = hashlib.sha256(json.dumps([FORMAT, self.encoder.describe(), self.window_s,
                                              self.precision]).encode()).hexdigest()

    @property
    def dim(self) -> int:  # the mean and the standard deviation of each encoder feature
        return 2 * self.encoder.dim

    @property
    def sample_rate(self) -> int:
        return self.encoder.sample_rate

    def describe(self) -> dict:
        return {"audio": self.choice, "key": self.key, "layer": getattr(self.encoder, "layer", None),
                "window": self.window_s, "sample_rate": self.sample_rate, "precision": self.precision}


class SplitAudio:
    """One split's audio features: ``array`` (frames x dim, memory-mapped) and ``available`` (frames with sound)."""

    def __init__(self, array, available):
        self.array, self.available = array, available


class Recordings:
    """Where the sound of the listed frames is: ``videos.json``, the times and the WAV folder of a prepared layout."""

    def __init__(self, audio_dir: str):
        self.audio_dir = os.path.normpath(audio_dir)
        self.root = os.path.dirname(self.audio_dir)
        try:
            self.videos = prepared.read_videos(self.root)
        except (OSError, ValueError) as error:
            raise UserError(f"{prepared.videos_path(self.root)}: unreadable ({error})") from None
        if not self.videos:
            raise UserError(f"--audio: no {prepared.VIDEOS_JSON} beside --audio-dir {audio_dir} (in {self.root}); "
                            f"the frames' times come from main_prepare.py (--audio-only for data sets whose crops "
                            f"are released)")

    def wav(self, video: str) -> str | None:
        """The video's WAV file, or None for a video without sound; a promised WAV that is absent is an error."""
        path = os.path.join(self.audio_dir, f"{video}.wav")
        record = self.videos.get(video)
        if record is None:
            raise UserError(f"--audio: video {video} is not in {prepared.videos_path(self.root)}; prepare it with "
                            f"main_prepare.py (--audio-only for released crops)")
        if record.get("audio_seconds") is None:
            return None
        if not os.path.isfile(path):
            raise UserError(f"{path}: missing; {prepared.videos_path(self.root)} says {video} has "
                            f"{record['audio_seconds']} s of sound (prepare it again, or name its folder with "
                            f"--audio-dir)")
        return path

    def times(self, video: str) -> str:
        path = prepared.times_path(self.root, video)
        if not os.path.isfile(path):
            raise UserError(f"{path}: missing; the frames' times of {video} come from main_prepare.py")
        return path

    def plan(self, images) -> dict:
        """``{video: (rows of the listed images, their frame numbers)}`` in order of first appearance."""
        folders, numbers = video_and_frame(images)
        plan = {}
        for row, (folder, number) in enumerate(zip(folders, numbers)):
            video = prepared.source_video(str(folder), self.videos)
            rows, frames = plan.setdefault(video, ([], []))
            rows.append(row)
            frames.append(int(number))
        return {video: (np.array(rows, np.int64), np.array(frames, np.int64)) for video, (rows, frames)
                in plan.items()}


def content_key(source: AudioSource, recordings: Recordings, images, plan: dict) -> str:
    """The key of a split's features: the source, the frame list and the bytes of every WAV and times file read."""
    digest = hashlib.sha256(json.dumps([source.key, len(images)]).encode())
    digest.update("\n".join(str(image) for image in images).encode())
    for video in plan:
        digest.update(json.dumps([video, optional_file_sha256(recordings.wav(video)),
                                  optional_file_sha256(recordings.times(video))]).encode())
    return digest.hexdigest()


def video_features(source: AudioSource, recordings: Recordings, video: str, frames: np.ndarray, device,
                   autocast) -> tuple[np.ndarray, np.ndarray]:
    """(features, available) of one video's listed frames (their 1-based frame numbers)."""
    count = len(frames)
    path = recordings.wav(video)
    if path is None:  # a video without sound
        return np.zeros((count, source.dim), np.float32), np.zeros(count, bool)
    try:
        wave, rate = prepared.read_wav(path)
    except (OSError, ValueError, EOFError) as error:
        raise UserError(f"{path}: unreadable WAV ({error})") from None
    if rate != source.sample_rate:
        raise UserError(f"{path}: {rate} Hz; the audio encoder takes {source.sample_rate} Hz (main_prepare.py "
                        f"writes 16 kHz mono)")
    times = prepared.read_frame_times(recordings.root, video)
    known = (frames >= 1) & (frames <= len(times))
    frame_times = np.where(known, times[np.clip(frames - 1, 0, len(times) - 1)], -1e9)
    encoder = source.encoder
    if isinstance(encoder, LogMel):
        sequence = encoder.encode(wave, device)
    else:
        sequence = encoder.encode(wave, device, autocast)
    features, available = pool_windows(sequence, encoder.offset_s, encoder.hop_s, frame_times, source.window_s)
    return features, available & known


def split_audio(source: AudioSource, audio_dir: str, split: str, images, feature_dir: str, device,
                autocast) -> SplitAudio:
    """The audio features of a split's listed ``images``: from the cache when its key matches, else extracted (videos
    shared out among processes) and written by rank 0."""
    recordings = Recordings(audio_dir)
    plan = recordings.plan(images)
    for video in plan:  # every process checks the files, so that a bad one stops all of them with its message
        recordings.wav(video), recordings.times(video)
    folder = os.path.join(feature_dir, f"audio-{source.key[:16]}")
    array_path, index_path = os.path.join(folder, f"{split}.npy"), os.path.join(folder, f"{split}.json")
    key = dist.broadcast_object(content_key(source, recordings, images, plan) if dist.is_main() else None)
    cached = dist.broadcast_object(_cached_key(index_path) if dist.is_main() else None)
    if cached == key:
        log(f"{split} audio features: reusing {array_path} (same encoder, window, recordings and frame list)")
    else:
        if dist.is_main() and cached is not None:
            log(f"{index_path}: audio features of other recordings or frames; extracting {split} again")
        with torch.random.fork_rng(devices=[]):
            _extract(source, recordings, plan, split, len(images), array_path, index_path, key, device, autocast)
    return _load(array_path, index_path, key, len(images), source.dim)


def _cached_key(index_path: str) -> str | None:
    try:
        with open(index_path) as handle:
            return json.load(handle).get("key")
    except (OSError, ValueError):
        return None


def _extract(source, recordings, plan, split, frames, array_path, index_path, key, device, autocast) -> None:
    videos = list(plan)
    mine = videos[dist.rank()::dist.world_size()]
    parts = []
    for video in mine:
        rows, numbers = plan[video]
        features, available = video_features(source, recordings, video, numbers, device, autocast)
        parts.append((rows, features, available))
    if dist.is_distributed():
        gathered = [None] * dist.world_size()
        torch.distributed.all_gather_object(gathered, parts)
        parts = [part for rank_parts in gathered for part in rank_parts]
    if dist.is_main():
        array = np.zeros((frames, source.dim), np.float32)
        available = np.zeros(frames, bool)
        for rows, features, heard in parts:
            array[rows] = features
            available[rows] = heard
        silent = [video for video in videos if recordings.wav(video) is None]
        os.makedirs(os.path.dirname(array_path), exist_ok=True)
        with atomic_write(array_path, "wb") as handle:
            np.save(handle, array)
        with atomic_write(index_path) as handle:
            json.dump(dict(source.describe(), key=key, split=split, frames=frames, dim=source.dim,
                           unavailable=np.flatnonzero(~available).tolist(), videos=len(videos),
                           silent_videos=silent), handle, indent=1)
        log(f"{split} audio features: {frames} frames x {source.dim} ({source.choice}, {source.window_s:g} s "
            f"windows) of {len(videos)} videos, {len(silent)} without sound, {int((~available).sum())} frames "
            f"without sound -> {array_path}")
    dist.barrier()


def _load(array_path: str, index_path: str, key: str, frames: int, dim: int) -> SplitAudio:
    try:
        with open(index_path) as handle:
            index = json.load(handle)
        array = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise UserError(f"{array_path}: audio feature file unreadable or cut short ({error}); delete it to extract "
                        f"again") from None
    if index.get("key") != key or array.shape != (frames, dim):
        raise UserError(f"{array_path}: {array.shape} audio features of key {str(index.get('key'))[:16]}, expected "
                        f"({frames}, {dim}) of key {key[:16]}; delete {os.path.dirname(array_path)} to extract again")
    available = np.ones(frames, bool)
    available[np.asarray(index.get("unavailable", []), dtype=np.int64)] = False
    return SplitAudio(array, available)
