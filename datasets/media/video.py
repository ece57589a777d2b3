"""Reading a video file with PyAV (FFmpeg inside its wheel): its frames as a stream, and its sound at 16 kHz mono.

Frames come one at a time in the order the decoder gives them (presentation order), numbered from 1, each with its
time in seconds from the first frame, taken from the frame's own timestamp: a phone's variable frame rate keeps
its real timing. The stream's display matrix (the rotation flag of a phone video) is applied, so the images are
upright as a player shows them. The sound is resampled to 16 kHz, its channels averaged to mono, and aligned so
that sample 0 is the moment of frame 1 (the first frame's time): the sound of frame k starts at sample
``round(time_k * 16000)``.

Nothing holds a whole video: frames and sound chunks are generated as they are decoded.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from datasets.media.prepared import SAMPLE_RATE
from utils.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts",
                    ".mts")


class MediaError(UserError):
    """A file that cannot be read as a video (corrupt, truncated, no video stream, no frame)."""


@dataclass
class VideoInfo:
    """What the container says before decoding: the average frame rate, the frame size after rotation, the rotation
    applied (degrees counter-clockwise) and whether there is a sound stream."""

    fps: float
    width: int
    height: int
    rotation: int
    has_audio: bool


def _av():
    import av

    return av


def _open(path: str, need_video: bool = True):
    av = _av()
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise MediaError(f"{path}: not a readable {'video' if need_video else 'recording'} ({_reason(err)})") from None
    if need_video and not container.streams.video:
        container.close()
        raise MediaError(f"{path}: no video stream")
    return container


def _reason(err) -> str:
    """FFmpeg's own words for an error (its message without the errno and the file name PyAV adds)."""
    text = getattr(err, "strerror", None) or str(err).strip() or type(err).__name__
    return str(text).splitlines()[0]


def _rotation(degrees) -> int:
    """A display rotation (counter-clockwise degrees, any sign) as 0, 90, 180 or 270."""
    return int(round((degrees or 0) / 90.0)) * 90 % 360


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    return image if rotation == 0 else np.ascontiguousarray(np.rot90(image, k=rotation // 90))


def probe(path: str) -> VideoInfo:
    """A video's rate, upright size, rotation and sound, from its first decoded frame."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        rotation = 0
        width, height = stream.codec_context.width, stream.codec_context.height
        try:
            for frame in container.decode(stream):
                rotation = _rotation(frame.rotation)
                width, height = frame.width, frame.height
                break
        except _av().FFmpegError as err:
            raise MediaError(f"{path}: cannot decode ({_reason(err)})") from None
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(fps=float(rate) if rate else 0.0, width=int(width), height=int(height), rotation=rotation,
                         has_audio=bool(container.streams.audio))
    finally:
        container.close()


@dataclass
class Frame:
    index: int  # 1-based, decoding order
    time: float  # seconds from frame 1
    image: np.ndarray | None  # upright RGB uint8 (H, W, 3); None when decoded for its time only
    duration: float  # seconds until the next frame, from the frame's own duration or the average rate


def estimate_frames(path: str) -> int:
    """The container's frame count, or its duration times its rate; 0 when it says neither or cannot be opened. Only
    for progress bars: the decoded frames are the truth, and a bad file's error comes when it is read."""
    av = _av()
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            if stream.duration and stream.time_base and stream.average_rate:
                return int(float(stream.duration * stream.time_base) * float(stream.average_rate))
    except (av.FFmpegError, IndexError, OSError, ValueError):
        pass
    return 0


def read_frames(path: str, rgb: bool = True, fps: float | None = None):
    """Yield every decoded frame of ``path`` as a :class:`Frame`, upright; ``rgb`` False skips the conversion to
    RGB (for the frame times alone). A decoding error mid-file raises :class:`MediaError` after the frames before it.
    """
    av = _av()
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg's frame threads: decoding runs beside the detector
        rate = fps or float(stream.average_rate or stream.guessed_rate or 25)
        first = previous = None
        index = 0
        try:
            for frame in container.decode(stream):
                if frame.pts is not None and frame.time is not None:
                    stamp = float(frame.time)
                else:  # no timestamp (some AVI files): one average frame after the previous one
                    stamp = (previous if previous is not None else 0.0) + 1.0 / rate
                if first is None:
                    first = stamp
                if previous is not None and stamp <= previous:  # repeated or backwards timestamps: keep the order
                    stamp = previous + 1e-6
                previous = stamp
                index += 1
                image = None
                if rgb:
                    image = _upright(frame.to_ndarray(format="rgb24"), _rotation(frame.rotation))
                length = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 1 / rate
                yield Frame(index, stamp - first, image, length)
        except av.FFmpegError as err:
            raise MediaError(f"{path}: decoding stopped at frame {index + 1} ({_reason(err)})") from None
        if index == 0:
            raise MediaError(f"{path}: the video stream has no frame")
    finally:
        container.close()


def first_frame_time(path: str) -> float:
    """The timestamp (s) of a video's first decoded frame: the origin of its frame times and of its WAV file."""
    container = _open(path)
    try:
        for frame in container.decode(container.streams.video[0]):
            return float(frame.time) if frame.time is not None else 0.0
    except _av().FFmpegError as err:
        raise MediaError(f"{path}: cannot decode ({_reason(err)})") from None
    finally:
        container.close()
    raise MediaError(f"{path}: the video stream has no frame")


def read_audio(path: str, origin: float, sample_rate: int = SAMPLE_RATE):
    """Yield the sound of ``path`` (a video, or a sound file: WAV, MP3, ...) as float32 mono chunks at
    ``sample_rate``, starting at time ``origin`` (s, the first frame's timestamp): silence is put before a sound that
    starts later, a sound that starts earlier is cut. Yields nothing for a file without a sound stream."""
    av = _av()
    container = _open(path, need_video=False)
    try:
        if not container.streams.audio:
            return
        stream = container.streams.audio[0]
        # the source's channels are kept through the resampler and averaged here: FFmpeg's own downmix to mono adds
        # them at -3 dB each, 1.4 times louder than either when they agree, and may clip
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        skip = None  # samples to cut (> 0) or silence to add (< 0) before the first chunk
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    if skip is None:
                        start = float(frame.time) if frame.time is not None else origin
                        skip = int(round((origin - start) * sample_rate))
                        if skip < 0:
                            yield np.zeros(-skip, np.float32)
                    for chunk in resampler.resample(frame):
                        samples = _mono(chunk)
                        if skip > 0:
                            cut = min(skip, len(samples))
                            samples, skip = samples[cut:], skip - cut
                        if len(samples):
                            yield samples
            for chunk in resampler.resample(None):
                samples = _mono(chunk)
                if skip and skip > 0:
                    cut = min(skip, len(samples))
                    samples, skip = samples[cut:], skip - cut
                if len(samples):
                    yield samples
        except av.FFmpegError as err:
            raise MediaError(f"{path}: the sound cannot be decoded ({_reason(err)})") from None
    finally:
        container.close()


def _mono(chunk) -> np.ndarray:
    planes = chunk.to_ndarray()  # (channels, samples) in a planar format
    return planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0].astype(np.float32, copy=False)


def find_videos(paths) -> list[str]:
    """The video files named by ``paths``: files as given, folders searched at any depth (by extension, sorted).
    A path that does not exist or a folder without any video raises :class:`MediaError` naming it."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            inside = []
            for folder, subfolders, files in os.walk(path):
                subfolders.sort()
                inside += [os.path.join(folder, name) for name in sorted(files)
                           if name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith(".")]
            if not inside:
                raise MediaError(f"{path}: a folder without any video file ({', '.join(VIDEO_EXTENSIONS)})")
            found += inside
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise MediaError(f"{path}: no such file or folder")
    return found


def video_name(path: str) -> str:
    """The name a video's files take in the prepared layout: its file name without the extension."""
    return os.path.splitext(os.path.basename(path))[0]


def average_fps(times: np.ndarray, fallback: float) -> float:
    """Frames per second over a video's frame times (the stream's rate for a single frame)."""
    if len(times) > 1 and times[-1] > times[0]:
        return float((len(times) - 1) / (times[-1] - times[0]))
    return float(fallback) if fallback and math.isfinite(fallback) else 0.0
