"""The synthetic Compound Expression set: raw videos of people showing compound expressions, and compound images.

``python -m datasets.synthetic ce OUT_DIR [--videos 6] [--frames 50] [--width 320] [--height 180] [--per-class 40]
[--size 64] [--seed 0]`` writes, in the C-EXPR-DB layout (``datasets.tracks.ce``)::

    OUT_DIR/videos/01.mp4, 02.mp4, ...            H.264 with sound (some silent), one person each; main_prepare.py
                                                  makes the crop folders 01, 02, ... of them
    OUT_DIR/CVPR_6th_ABAW_CE_test_set_sample.txt  every frame of every video, 01/00001.jpg (1-based decoding order)
    OUT_DIR/test_set_annotations.txt              image_location,label: each frame's compound (synthetic data only)
    OUT_DIR/compound_images/train/<Compound_Name>/NNNNNN.jpg   still faces per compound class (as RAF-DB's compound
    OUT_DIR/compound_images/val/<Compound Name>/NNNNNN.jpg     set offers); validation folders spelled with spaces

A compound is drawn as the AUs of its two basic prototypes together (``datasets.synthetic.PROTOTYPES``; each AU
dropped with the generator's usual probability, an occasional extra AU). A video's person changes compound 1 to 3 times
(``_segment_bounds``), each episode ramping from a weak onset to its apex and back, so frames near a change are weakly
expressive, as in the real videos. The recordings come from ``datasets.synthetic.videos``: its head paths, backgrounds,
pose, sound and features (a stretch where the person leaves the frame, no sound, a rotation flag, a variable frame rate;
never two people, so that each video has one crop folder named after it), with the person's AU traces replaced by the
compound episodes. The still images are single faces drawn in the videos' imaging style and aligned as
``main_prepare.py`` aligns the video crops (RAF-DB's images come aligned too), at ``size`` pixels.

Regenerating into a folder also removes what ``main_prepare.py`` wrote there from the old videos (its crops would be
stale). Same seed, same bytes, whatever the number of workers.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import time

import cv2
import numpy as np

from datasets.media import prepared
from datasets.media.faces import align
from datasets.synthetic import (
    AU_DROP_RATE,
    CIRCUMPLEX,
    EXTRA_AU_RATE,
    PROTOTYPES,
    _finish,
    _prepare_out_dir,
    _read_meta,
    _run_tasks,
    _segment_bounds,
    _smooth_noise,
    bounded_int,
    is_complete,
)
from datasets.synthetic.render import (
    AU_COLUMN,
    DRAWN_AUS,
    encode_jpeg,
    render_face,
    sample_identity,
    sample_look,
)
from datasets.synthetic.videos import _landmarks_in_tile, _sound, features, plan_recording, render_frame, write_video
from datasets.tracks.ce import (
    BASIC_PAIRS,
    CLASSES,
    COMPOUND_DIR,
    NUM_CLASSES,
    SAMPLE_FILE,
    SUBMISSION_HEADER,
    TEST_LABEL_FILE,
    TEST_LABEL_HEADER,
)
from utils.atomic import write_text_atomic
from utils.errors import UserError

TRACK = "ce"
DEFAULTS = dict(videos=6, frames=50, width=320, height=180, per_class=40, size=64, seed=0)
VIDEOS_DIR = "videos"
FPS = 25.0
OWNED_PATHS = (VIDEOS_DIR, SAMPLE_FILE, TEST_LABEL_FILE, COMPOUND_DIR)
# What main_prepare.py writes when the set's own folder is its output (the demo): stale once the videos change.
PREPARED_PATHS = (prepared.CROPS, prepared.FACES, prepared.AUDIO, prepared.TIMES, prepared.VIDEOS_JSON, ".prepared",
                  ".staging")
STILL_TILE = 128  # the compound stills are drawn at this size, then aligned to ``size``
LANDMARK_NOISE = 0.01  # std of the landmarks' error before alignment, in tile units (about 1 pixel of 128)
_CODE = 9  # this module's RNG stream, outside the other generators' codes (1 to 4, videos 6)
_MIN = dict(videos=1, frames=10, width=64, height=64, per_class=1, size=32, seed=0)
_MAX = dict(width=3840, height=2160, size=1024)


def video_name(number: int) -> str:
    """Video ``number`` (0-based) is named as the release's: 01, 02, ..."""
    return f"{number + 1:02d}"


def val_per_class(per_class: int) -> int:
    """Validation images per class: about a quarter of the training count, at least 4."""
    return max(4, int(round(per_class / 4)))


def _recording_index(number: int) -> int:
    """The ``datasets.synthetic.videos`` recording behind video ``number``: the number-th with one person."""
    single = (index for index in itertools.count() if features(index)["people"] == 1)
    return next(itertools.islice(single, number, None))


def compound_aus(rng: np.random.Generator, compound: int) -> dict:
    """AU -> gain of one compound episode or image: both prototypes' AUs, each dropped with the generator's usual
    probability (never all), plus an occasional AU outside them."""
    both = sorted(set(PROTOTYPES[BASIC_PAIRS[compound][0]]) | set(PROTOTYPES[BASIC_PAIRS[compound][1]]))
    gains = {au: rng.uniform(0.7, 1.0) for au in both if rng.random() >= AU_DROP_RATE}
    if not gains:
        gains[int(rng.choice(both))] = rng.uniform(0.7, 1.0)
    if rng.random() < EXTRA_AU_RATE:
        extra = int(rng.choice([au for au in DRAWN_AUS if au not in gains]))
        gains[extra] = rng.uniform(0.35, 0.9)
    return gains


def plan_ce_video(seed: int, number: int, frames: int, width: int, height: int) -> tuple[dict, np.ndarray]:
    """The recording of video ``number`` with its person's compound episodes, and each frame's compound (0..6)."""
    recording = plan_recording(seed, _recording_index(number), frames, width, height, FPS)
    plan = recording["people"][0]["plan"]
    rng = np.random.default_rng([seed, _CODE, 0, number])
    labels = np.empty(frames, np.int64)
    au = np.zeros((frames, len(DRAWN_AUS)))
    va = np.zeros((frames, 2))
    expression = np.empty(frames, np.int64)
    previous = -1
    bounds = _segment_bounds(rng, frames)
    for start, end in zip(bounds[:-1], bounds[1:]):
        compound = previous
        while compound == previous:  # an episode changes the compound
            compound = int(rng.integers(NUM_CLASSES))
        previous = compound
        length = end - start
        low, peak = rng.uniform(0.15, 0.3), rng.uniform(0.7, 1.0)
        ramp = min(max(3, length // 4), 8)
        episode = low + (peak - low) * np.clip(np.minimum(np.arange(length), length - 1 - np.arange(length)) / ramp,
                                               0, 1)
        labels[start:end] = compound
        for au_number, gain in compound_aus(rng, compound).items():
            au[start:end, AU_COLUMN[au_number]] = gain * episode
        first, second = BASIC_PAIRS[compound]
        va[start:end] = (np.array(CIRCUMPLEX[first]) + np.array(CIRCUMPLEX[second]))[None] / 2 * episode[:, None]
        expression[start:end] = first  # the sound's bursts follow the first expression of the pair
    plan["au"] = np.clip(au + (au > 0) * _smooth_noise(rng, frames, 0.03, 10)[:, None], 0.0, 1.0)
    plan["va"], plan["expression"] = va, expression
    return recording, labels


def _render_video(task: dict) -> int:
    """Worker: render and encode one video."""
    cv2.setNumThreads(1)
    recording, _ = plan_ce_video(task["seed"], task["number"], task["frames"], task["width"], task["height"])
    sound = _sound(recording, np.random.default_rng([task["seed"], _CODE, 2, task["number"]]))
    images = (render_frame(recording, k)[0] for k in range(task["frames"]))
    write_video(task["path"], images, recording["times"], recording["features"]["rotation"], sound, FPS)
    return task["frames"]


def _render_images(task: dict) -> int:
    """Worker: render and write compound still images; each from its own RNG key."""
    cv2.setNumThreads(1)
    for index, compound, path in task["items"]:
        rng = np.random.default_rng([task["seed"], _CODE, 1, task["split_code"], index])
        face, look = sample_identity(rng, "video"), sample_look(rng, "video")
        au = np.zeros(len(DRAWN_AUS))
        apex = rng.uniform(0.6, 1.0)
        for au_number, gain in compound_aus(rng, compound).items():
            au[AU_COLUMN[au_number]] = np.clip(gain * apex + rng.normal(0.0, 0.05), 0.0, 1.0)
        # Aligned as main_prepare.py aligns the video crops (and as RAF-DB's aligned images are): the face drawn
        # upright, its 5 landmarks, off by a detector's few pixels, warped onto the crop template.
        tile = STILL_TILE
        drawn = render_face(face, au, (0.0, 1.0, 0.0, 0.0), look, tile, rng)
        landmarks = _landmarks_in_tile(face, au) * tile + rng.normal(0.0, LANDMARK_NOISE * tile, (5, 2))
        image = align(drawn, landmarks, task["size"])
        with open(path, "wb") as handle:
            handle.write(encode_jpeg(image, rng, "video"))
    return len(task["items"])


def check_params(**params) -> dict:
    """The parameters with the defaults filled in, as plain integers; :class:`UserError` for a bad one."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"synthetic ce: unknown parameters {sorted(unknown)}")
    values = dict(DEFAULTS, **params)
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise UserError(f"synthetic ce: {key} must be an integer, got {value!r}")
        if value < _MIN[key] or value > _MAX.get(key, value):
            bound = f"between {_MIN[key]} and {_MAX[key]}" if key in _MAX else f"at least {_MIN[key]}"
            raise UserError(f"synthetic ce: {key} must be {bound}, got {value}")
    values = {key: int(value) for key, value in values.items()}
    values["width"] += values["width"] % 2  # H.264 in 4:2:0 wants even sides
    values["height"] += values["height"] % 2
    return values


def _ready_out_dir(out_dir: str, params: dict) -> None:
    """The generator's folder rules (``datasets.synthetic._prepare_out_dir``), and an earlier CE set's crops that
    ``main_prepare.py`` made in the same folder removed with its videos."""
    meta = _read_meta(out_dir)
    if meta is not None and meta.get("track") == TRACK:
        for name in PREPARED_PATHS:
            path = os.path.join(out_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    _prepare_out_dir(out_dir, TRACK, params, OWNED_PATHS)


def is_generated(out_dir: str, **params) -> bool:
    """Whether ``out_dir`` holds a complete synthetic CE set made with ``params`` (defaults fill the rest)."""
    params = {key: value for key, value in params.items() if key not in ("workers", "progress")}
    return is_complete(out_dir, TRACK, check_params(**params), OWNED_PATHS)


def generate(out_dir, workers=None, progress=True, **params) -> dict:
    """Write the synthetic CE set (module docstring) to ``out_dir``; returns the generator's summary (meta, counts,
    seconds, images per second, workers)."""
    params = check_params(**params)
    start_time = time.perf_counter()
    _ready_out_dir(out_dir, params)
    videos, frames, seed = params["videos"], params["frames"], params["seed"]
    os.makedirs(os.path.join(out_dir, VIDEOS_DIR), exist_ok=True)
    video_tasks = [dict(seed=seed, number=number, frames=frames, width=params["width"], height=params["height"],
                        path=os.path.join(out_dir, VIDEOS_DIR, f"{video_name(number)}.mp4"))
                   for number in range(videos)]
    image_tasks, image_count = [], 0
    for split_code, (split, count) in enumerate((("train", params["per_class"]),
                                                 ("val", val_per_class(params["per_class"])))):
        items = []
        for compound, name in enumerate(CLASSES):
            folder = name if split == "train" else name.replace("_", " ")
            os.makedirs(os.path.join(out_dir, COMPOUND_DIR, split, folder), exist_ok=True)
            for k in range(count):
                index = compound * count + k
                items.append((index, compound, os.path.join(out_dir, COMPOUND_DIR, split, folder, f"{index:06d}.jpg")))
        image_count += len(items)
        image_tasks += [dict(items=items[first:first + 64], size=params["size"], seed=seed, split_code=split_code)
                        for first in range(0, len(items), 64)]
    workers_used = _run_tasks(_render_images, image_tasks, image_count, workers, progress, "ce images")
    workers_used = max(workers_used, _run_tasks(_render_video, video_tasks, videos * frames, workers, progress,
                                                "ce video frames"))

    sample, labelled = [SUBMISSION_HEADER], [TEST_LABEL_HEADER]
    counts_per_class = np.zeros(NUM_CLASSES, np.int64)
    for number in range(videos):
        _, labels = plan_ce_video(seed, number, frames, params["width"], params["height"])
        for k, label in enumerate(labels):
            frame = f"{video_name(number)}/{k + 1:05d}.jpg"
            sample.append(frame)
            labelled.append(f"{frame},{int(label)}")
        counts_per_class += np.bincount(labels, minlength=NUM_CLASSES)
    write_text_atomic(os.path.join(out_dir, SAMPLE_FILE), "\n".join(sample) + "\n")
    write_text_atomic(os.path.join(out_dir, TEST_LABEL_FILE), "\n".join(labelled) + "\n")
    counts = {"images": image_count + videos * frames, "videos": videos, "frames": videos * frames,
              "compound_images": image_count, "frames_per_class": dict(zip(CLASSES, counts_per_class.tolist()))}
    return _finish(out_dir, TRACK, params, counts, start_time, workers_used)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The set's flags of ``python -m datasets.synthetic ce OUT_DIR``: its parameters, ``--workers`` and
    ``--no-progress`` (each parsed into the keyword of :func:`generate` of its name)."""

    helps = dict(videos="number of test videos, named 01, 02, ...", frames="frames per video",
                 width="frame width in pixels", height="frame height in pixels",
                 per_class="training images per compound class; validation gets about a quarter",
                 size="side of the compound images in pixels", seed="same seed, same bytes")
    for key, text in helps.items():
        parser.add_argument("--" + key.replace("_", "-"), type=bounded_int(_MIN[key], _MAX.get(key)),
                            default=DEFAULTS[key], help=f"{text} (default {DEFAULTS[key]})")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
