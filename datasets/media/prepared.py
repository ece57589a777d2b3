"""The prepared layout: what ``main_prepare.py`` writes for each video, and its readers and writers.

::

    OUT/cropped_aligned/<folder>/<frame:05d>.jpg   aligned face crops; frame = 1-based index of the decoded frame;
                                                   folder = <video> (one person), <video>_left / <video>_right (two,
                                                   by horizontal position), <video>_<k> (three or more)
    OUT/faces/<video>.csv                          one row per frame and face: frame,time,track,score,x1,y1,x2,y2,
                                                   lx1,ly1,...,lx5,ly5 (track = the crop folder; landmarks: left eye,
                                                   right eye, nose, left and right mouth corner as seen in the image);
                                                   a frame without a face: one row with the track and fields empty
    OUT/audio/<video>.wav                          16 kHz mono int16 PCM (none for a video without sound)
    OUT/times/<video>.txt                          line k: the time of frame k in seconds (6 decimals)
    OUT/videos.json                                {"format": 1, "videos": {"<video>": {"fps", "frames", "width",
                                                   "height" (after rotation), "rotation" (degrees), "duration" (s),
                                                   "audio_seconds" (or null), "tracks": {"<folder>": frames}}}}

Times are the decoded frames' own timestamps, from the start of the video stream, so a variable frame rate is kept;
``fps`` is the stream's average rate. The temporal stage reads ``videos.json``, the frame times and the WAV files
to find each crop's moment in the sound (``source_video`` maps a crop folder to its video).
"""

from __future__ import annotations

import json
import os
import re
import wave

import numpy as np

from utils.atomic import atomic_write

FORMAT = 1
SAMPLE_RATE = 16000
CROPS = "cropped_aligned"
FACES = "faces"
AUDIO = "audio"
TIMES = "times"
VIDEOS_JSON = "videos.json"

LANDMARK_COLUMNS = [f"l{axis}{k}" for k in range(1, 6) for axis in "xy"]
FACE_COLUMNS = ["frame", "time", "track", "score", "x1", "y1", "x2", "y2"] + LANDMARK_COLUMNS

_TRACK_SUFFIX = re.compile(r"^(.+)_(left|right|\d+)$")


def crop_dir(root: str, folder: str) -> str:
    return os.path.join(root, CROPS, folder)


def crop_path(root: str, folder: str, frame: int) -> str:
    return os.path.join(root, CROPS, folder, f"{frame:05d}.jpg")


def faces_path(root: str, video: str) -> str:
    return os.path.join(root, FACES, f"{video}.csv")


def wav_path(root: str, video: str) -> str:
    return os.path.join(root, AUDIO, f"{video}.wav")


def times_path(root: str, video: str) -> str:
    return os.path.join(root, TIMES, f"{video}.txt")


def videos_path(root: str) -> str:
    return os.path.join(root, VIDEOS_JSON)


def track_folders(video: str, count: int) -> list[str]:
    """The crop folders of a video's ``count`` tracks, in the order of the tracks (left to right for two)."""
    if count == 1:
        return [video]
    if count == 2:
        return [f"{video}_left", f"{video}_right"]
    return [f"{video}_{k}" for k in range(1, count + 1)]


def read_videos(root: str) -> dict:
    """``videos.json``'s per-video records, ``{video: record}``; an empty dict when the folder has none."""
    path = videos_path(root)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        content = json.load(handle)
    if not isinstance(content, dict) or content.get("format") != FORMAT or not isinstance(content.get("videos"), dict):
        raise ValueError(f"{path} is not a prepared-videos file of format {FORMAT}")
    return content["videos"]


def write_videos(root: str, videos: dict) -> None:
    """Write ``videos.json`` atomically, videos sorted by name (the same bytes for the same records)."""
    content = {"format": FORMAT, "videos": {name: videos[name] for name in sorted(videos)}}
    with atomic_write(videos_path(root)) as handle:
        json.dump(content, handle, indent=1, sort_keys=False, allow_nan=False)
        handle.write("\n")


def source_video(folder: str, videos: dict) -> str:
    """The video a crop folder belongs to: from the records' track lists, else the folder itself when it names a video,
    else the folder without a trailing ``_left``/``_right``/``_<k>`` when that names a video (Aff-Wild2's own crops),
    else the folder itself."""
    for video, record in videos.items():
        if folder in (record.get("tracks") or {}):
            return video
    if folder in videos:
        return folder
    match = _TRACK_SUFFIX.match(folder)
    if match and match.group(1) in videos:
        return match.group(1)
    return folder


def read_frame_times(root: str, video: str) -> np.ndarray:
    """The times (s) of a video's decoded frames: element k - 1 is frame k."""
    return np.loadtxt(times_path(root, video), dtype=np.float64, ndmin=1)


def write_frame_times(path: str, times) -> None:
    """Write frame times (one line per frame, 6 decimals) atomically to ``path`` (``times_path(root, video)``)."""
    with atomic_write(path) as handle:
        handle.write("".join(f"{float(t):.6f}\n" for t in times))


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """A PCM WAV file as float32 samples in [-1, 1] (channels averaged) and its sample rate."""
    with wave.open(path, "rb") as handle:
        rate, channels, width = handle.getframerate(), handle.getnchannels(), handle.getsampwidth()
        raw = handle.readframes(handle.getnframes())
    if width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 4:
        samples = (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    elif width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    else:
        raise ValueError(f"{path}: {8 * width}-bit samples are not supported")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return samples, rate


def write_wav(path: str, samples, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float samples (clipped to [-1, 1]) as a 16-bit PCM WAV file, atomically."""
    pcm = np.round(np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0) * 32767.0).astype("<i2")
    with atomic_write(path, "wb") as handle:
        with wave.open(handle, "wb") as writer:
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(int(sample_rate))
            writer.writeframes(pcm.tobytes())


def format_face_row(frame: int, time: float, track: str | None, score=None, box=None, landmarks=None) -> str:
    """One CSV line of ``faces/<video>.csv`` (no newline); ``track`` None: the frame has no face."""
    if track is None:
        return f"{frame},{time:.6f}" + "," * (len(FACE_COLUMNS) - 2)
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1)
    values = [f"{float(score):.4f}"] + [f"{float(v):.2f}" for v in box] + [f"{float(v):.2f}" for v in points]
    return ",".join([str(frame), f"{time:.6f}", track] + values)


def read_faces(root: str, video: str):
    """``faces/<video>.csv`` as a pandas DataFrame (track "" and NaN fields on frames without a face)."""
    import pandas as pd

    table = pd.read_csv(faces_path(root, video), dtype={"track": str}, keep_default_na=False,
                        na_values={column: [""] for column in FACE_COLUMNS if column != "track"})
    if list(table.columns) != FACE_COLUMNS:
        raise ValueError(f"{faces_path(root, video)}: expected the columns {','.join(FACE_COLUMNS)}")
    return table
