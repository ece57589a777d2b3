"""Procedural FACS faces: the project's built-in data set, written in the official ABAW4 layouts.

The real ABAW4 data is licensed and cannot ship, so this module writes a stand-in exactly as the MTL and LSD tracks
are released (see ``/work/shared/SYNTHETIC.md`` and ``ABAW4.md``), and the per-video single-task VA, EXPR and AU
tracks of ABAW2-8: it plans videos and images (identities, expression episodes as AU intensities, pose and look),
derives their labels, renders them through worker processes with ``datasets.synthetic.render`` and marks a finished
set in ``synthetic_meta.json``. The MTL set also carries each video's sound, rendered from the same latent traces by
``datasets.synthetic.sound``, with its frame times, in the layout ``main_prepare.py`` writes (``audio/<video>.wav``,
``times/<video>.txt``, ``videos.json``). Tests, the ``--demo`` of every entry point and the benchmarks use it;
``datasets.synthetic.cli`` is its command line (``python -m datasets.synthetic``)::

    python -m datasets.synthetic mtl OUT_DIR [--videos 40] [--frames 50] [--size 112] [--seed 0] [--workers N]
    python -m datasets.synthetic tracks OUT_DIR [--videos 40] [--frames 50] [--size 112] [--seed 0] [--workers N]
    python -m datasets.synthetic lsd OUT_DIR [--per-class 200] [--size 112] [--seed 0] [--workers N]
    python -m datasets.synthetic faces OUT_DIR [--count 2000] [--size 112] [--seed 0] [--workers N]

The "faces" set is unlabelled, for MAE pretraining (``main_pretrain.py``), as CelebA is for the real recipe: one
folder of images, each its own identity, in the three imaging styles in turn, with a random expression at a random
intensity; it shares no image, identity or random stream with the MTL and LSD sets.

The "tracks" set is the MTL set's videos in the single-task layout (ABAW4.md, "Single-task tracks"): with the same
parameters it has the same video names, splits and frames, and a frame has the same labels wherever both sets annotate
it. Each track annotates its own overlapping subset of the videos of a split (VA all of them), one file per video whose
line i is frame i, and a file goes on past the video's last face crop, as the released files do::

    cropped_aligned/<video>/%05d.jpg
    6th ABAW Annotations/{VA_Estimation_Challenge,EXPR_Recognition_Challenge,AU_Detection_Challenge}/
        {Train_Set,Validation_Set,Test_Set}/<video>.txt           (Test_Set: labels for the synthetic data only)
    CVPR_6th_ABAW_VA_test_set_sample.txt, CVPR_6th_ABAW_Expr_test_set_sample.txt   every frame of each test video
    names_of_videos_in_each_test_set/Action_Unit_Detection_Challenge_test_set_release.txt

How a frame is made: an identity is drawn per video (MTL) or per image (LSD); expressions are EMFACS prototypes whose
AUs move the face with an intensity in [0, 1]; pose, lighting, colour cast, texture, blur, noise and a JPEG quality
between 70 and 95 make it a vision problem. Labels carry annotation noise and, in the training data of both video
layouts, the real missing-label codes.

Determinism: every random choice comes from ``np.random.default_rng([seed, track, ...item index])``, and OpenCV runs
single-threaded, so the same seed writes the same bytes whatever the number of worker processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time

import cv2
import numpy as np
from tqdm import tqdm

from datasets import lsd, mtl
from datasets.media import prepared
from datasets.synthetic.render import (
    AU_COLUMN,
    DRAWN_AUS,
    encode_jpeg,
    render_face,
    sample_identity,
    sample_look,
    sample_pose,
)
from datasets.synthetic.sound import write_recordings
from datasets.tracks import affwild2 as tracks
from utils.abaw import AU_MISSING, AU_NUMBERS, EXPR_MISSING, EXPR_NAMES, LSD_CLASSES, VA_MISSING
from utils.atomic import write_text_atomic
from utils.errors import UserError

GENERATOR_VERSION = 1
META_FILE = "synthetic_meta.json"

# ---------------------------------------------------------------------------------------------------------------------
# Expressions as AUs

OTHER = EXPR_NAMES.index("Other")
# EMFACS prototypes (SYNTHETIC.md), keyed by MTL expression index; Other is a random mix (see _other_mix).
PROTOTYPES = {
    0: (),
    1: (4, 5, 7, 23, 24),
    2: (9, 10, 15),
    3: (1, 2, 4, 5, 7, 20, 25),
    4: (6, 12, 25),
    5: (1, 4, 15),
    6: (1, 2, 5, 25, 26),
}
# Circumplex (valence, arousal) of each expression at full intensity; Other gets a random point per segment.
CIRCUMPLEX = {0: (0.0, 0.0), 1: (-0.6, 0.6), 2: (-0.6, 0.3), 3: (-0.6, 0.7), 4: (0.8, 0.5), 5: (-0.6, -0.4),
              6: (0.3, 0.8)}
# How often each expression starts a segment: imbalanced like Aff-Wild2 (Neutral, Happiness, Other common), but
# milder so that small demo sets still hold every class.
EXPRESSION_WEIGHTS = np.array([0.17, 0.10, 0.08, 0.08, 0.16, 0.12, 0.11, 0.18])

LSD_TO_MTL = tuple(EXPR_NAMES.index(name) for name in LSD_CLASSES)  # LSD class index -> MTL expression index
LSD_TRAIN_FOLDERS = ("ANGRER", *lsd.CLASSES[1:])  # the training split is released with this misspelling
_LABELLED_COLUMNS = np.array([AU_COLUMN[au] for au in AU_NUMBERS])  # the labelled AUs in a DRAWN_AUS vector

# ---------------------------------------------------------------------------------------------------------------------
# Label model: rates of annotation noise and missing labels

AU_THRESHOLD = 0.3  # an AU is labelled 1 when drawn with intensity above this
AU_DROP_RATE = 0.12  # each prototype AU is left out of a segment with this probability
EXTRA_AU_RATE = 0.25  # a segment gets one AU outside its prototype with this probability
EXPR_LABEL_NOISE = 0.05  # fraction of frames whose expression label is replaced by another class
AU_LABEL_NOISE = 0.03  # fraction of AU labels flipped
VA_LABEL_NOISE = 0.08  # std of the per-frame noise added to valence and arousal
VIDEO_NO_EXPR_RATE = 0.3  # train/val videos annotated without expression (all -1), as in Aff-Wild2
FRAME_NO_VA_RATE = 0.25  # training frames without valence/arousal (-5, -5); validation has all VA, as released
FRAME_NO_AU_RATE = 0.25  # training frames without AUs (all -1); validation has all AUs, as released
FRAME_GAP_RATE = 0.02  # frame numbers skipped (face not detected in the real data): numbering has gaps
# Single-task tracks: ABAW6 annotates VA in 594 videos, EXPR in 548, AU in 542; more videos are left out here so that
# small sets have some. A video is left out of EXPR, or else of AU, with this probability each (never of both).
TRACK_ABSENT_RATE = 0.2
EXTRA_LINES_MAX = 4  # a video's single-task files go on for 1 to this many lines past its last face crop
# The test split is labelled completely so that the demo can score every field of its submission.

# ---------------------------------------------------------------------------------------------------------------------
# Layout (ABAW4.md): file and folder names are the readers' (datasets.mtl, datasets.lsd); here only the generator's own

_MTL_HEADER = ",".join(mtl.FIELD_NAMES)  # header line of the MTL annotation files

# Single-task tracks as released in ABAW6 (ABAW4.md, "Single-task tracks"): the folder and header names are those of
# the reader (datasets.tracks.affwild2); the annotation root and the test-list file names are those of that release.
TRACKS_ANNOTATION_DIR = "6th ABAW Annotations"
TRACKS_CHALLENGE_DIRS = {"VA": tracks.CHALLENGES["va"][0], "EXPR": "EXPR_Recognition_Challenge",
                         "AU": tracks.CHALLENGES["au"][0]}
TRACKS_SET_DIRS = tracks.SPLIT_DIRS
TRACKS_HEADERS = {track: ",".join(tracks.COLUMNS[track.lower()]) for track in TRACKS_CHALLENGE_DIRS}
TRACKS_VA_TEST_SAMPLE = "CVPR_6th_ABAW_VA_test_set_sample.txt"
TRACKS_EXPR_TEST_SAMPLE = "CVPR_6th_ABAW_Expr_test_set_sample.txt"
TRACKS_TEST_NAMES_DIR = "names_of_videos_in_each_test_set"
TRACKS_AU_TEST_NAMES = "Action_Unit_Detection_Challenge_test_set_release.txt"
_TRACKS_SAMPLE_HEADERS = {track: tracks.SUBMISSION_HEADERS[track.lower()] for track in ("VA", "EXPR")}

# RNG keys: [seed, track code, stream, ...]. MTL streams: 0 video plan, 1 frame pixels (+ video, frame), 2 video
# names, 3 videos without EXPR, 4 video annotations, 5 recordings (+ video); the single-task tracks use these for
# their videos and add their own streams: 0 the videos of each track, 1 the lines past the last crop. LSD: split
# code (+ image index) for pixels, 3 the test order.
_TRACK_CODE = {"mtl": 1, "lsd": 2, "faces": 3, "tracks": 4}
FACES_DIR = "faces"
FACE_STYLES = ("video", "rendered", "photo")
_LSD_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_OWNED_PATHS = {
    "mtl": (mtl.IMAGE_DIR, mtl.TRAIN_FILE, mtl.VAL_FILE, mtl.TEST_LIST_FILE, mtl.TEST_LABEL_FILE, prepared.AUDIO,
            prepared.TIMES, prepared.VIDEOS_JSON),
    "lsd": (lsd.TRAIN_DIR, lsd.VAL_DIR, lsd.TEST_DIR, lsd.TEST_LIST_FILE, lsd.TEST_LABEL_FILE),
    "faces": (FACES_DIR,),
    "tracks": (mtl.IMAGE_DIR, TRACKS_ANNOTATION_DIR, TRACKS_VA_TEST_SAMPLE, TRACKS_EXPR_TEST_SAMPLE,
               TRACKS_TEST_NAMES_DIR),
}
DEFAULTS = {
    "mtl": {"videos": 40, "frames": 50, "size": 112, "seed": 0},
    "tracks": {"videos": 40, "frames": 50, "size": 112, "seed": 0},
    "lsd": {"per_class": 200, "size": 112, "seed": 0},
    "faces": {"count": 2000, "size": 112, "seed": 0},
}
MIN_SIZE, MAX_SIZE = 32, 1024


# ---------------------------------------------------------------------------------------------------------------------
# Expression episodes


def _other_mix(rng: np.random.Generator) -> list:
    """2-3 AUs that are not all part of one prototype, so "Other" never looks like a weak prototype."""
    prototype_sets = [set(aus) for aus in PROTOTYPES.values() if aus]
    while True:
        mix = set(rng.choice(DRAWN_AUS, size=int(rng.integers(2, 4)), replace=False).tolist())
        if not any(mix <= proto for proto in prototype_sets):
            return sorted(mix)


def _segment_aus(rng: np.random.Generator, expression: int) -> dict:
    """AU -> gain for one expression episode: the prototype with dropped AUs, plus an occasional extra AU."""
    if expression == OTHER:
        gains = {au: rng.uniform(0.7, 1.0) for au in _other_mix(rng)}
    else:
        gains = {au: rng.uniform(0.7, 1.0) for au in PROTOTYPES[expression] if rng.random() >= AU_DROP_RATE}
    if rng.random() < EXTRA_AU_RATE:
        extra = int(rng.choice([au for au in DRAWN_AUS if au not in gains]))
        gains[extra] = rng.uniform(0.35, 0.9)
    return gains


def _smooth_noise(rng: np.random.Generator, n: int, scale: float, period: float = 12.0) -> np.ndarray:
    """Zero-mean drift with std ``scale``, smooth from frame to frame: three sinusoids of periods near ``period``."""
    t = np.arange(n)[:, None]
    periods = period * rng.uniform(0.6, 1.8, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    return scale * np.sqrt(2 / 3) * np.sin(2 * np.pi * t / periods + phases).sum(axis=1)


# ---------------------------------------------------------------------------------------------------------------------
# MTL: videos of frames with per-frame labels


def split_sizes(videos: int) -> tuple:
    """(train, validation, test) video counts: about 60/20/20, each at least one."""
    n_val = max(1, int(round(0.2 * videos)))
    n_test = max(1, int(round(0.2 * videos)))
    return videos - n_val - n_test, n_val, n_test


def video_names(rng: np.random.Generator, count: int) -> list:
    """Unique, opaque folder names in the styles seen in Aff-Wild2."""
    resolutions = ("640x360", "640x480", "854x480", "1280x720", "1920x1080", "480x360")
    names, seen = [], set()
    while len(names) < count:
        kind = int(rng.integers(5))
        number = int(rng.integers(1, 500))
        if kind == 0:
            name = f"video{number}"
        elif kind == 1:
            name = f"video{number}_{int(rng.integers(1, 4))}"
        elif kind == 2:
            name = f"video{number}_{('left', 'right')[int(rng.integers(2))]}"
        else:
            name = f"{number}-{int(rng.choice([24, 25, 30, 60]))}-{resolutions[int(rng.integers(len(resolutions)))]}"
            if kind == 4:
                name += ("_left", "_right")[int(rng.integers(2))]
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _segment_bounds(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Start indices of expression episodes plus the end: 1-3 changes per video, episodes of 6 frames or more."""
    count = max(1, min(int(rng.integers(2, 5)), frames // 10))
    bounds = np.linspace(0, frames, count + 1)
    bounds[1:-1] += rng.uniform(-0.2, 0.2, count - 1) * frames / count
    return np.round(bounds).astype(int)


def plan_video(seed: int, video_index: int, frames: int) -> dict:
    """Everything about one video except pixels: identity, look, per-frame pose, AU intensities and clean labels."""
    rng = np.random.default_rng([seed, _TRACK_CODE["mtl"], 0, video_index])
    face = sample_identity(rng, "video")
    look = sample_look(rng, "video")
    expression = np.empty(frames, np.int64)
    au = np.zeros((frames, len(DRAWN_AUS)))
    va_target = np.empty((frames, 2))
    bounds = _segment_bounds(rng, frames)
    previous = -1
    for start, end in zip(bounds[:-1], bounds[1:]):
        length = end - start
        label = previous
        while label == previous:  # an episode changes the expression
            label = int(rng.choice(len(EXPR_NAMES), p=EXPRESSION_WEIGHTS / EXPRESSION_WEIGHTS.sum()))
        previous = label
        # Onset, apex and offset: intensity ramps smoothly from a low level up to the apex and back.
        low, peak = rng.uniform(0.1, 0.25), rng.uniform(0.6, 1.0)
        ramp = min(max(3, length // 4), 8)
        envelope = np.clip(np.minimum(np.arange(length), length - 1 - np.arange(length)) / ramp, 0, 1)
        episode = low + (peak - low) * envelope
        expression[start:end] = label
        for au_number, gain in _segment_aus(rng, label).items():
            au[start:end, AU_COLUMN[au_number]] = gain * episode
        point = rng.uniform(-0.5, 0.5, 2) if label == OTHER else np.array(CIRCUMPLEX[label])
        va_target[start:end] = point[None, :] * episode[:, None]
    # Frame-to-frame wobble: smooth so that temporal models have something to exploit, never a jump.
    au = np.clip(au + (au > 0) * _smooth_noise(rng, frames, 0.03, 10)[:, None], 0.0, 1.0)
    va = va_target + rng.normal(0.0, 0.05, 2) + np.stack([_smooth_noise(rng, frames, 0.06) for _ in range(2)], 1)

    poses = np.array(sample_pose(rng, "video"))[None, :] + np.stack([
        _smooth_noise(rng, frames, 1.5, 60), _smooth_noise(rng, frames, 0.015, 60),
        _smooth_noise(rng, frames, 0.008, 60), _smooth_noise(rng, frames, 0.008, 60)], axis=1)
    gaze = np.clip(look["gaze"][None, :] + np.stack([_smooth_noise(rng, frames, 0.4, 6) for _ in range(2)], 1), -1, 1)
    blink = (rng.random(frames) < 0.03).astype(float)
    light = np.clip(look["light"] + _smooth_noise(rng, frames, 0.03, 25), 0.0, 0.5)
    skipped = (rng.random(frames) < FRAME_GAP_RATE) * rng.integers(1, 4, frames)
    skipped[0] = 0  # numbering starts at 00001
    numbers = 1 + np.arange(frames) + np.cumsum(skipped)
    return {"face": face, "look": look, "expression": expression, "au": au, "va": va, "pose": poses,
            "gaze": gaze, "blink": blink, "light": light, "numbers": numbers, "key": (seed, video_index)}


def _noisy_labels(plan: dict) -> tuple:
    """Labels of every frame of a planned video with noise as in real annotation, and which frames a training split
    leaves without VA and without AUs (boolean masks keyed "va" and "aus")."""
    seed, video_index = plan["key"]
    rng = np.random.default_rng([seed, _TRACK_CODE["mtl"], 4, video_index])
    frames = len(plan["expression"])
    expression = plan["expression"].copy()
    relabel = rng.random(frames) < EXPR_LABEL_NOISE
    offsets = rng.integers(1, len(EXPR_NAMES), frames)
    expression[relabel] = (expression[relabel] + offsets[relabel]) % len(EXPR_NAMES)
    aus = (plan["au"][:, _LABELLED_COLUMNS] > AU_THRESHOLD).astype(np.int64)
    aus ^= (rng.random(aus.shape) < AU_LABEL_NOISE).astype(np.int64)
    va = np.clip(plan["va"] + rng.normal(0.0, VA_LABEL_NOISE, plan["va"].shape), -1.0, 1.0)
    va = np.round(va, 4)
    unlabelled = {"va": rng.random(frames) < FRAME_NO_VA_RATE, "aus": rng.random(frames) < FRAME_NO_AU_RATE}
    return {"expression": expression, "aus": aus, "va": va}, unlabelled


def video_labels(plan: dict, split: str, has_expr: bool) -> dict:
    """Annotated labels of a planned video: noise as in real annotation, and the missing codes of ``split``."""
    labels, unlabelled = _noisy_labels(plan)
    if not has_expr:
        labels["expression"][:] = EXPR_MISSING
    if split == "train":
        labels["va"][unlabelled["va"]] = VA_MISSING
        labels["aus"][unlabelled["aus"]] = AU_MISSING
    return labels


def _va_text(valence: float, arousal: float) -> str:
    """Valence and arousal as written in both video layouts: four decimals, or the missing code."""
    return f"{VA_MISSING},{VA_MISSING}" if valence == VA_MISSING else f"{valence:.4f},{arousal:.4f}"


def _au_text(aus: np.ndarray) -> str:
    return ",".join(str(int(v)) for v in aus)


def _annotation_rows(name: str, numbers: np.ndarray, labels: dict) -> list:
    rows = []
    for i, number in enumerate(numbers):
        va_text = _va_text(*labels["va"][i])
        rows.append(f"{name}/{int(number):05d}.jpg,{va_text},{int(labels['expression'][i])},{_au_text(labels['aus'][i])}")
    return rows


def _video_splits(seed: int, videos: int) -> tuple:
    """Names and splits of the planned videos, shared by the MTL and single-task layouts: train, then val, then test."""
    names = video_names(np.random.default_rng([seed, _TRACK_CODE["mtl"], 2]), videos)
    n_train, n_val, n_test = split_sizes(videos)
    return names, ["train"] * n_train + ["val"] * n_val + ["test"] * n_test


def _render_video_chunk(task: dict) -> int:
    """Worker: render and write some frames of one video. Each frame's noise comes from its own RNG key."""
    cv2.setNumThreads(1)
    plan, size, seed = task["plan"], task["size"], task["seed"]
    folder = task["folder"]
    look = dict(plan["look"])
    for frame in task["frames"]:
        rng = np.random.default_rng([seed, _TRACK_CODE["mtl"], 1, task["video_index"], int(frame)])
        look["gaze"] = plan["gaze"][frame]
        look["blink"] = plan["blink"][frame]
        look["light"] = plan["light"][frame]
        image = render_face(plan["face"], plan["au"][frame], plan["pose"][frame], look, size, rng)
        with open(os.path.join(folder, f"{int(plan['numbers'][frame]):05d}.jpg"), "wb") as handle:
            handle.write(encode_jpeg(image, rng, "video"))
    return len(task["frames"])


def _render_videos(out_dir, names: list, plans: list, size: int, seed: int, workers, progress: bool,
                   unit_name: str) -> int:
    """Write every planned frame as ``cropped_aligned/<video>/%05d.jpg`` through worker processes; returns the number
    of workers."""
    tasks = []
    chunk = 64
    for index, (name, plan) in enumerate(zip(names, plans)):
        folder = os.path.join(out_dir, mtl.IMAGE_DIR, name)
        os.makedirs(folder, exist_ok=True)
        worker_plan = {key: plan[key] for key in ("face", "look", "au", "pose", "gaze", "blink", "light", "numbers")}
        frames = len(plan["numbers"])
        for first in range(0, frames, chunk):
            tasks.append({"plan": worker_plan, "size": size, "seed": seed, "video_index": index, "folder": folder,
                          "frames": list(range(first, min(first + chunk, frames)))})
    total = sum(len(plan["numbers"]) for plan in plans)
    return _run_tasks(_render_video_chunk, tasks, total, workers, progress, unit_name)


def generate_mtl(out_dir, videos=40, frames=50, size=112, seed=0, workers=None, progress=True) -> dict:
    """Write a synthetic MTL data set (ABAW4 layout) to ``out_dir``.

    ``videos`` are split about 60/20/20 into train/validation/test, ``frames`` per video, ``size`` px square frames.
    ``workers`` processes (None: all cores). Returns the contents of ``synthetic_meta.json`` (track, params, counts,
    version) plus ``out_dir``, ``seconds``, ``images_per_s`` and ``workers``.
    """
    params = _check_params("mtl", videos=videos, frames=frames, size=size, seed=seed)
    start_time = time.perf_counter()
    _prepare_out_dir(out_dir, "mtl", params)
    names, splits = _video_splits(seed, videos)
    # Which train/val videos lack expression labels; at least one per split keeps them so F1 is defined.
    expr_rng = np.random.default_rng([seed, _TRACK_CODE["mtl"], 3])
    has_expr = [split == "test" or expr_rng.random() >= VIDEO_NO_EXPR_RATE for split in splits]
    for split in ("train", "val"):
        members = [i for i, s in enumerate(splits) if s == split]
        if not any(has_expr[i] for i in members):
            has_expr[members[0]] = True

    rows = {"train": [], "val": [], "test": []}
    test_images = []
    plans = [plan_video(seed, index, frames) for index in range(videos)]
    for index, (name, split, plan) in enumerate(zip(names, splits, plans)):
        labels = video_labels(plan, split, has_expr[index])
        rows[split].extend(_annotation_rows(name, plan["numbers"], labels))
        if split == "test":
            test_images.extend(f"{name}/{int(n):05d}.jpg" for n in plan["numbers"])
    workers_used = _render_videos(out_dir, names, plans, size, seed, workers, progress, "mtl frames")
    silent = write_recordings(out_dir, names, plans, [seed, _TRACK_CODE["mtl"], 5])

    write_text_atomic(os.path.join(out_dir, mtl.TRAIN_FILE), _lines([_MTL_HEADER] + rows["train"]))
    write_text_atomic(os.path.join(out_dir, mtl.VAL_FILE), _lines([_MTL_HEADER] + rows["val"]))
    write_text_atomic(os.path.join(out_dir, mtl.TEST_LIST_FILE), _lines([mtl.SUBMISSION_HEADER] + test_images))
    write_text_atomic(os.path.join(out_dir, mtl.TEST_LABEL_FILE), _lines([_MTL_HEADER] + rows["test"]))
    counts = {"images": videos * frames, "videos": {split: splits.count(split) for split in rows},
              "frames": {split: len(rows[split]) for split in rows},
              "videos_without_expr": sum(not flag for flag in has_expr), "videos_without_sound": silent}
    return _finish(out_dir, "mtl", params, counts, start_time, workers_used)


# ---------------------------------------------------------------------------------------------------------------------
# Single-task tracks: the MTL videos, one annotation file per video and track


def track_videos(seed: int, splits: list) -> dict:
    """Track ("VA", "EXPR", "AU") -> which videos it annotates, a boolean per video of ``splits``.

    VA annotates every video; each video is left out of EXPR, or else of AU, with ``TRACK_ABSENT_RATE`` each. A split
    of two videos or more keeps one in all three tracks and one that is not (so each track has every split).
    """
    rng = np.random.default_rng([seed, _TRACK_CODE["tracks"], 0])
    # The track each video is left out of: 0 none, 1 EXPR, 2 AU.
    left_out = rng.choice(3, size=len(splits), p=[1 - 2 * TRACK_ABSENT_RATE, TRACK_ABSENT_RATE, TRACK_ABSENT_RATE])
    for split in ("train", "val", "test"):
        members = [i for i, s in enumerate(splits) if s == split]
        if all(left_out[i] for i in members):
            left_out[members[0]] = 0
        if len(members) > 1 and not any(left_out[i] for i in members):
            left_out[members[-1]] = 1 + int(rng.integers(2))
    return {"VA": np.ones(len(splits), bool), "EXPR": left_out != 1, "AU": left_out != 2}


def track_line_labels(plan: dict, split: str, extra_lines: int) -> dict:
    """Labels of every line of a video's single-task files: frame numbers 1 to the last crop's number plus
    ``extra_lines``.

    A frame with a crop has its :func:`video_labels` (with EXPR: a video without them is one the EXPR track leaves
    out); a frame without one (a gap, or past the last crop) has the labels of the crop before it, without the
    training split's missing codes, since the real files annotate the video, not its crops.
    """
    labels, unlabelled = _noisy_labels(plan)
    numbers = plan["numbers"]
    line_numbers = np.arange(1, int(numbers[-1]) + extra_lines + 1)
    source = np.searchsorted(numbers, line_numbers, side="right") - 1
    lines = {key: value[source] for key, value in labels.items()}
    if split == "train":
        with_crop = numbers[source] == line_numbers
        lines["va"][unlabelled["va"][source] & with_crop] = VA_MISSING
        lines["aus"][unlabelled["aus"][source] & with_crop] = AU_MISSING
    return lines


def _track_file_text(track: str, labels: dict) -> str:
    """One video's annotation file of ``track`` (ABAW4.md): the header, then one line per frame."""
    if track == "VA":
        rows = [_va_text(valence, arousal) for valence, arousal in labels["va"]]
    elif track == "EXPR":
        rows = [str(int(expression)) for expression in labels["expression"]]
    else:
        rows = [_au_text(aus) for aus in labels["aus"]]
    return _lines([TRACKS_HEADERS[track]] + rows)


def generate_tracks(out_dir, videos=40, frames=50, size=112, seed=0, workers=None, progress=True) -> dict:
    """Write the synthetic single-task VA, EXPR and AU tracks (ABAW2-8 layout, module docstring) to ``out_dir``.

    Same videos, splits, frames and labels as :func:`generate_mtl` with the same arguments; each track annotates the
    videos :func:`track_videos` gives it. Returns the same summary as :func:`generate_mtl`; its counts give videos and
    annotation lines (frames, with a crop or not) per track and split.
    """
    params = _check_params("tracks", videos=videos, frames=frames, size=size, seed=seed)
    start_time = time.perf_counter()
    _prepare_out_dir(out_dir, "tracks", params)
    names, splits = _video_splits(seed, videos)
    annotated = track_videos(seed, splits)
    extra_lines = np.random.default_rng([seed, _TRACK_CODE["tracks"], 1]).integers(1, EXTRA_LINES_MAX + 1, videos)
    plans = [plan_video(seed, index, frames) for index in range(videos)]

    counts = {"images": videos * frames, "videos": {track: dict.fromkeys(TRACKS_SET_DIRS, 0) for track in annotated},
              "frames": {track: dict.fromkeys(TRACKS_SET_DIRS, 0) for track in annotated}}
    test_lines = {track: [] for track in annotated}
    for challenge_dir in TRACKS_CHALLENGE_DIRS.values():
        for set_dir in TRACKS_SET_DIRS.values():
            os.makedirs(os.path.join(out_dir, TRACKS_ANNOTATION_DIR, challenge_dir, set_dir), exist_ok=True)
    for index, (name, split, plan) in enumerate(zip(names, splits, plans)):
        labels = track_line_labels(plan, split, int(extra_lines[index]))
        lines = len(labels["expression"])
        for track in annotated:
            if not annotated[track][index]:
                continue
            path = os.path.join(out_dir, TRACKS_ANNOTATION_DIR, TRACKS_CHALLENGE_DIRS[track], TRACKS_SET_DIRS[split],
                                name + ".txt")
            # A plain write, as for the frames: synthetic_meta.json, written last, marks the set complete.
            with open(path, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(_track_file_text(track, labels))
            counts["videos"][track][split] += 1
            counts["frames"][track][split] += lines
            if split == "test":
                test_lines[track].extend(f"{name}/{number:05d}.jpg," for number in range(1, lines + 1))
    workers_used = _render_videos(out_dir, names, plans, size, seed, workers, progress, "tracks frames")

    for track, file_name in (("VA", TRACKS_VA_TEST_SAMPLE), ("EXPR", TRACKS_EXPR_TEST_SAMPLE)):
        write_text_atomic(os.path.join(out_dir, file_name), _lines([_TRACKS_SAMPLE_HEADERS[track]] + test_lines[track]))
    au_test_names = [name for index, name in enumerate(names) if splits[index] == "test" and annotated["AU"][index]]
    write_text_atomic(os.path.join(out_dir, TRACKS_TEST_NAMES_DIR, TRACKS_AU_TEST_NAMES), _lines(au_test_names))
    return _finish(out_dir, "tracks", params, counts, start_time, workers_used)


# ---------------------------------------------------------------------------------------------------------------------
# LSD: still images per class, two styles


def lsd_real_per_class(per_class: int) -> int:
    """Images per class in the validation and test splits: about a quarter of the training count, at least 5."""
    return max(5, int(round(per_class / 4)))


def _lsd_aus(rng: np.random.Generator, label: int) -> np.ndarray:
    """AU intensities of one still image: the class prototype near its apex."""
    au = np.zeros(len(DRAWN_AUS))
    peak = rng.uniform(0.5, 1.0)
    for au_number, gain in _segment_aus(rng, LSD_TO_MTL[label]).items():
        au[AU_COLUMN[au_number]] = np.clip(gain * peak + rng.normal(0.0, 0.05), 0.0, 1.0)
    return au


def _render_lsd_chunk(task: dict) -> int:
    """Worker: render and write LSD images; each image's identity, pose and noise come from its own RNG key."""
    cv2.setNumThreads(1)
    style = task["style"]
    for index, label, path in task["items"]:
        rng = np.random.default_rng([task["seed"], _TRACK_CODE["lsd"], task["split_code"], index])
        face = sample_identity(rng, style)
        look = sample_look(rng, style)
        au = _lsd_aus(rng, label)
        pose = sample_pose(rng, style)
        image = render_face(face, au, pose, look, task["size"], rng)
        with open(path, "wb") as handle:
            handle.write(encode_jpeg(image, rng, style))
    return len(task["items"])


def generate_lsd(out_dir, per_class=200, size=112, seed=0, workers=None, progress=True) -> dict:
    """Write a synthetic LSD data set (ABAW4 layout) to ``out_dir``.

    ``per_class`` rendered training images per class; the photo-style validation and test splits get
    ``lsd_real_per_class(per_class)`` per class. Returns the same summary as :func:`generate_mtl`.
    """
    params = _check_params("lsd", per_class=per_class, size=size, seed=seed)
    start_time = time.perf_counter()
    _prepare_out_dir(out_dir, "lsd", params)
    n_real = lsd_real_per_class(per_class)
    n_classes = len(LSD_CLASSES)
    items = {"train": [], "val": [], "test": []}
    for label in range(n_classes):
        for k in range(per_class):
            index = label * per_class + k
            items["train"].append((index, label, os.path.join(out_dir, lsd.TRAIN_DIR, LSD_TRAIN_FOLDERS[label],
                                                              f"{index:06d}.jpg")))
        for k in range(n_real):
            index = label * n_real + k
            items["val"].append((index, label, os.path.join(out_dir, lsd.VAL_DIR, lsd.CLASSES[label],
                                                            f"img_{index:05d}.jpg")))
    # Test images are named 0.jpg, 1.jpg, ... in an order that does not reveal the class.
    test_labels = np.repeat(np.arange(n_classes), n_real)
    np.random.default_rng([seed, _TRACK_CODE["lsd"], 3]).shuffle(test_labels)
    for index, label in enumerate(test_labels):
        items["test"].append((index, int(label), os.path.join(out_dir, lsd.TEST_DIR, f"{index}.jpg")))
    for folder in LSD_TRAIN_FOLDERS:
        os.makedirs(os.path.join(out_dir, lsd.TRAIN_DIR, folder), exist_ok=True)
    for folder in lsd.CLASSES:
        os.makedirs(os.path.join(out_dir, lsd.VAL_DIR, folder), exist_ok=True)
    os.makedirs(os.path.join(out_dir, lsd.TEST_DIR), exist_ok=True)

    tasks = []
    chunk = 64
    for split, style in (("train", "rendered"), ("val", "photo"), ("test", "photo")):
        for first in range(0, len(items[split]), chunk):
            tasks.append({"items": items[split][first:first + chunk], "style": style, "size": size, "seed": seed,
                          "split_code": _LSD_SPLIT_CODE[split]})
    total = sum(len(v) for v in items.values())
    workers_used = _run_tasks(_render_lsd_chunk, tasks, total, workers, progress, "lsd images")

    names = [f"{index}.jpg" for index in range(len(test_labels))]
    write_text_atomic(os.path.join(out_dir, lsd.TEST_LIST_FILE), _lines([lsd.SUBMISSION_HEADER] + names))
    write_text_atomic(os.path.join(out_dir, lsd.TEST_LABEL_FILE),
                      _lines([lsd.SUBMISSION_HEADER] + [f"{n},{int(c)}" for n, c in zip(names, test_labels)]))
    counts = {"images": total, "per_class": {"train": per_class, "val": n_real, "test": n_real},
              "split": {split: len(v) for split, v in items.items()}}
    return _finish(out_dir, "lsd", params, counts, start_time, workers_used)


# ---------------------------------------------------------------------------------------------------------------------
# Faces: an unlabelled collection for pretraining


def _render_faces_chunk(task: dict) -> int:
    """Worker: render and write unlabelled faces; everything about an image comes from its own RNG key."""
    cv2.setNumThreads(1)
    for index in task["indices"]:
        rng = np.random.default_rng([task["seed"], _TRACK_CODE["faces"], index])
        style = FACE_STYLES[index % len(FACE_STYLES)]
        face, look, pose = sample_identity(rng, style), sample_look(rng, style), sample_pose(rng, style)
        expression = int(rng.choice(len(EXPR_NAMES), p=EXPRESSION_WEIGHTS / EXPRESSION_WEIGHTS.sum()))
        au = np.zeros(len(DRAWN_AUS))
        intensity = rng.uniform(0.0, 1.0)
        for au_number, gain in _segment_aus(rng, expression).items():
            au[AU_COLUMN[au_number]] = gain * intensity
        image = render_face(face, au, pose, look, task["size"], rng)
        with open(os.path.join(task["folder"], f"{index:06d}.jpg"), "wb") as handle:
            handle.write(encode_jpeg(image, rng, style))
    return len(task["indices"])


def generate_faces(out_dir, count=2000, size=112, seed=0, workers=None, progress=True) -> dict:
    """Write ``count`` unlabelled synthetic faces to ``out_dir/faces/NNNNNN.jpg`` (module docstring). Returns the same
    summary as :func:`generate_mtl`."""
    params = _check_params("faces", count=count, size=size, seed=seed)
    start_time = time.perf_counter()
    _prepare_out_dir(out_dir, "faces", params)
    folder = os.path.join(out_dir, FACES_DIR)
    os.makedirs(folder, exist_ok=True)
    chunk = 128
    tasks = [{"indices": list(range(first, min(first + chunk, count))), "size": size, "seed": seed,
              "folder": folder} for first in range(0, count, chunk)]
    workers_used = _run_tasks(_render_faces_chunk, tasks, count, workers, progress, "faces")
    counts = {"images": count, "styles": {style: len(range(i, count, len(FACE_STYLES)))
                                          for i, style in enumerate(FACE_STYLES)}}
    return _finish(out_dir, "faces", params, counts, start_time, workers_used)


# ---------------------------------------------------------------------------------------------------------------------
# Running, bookkeeping and the completeness marker


def _run_tasks(function, tasks: list, total: int, workers, progress: bool, unit_name: str) -> int:
    """Run ``function`` over ``tasks`` on all cores (or in this process for one worker), with a progress bar."""
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    workers = max(1, min(workers, len(tasks)))
    with tqdm(total=total, unit="img", desc=unit_name, disable=not progress, dynamic_ncols=True) as bar:
        if workers == 1:
            previous = cv2.getNumThreads()
            try:
                for task in tasks:
                    bar.update(function(task))
            finally:
                cv2.setNumThreads(previous)
        else:
            # fork on Linux: no __main__ guard needed in callers, instant start. Safe with a parent that ran torch:
            # workers only use OpenCV (set to one thread) and NumPy, never the parent's OpenMP pool.
            context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with context.Pool(workers) as pool:
                for done in pool.imap_unordered(function, tasks):
                    bar.update(done)
    return workers


def _check_params(track: str, **params) -> dict:
    minimum = {"videos": 3, "frames": 1, "per_class": 1, "count": 1, "seed": 0}
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise UserError(f"synthetic {track}: {key} must be an integer, got {value!r}")
        if key == "size" and not MIN_SIZE <= value <= MAX_SIZE:
            raise UserError(f"synthetic {track}: size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {value}")
        if key in minimum and value < minimum[key]:
            raise UserError(f"synthetic {track}: {key} must be at least {minimum[key]}, got {value}")
    return {key: int(value) for key, value in params.items()}


def _read_meta(out_dir) -> dict | None:
    try:
        with open(os.path.join(out_dir, META_FILE), encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _prepare_out_dir(out_dir, track: str, params: dict, owned_paths=None):
    """Ready ``out_dir``: refuse foreign data, clear an earlier synthetic set of this track, mark it in progress.
    ``owned_paths``: the top-level names the track's generator writes (a generator module's ``OWNED_PATHS``)."""
    os.makedirs(out_dir, exist_ok=True)
    meta = _read_meta(out_dir)
    owned_paths = _OWNED_PATHS[track] if owned_paths is None else owned_paths
    owned = [name for name in owned_paths if os.path.exists(os.path.join(out_dir, name))]
    if meta is None and owned:
        raise UserError(f"{out_dir} already holds {owned[0]} that this generator did not write; "
                        f"choose an empty or new folder for synthetic data")
    if meta is not None and meta.get("track") != track:
        raise UserError(f"{out_dir} holds a synthetic {meta.get('track')} set; use another folder for the {track} set")
    for name in owned:
        path = os.path.join(out_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    # Written first as incomplete so an interrupted run is recognised as ours (and as not finished).
    _write_meta(out_dir, track, params, counts=None, complete=False)


def _write_meta(out_dir, track: str, params: dict, counts, complete: bool) -> dict:
    meta = {"generator": "datasets.synthetic", "version": GENERATOR_VERSION, "track": track, "params": params,
            "counts": counts, "complete": complete}
    write_text_atomic(os.path.join(out_dir, META_FILE), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def _finish(out_dir, track: str, params: dict, counts: dict, start_time: float, workers: int) -> dict:
    meta = _write_meta(out_dir, track, params, counts, complete=True)  # last: marks the set complete
    seconds = time.perf_counter() - start_time
    return dict(meta, out_dir=str(out_dir), seconds=seconds, images_per_s=counts["images"] / max(seconds, 1e-9),
                workers=workers)


def _lines(lines: list) -> str:
    return "\n".join(lines) + "\n"


def bounded_int(low: int, high: int | None = None):
    """An argparse type: an integer of at least ``low`` (and at most ``high``), else a one-line message."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


# The video-level and compound-expression tracks: each generator is a module of this package with its own
# ``DEFAULTS``, ``generate``, ``is_generated`` and ``add_arguments`` (its command-line flags).
TRACK_MODULES = ("emi", "ah", "ce")


def track_module(track: str):
    import importlib

    return importlib.import_module(f"datasets.synthetic.{track}")


def is_generated(out_dir, track, **params) -> bool:
    """True when ``out_dir`` holds a complete synthetic ``track`` set made with ``params`` (defaults fill the rest).

    ``workers`` and ``progress`` may be passed and are ignored: they do not change the data.
    """
    if track in TRACK_MODULES:
        return track_module(track).is_generated(out_dir, **params)
    if track not in DEFAULTS:
        raise ValueError(f"unknown track {track!r}; expected one of {sorted(DEFAULTS)}")
    params = {key: value for key, value in params.items() if key not in ("workers", "progress")}
    unknown = set(params) - set(DEFAULTS[track])
    if unknown:
        raise TypeError(f"is_generated({track!r}) got unknown parameters {sorted(unknown)}")
    return is_complete(out_dir, track, dict(DEFAULTS[track], **params), _OWNED_PATHS[track])


def is_complete(out_dir, track: str, wanted: dict, owned_paths) -> bool:
    """Whether ``out_dir`` holds a finished ``track`` set of this generator version made with the parameters
    ``wanted`` (every one given), with each of ``owned_paths`` present."""
    meta = _read_meta(out_dir)
    if meta is None or not meta.get("complete") or meta.get("version") != GENERATOR_VERSION:
        return False
    if meta.get("track") != track or meta.get("params") != {key: int(value) for key, value in wanted.items()}:
        return False
    return all(os.path.exists(os.path.join(out_dir, name)) for name in owned_paths)


def generate(track: str, out_dir, **params) -> dict:
    """:func:`generate_mtl`, :func:`generate_tracks`, :func:`generate_lsd` or :func:`generate_faces`, by track name
    (the demos' data sets), or the generator module of a track of ``TRACK_MODULES``."""
    if track in TRACK_MODULES:
        return track_module(track).generate(out_dir, **params)
    if track not in DEFAULTS:
        raise ValueError(f"unknown track {track!r}; expected one of {sorted(DEFAULTS)}")
    generators = {"mtl": generate_mtl, "tracks": generate_tracks, "lsd": generate_lsd, "faces": generate_faces}
    return generators[track](out_dir, **params)
