"""The synthetic Ambivalence/Hesitancy (BAH) set, in both released layouts (``datasets.tracks.ah``).

    python -m datasets.synthetic ah OUT_DIR [--videos 100] [--frames 32] [--size 112] [--seed 0] [--workers N]

Each video is a person answering a question, planned like an MTL video of ``datasets.synthetic`` (identity,
expression episodes as AU intensities, pose, gaze, valence and arousal), with hesitancy episodes laid over it in about
30 % of the videos of each split. An episode mixes the cues of ambivalence the BAH annotators looked for, each drawn
with its own chance: gaze aversion (the eyes and the head turned aside), a mixed expression (two prototypes' AUs drawn
together: a smile with lowered brows, a pressed or down-turned mouth) and a pause in the speech. Negative videos now
and then show one weak cue alone (a glance aside), so that a single cue is not the label. A video is positive when it
holds an episode; a frame is positive when it lies inside one. The words spoken carry the same signal: hesitation
markers ("um", "well, I mean", "I don't know") come up far more often in a positive video's answer.

Frames run at ``FPS`` per second (two crops a second keep the set small: a video lasts 12 to 20 s at the defaults).
The real transcripts' timestamps restart at each 30-s window of the speech recogniser; these videos are shorter, so
their window is ``WINDOW_S`` = 10 s, and the quirk appears in every video. Written::

    Videos/<pid>/Visite_1/<pid>_Question_<q>_<date>_<time>_Video.mp4   ABAW10/11: the face frames with the voice (AAC
                                                                         16 kHz; ``SILENT_RATE`` of them without sound)
    cropped-aligned-faces/Videos/.../<video>.mp4/frame-N.jpg             N from 0; a few frames without a crop
    transcription/Videos/.../<video>.mp4/<video>.yml                     chunks with !!python/tuple timestamps that
                                                                         restart every 10 s, the last end null
    split/train.txt, val.txt, test.txt                                   video_path,label,transcript (test: label 0)
    split/test_labels.txt                                                the test labels (synthetic data only)
    annotation.yml, default-split/{train,val}.txt                        ABAW8: the same videos as
    videos/<pid>/Visite 1/<pid>_Question_<q>_<date> <time>_Video.mp4     "<pid>/Visite 1/..." (spaces in the names),
    cropped-aligned-faces/<pid>/Visite 1/.../frame-N.jpg                 hard links to the same files
    trial-0.txt, test_labels.txt                                         ABAW8's example submission of the test
                                                                         frames (label 0) and their true labels

Same seed, same bytes, whatever the number of workers: every random choice comes from
``np.random.default_rng([seed, TRACK_CODE, stream, video])``, OpenCV and x264 run on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import cv2
import numpy as np

from datasets.synthetic import (
    MIN_SIZE,
    _check_params,
    _finish,
    _prepare_out_dir,
    _run_tasks,
    bounded_int,
    is_complete,
    plan_video,
    split_sizes,
)
from datasets.synthetic.render import AU_COLUMN, encode_jpeg, render_face
from datasets.synthetic.sound import SAMPLE_RATE, render_sound
from datasets.synthetic.videos import write_video
from datasets.tracks import ah as track
from utils.atomic import write_text_atomic
from utils.errors import UserError

NAME = "ah"
TRACK_CODE = 7  # this set's RNG streams, apart from datasets.synthetic's (1-4) and datasets.synthetic.videos' (6)
_PLAN_INDEX_BASE = 70_000  # the MTL planner's video index of video 0, so that no MTL video's plan is reused
DEFAULTS = {"videos": 100, "frames": 32, "size": 112, "seed": 0}
FPS = 2.0
POSITIVE_RATE = 0.3  # share of videos with hesitancy episodes, in each split (BAH: 20.7 % of frames)
GAP_RATE = 0.03  # frames without a crop (face not found)
SILENT_RATE = 0.05  # videos whose file has no sound
WINDOW_S = 10.0  # the speech recogniser's window (30 s in BAH, scaled to the short videos): timestamps restart at each
CUE_RATES = {"gaze": 0.85, "mixed": 0.75, "pause": 0.6}  # chance that an episode shows each cue (at least one)
DISTRACTOR_RATE = 0.35  # a negative video shows one weak cue alone
HESITATION_RATE = (0.12, 0.6)  # chance that a spoken chunk carries a hesitation marker: negative, positive video
PAUSE_GAIN = 0.06  # the voice's level during a pause
OWNED_PATHS = ("Videos", track.FACES_DIR, track.TRANSCRIPT_DIR, track.SPLIT_DIR, track.FRAME_ANNOTATION,
               track.FRAME_SPLIT_DIR, track.FRAME_VIDEOS_DIR, track.FRAME_TEST_EXAMPLE, track.TEST_LABEL_FILE)

HESITATIONS = ("um,", "uh,", "well, I mean,", "I don't know,", "hmm, maybe,", "I guess, I'm not sure,",
               "it's hard to say,", "on the one hand, yes, but")
SENTENCES = ("I take my medication every morning, usually after breakfast.",
             "my doctor said the results were good, so I kept going.",
             "I walk for about thirty minutes a day, sometimes more.",
             "eating less sugar is something I try to do, yes.",
             "I would like to sleep better, it would help.",
             "my family supports me, they remind me to exercise.",
             "I started the program last year, in the spring.",
             "I check my blood pressure at home, twice a week.",
             "work keeps me busy, but I find the time.",
             "I stopped smoking three years ago, and I feel better.",
             "the advice was clear, I know what to do.",
             "cooking at home is cheaper, and healthier too.")


def video_paths(pid: int, question: int, stamp: str) -> tuple[str, str]:
    """(ABAW10/11 video path, ABAW8 video path) of one answer; ``stamp`` is ``<date>_<time>``."""
    date, clock = stamp.split("_")
    return (f"Videos/{pid}/Visite_1/{pid}_Question_{question}_{date}_{clock}_Video.mp4",
            f"{pid}/Visite 1/{pid}_Question_{question}_{date} {clock}_Video.mp4")


def _names(seed: int, videos: int) -> list[tuple[str, str]]:
    """Each video's two paths: people answer 2 to 5 questions each, on one visit."""
    rng = np.random.default_rng([seed, TRACK_CODE, 0])
    names, pid = [], int(rng.integers(80000, 89000))
    while len(names) < videos:
        pid += int(rng.integers(1, 40))
        day = f"2025-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
        hour, minute = int(rng.integers(8, 18)), int(rng.integers(0, 50))
        for question in range(1, int(rng.integers(2, 6)) + 1):
            second = int(rng.integers(0, 60))
            names.append(video_paths(pid, question, f"{day}_{hour:02d}-{minute + question:02d}-{second:02d}"))
    return names[:videos]


def _splits(seed: int, videos: int) -> tuple[list[str], np.ndarray]:
    """The split of each video (train, then val, then test) and which are positive: round(30 %) of each split."""
    n_train, n_val, n_test = split_sizes(videos)
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    rng = np.random.default_rng([seed, TRACK_CODE, 1])
    positive = np.zeros(videos, bool)
    for split in ("train", "val", "test"):
        members = np.array([k for k, name in enumerate(splits) if name == split])
        count = min(len(members), max(1, int(round(POSITIVE_RATE * len(members)))))
        positive[rng.choice(members, count, replace=False)] = True
    return splits, positive


def _episodes(rng: np.random.Generator, frames: int, count: int) -> list[tuple[int, int]]:
    """``count`` non-overlapping (start, end) frame ranges of a third to a half of the video each (as room allows)."""
    episodes, cursor = [], int(rng.integers(0, max(1, frames // 6)))
    for k in range(count):
        length = int(rng.integers(max(3, frames // 3), max(4, frames // 2) + 1))
        room = frames - cursor - length
        if room < 0:
            break
        start = cursor + int(rng.integers(0, room // max(1, count - k) + 1))
        episodes.append((start, start + length))
        cursor = start + length + 2
    return episodes or [(0, min(frames, 4))]


def plan_answer(seed: int, index: int, frames: int, positive: bool) -> dict:
    """One video: the MTL plan with hesitancy laid over it, its frame labels, crops, pauses and transcript chunks."""
    rng = np.random.default_rng([seed, TRACK_CODE, 2, index])
    length = int(rng.integers(int(0.75 * frames), int(1.25 * frames) + 1)) if frames >= 4 else frames
    plan = plan_video(seed, _PLAN_INDEX_BASE + index, length)
    au, pose, gaze = plan["au"], plan["pose"], plan["gaze"]
    frame_labels = np.zeros(length, np.int64)
    pauses = []
    if positive:
        episodes = _episodes(rng, length, 1 + int(rng.random() < 0.35))
    else:
        episodes = _episodes(rng, length, 1)[:1] if rng.random() < DISTRACTOR_RATE else []
    for start, end in episodes:
        span = end - start
        ramp = np.clip(np.minimum(np.arange(span) + 1, span - np.arange(span)) / 2.0, 0, 1)
        if positive:
            cues = {cue for cue, rate in CUE_RATES.items() if rng.random() < rate} or {"gaze", "mixed"}
            strength = rng.uniform(0.75, 1.0)
            frame_labels[start:end] = 1
        else:  # a distractor: one cue, weaker, never the mixed expression
            cues, strength = {("gaze", "pause")[int(rng.integers(2))]}, rng.uniform(0.35, 0.6)
        if "gaze" in cues:
            side = rng.choice([-1.0, 1.0])
            gaze[start:end, 0] = side * strength * ramp + (1 - ramp) * gaze[start:end, 0]
            gaze[start:end, 1] = 0.5 * strength * ramp
            turn = 1.0 if positive else 0.15  # a distractor is a glance: the eyes move, the head hardly
            pose[start:end, 0] += side * rng.uniform(12.0, 20.0) * turn * strength * ramp  # the head turns away
            pose[start:end, 2] += side * 0.05 * turn * strength * ramp
        if "mixed" in cues:  # a smile with lowered brows and pressed or down-turned lips: two prototypes at once
            for au_number, low, high in ((12, 0.6, 0.95), (4, 0.6, 0.95), ((24, 15)[int(rng.integers(2))], 0.4, 0.8)):
                column = AU_COLUMN[au_number]
                au[start:end, column] = np.maximum(au[start:end, column], rng.uniform(low, high) * strength * ramp)
        if "pause" in cues:
            pauses.append((start / FPS, end / FPS))
    has_crop = rng.random(length) >= GAP_RATE
    has_crop[0] = True
    spoken = _chunks(rng, length / FPS, positive)
    return {"plan": plan, "frames": length, "frame_labels": frame_labels, "has_crop": has_crop, "pauses": pauses,
            "chunks": spoken, "silent": bool(rng.random() < SILENT_RATE), "label": int(bool(positive))}


def _chunks(rng: np.random.Generator, duration: float, positive: bool) -> list[tuple[float, float, str]]:
    """The answer's speech as (start, end, text) chunks over the video, some opening with a hesitation marker."""
    chunks, t = [], rng.uniform(0.2, 1.5)
    rate = HESITATION_RATE[int(positive)]
    while t < duration - 1.0:
        length = min(rng.uniform(2.0, 4.0), duration - t)
        text = str(SENTENCES[int(rng.integers(len(SENTENCES)))])
        if rng.random() < rate:
            text = f"{HESITATIONS[int(rng.integers(len(HESITATIONS)))]} {text}"
        chunks.append((round(t, 2), round(t + length, 2), text[0].upper() + text[1:]))
        t += length + rng.uniform(0.1, 0.8)
    return chunks or [(0.0, round(duration, 2), "Yes.")]


def transcript_yaml(chunks: list[tuple[float, float, str]]) -> str:
    """A transcription ``.yml`` as the organisers' speech recogniser wrote it: times relative to its 30-s window,
    ``!!python/tuple`` timestamps, the last end null. JSON strings are YAML double-quoted scalars."""
    lines = [f"text: {json.dumps(' ' + ' '.join(text for _, _, text in chunks))}", "chunks:"]
    for k, (start, end, text) in enumerate(chunks):
        window = np.floor(start / WINDOW_S) * WINDOW_S
        end_text = "null" if k == len(chunks) - 1 else f"{round(end - window, 2)}"
        lines += ["- language: english", f"  text: {json.dumps(' ' + text)}", "  timestamp: !!python/tuple",
                  f"  - {round(start - window, 2)}", f"  - {end_text}"]
    return "\n".join(lines) + "\n"


def _voice(answer: dict, rng: np.random.Generator) -> np.ndarray | None:
    """The answer's sound: the MTL voice of its traces, nearly silent during its pauses."""
    if answer["silent"]:
        return None
    plan = answer["plan"]
    samples = render_sound(np.clip(plan["va"][:, 0], -1, 1), np.clip(plan["va"][:, 1], -1, 1), plan["expression"],
                           FPS, rng, SAMPLE_RATE)
    gain = np.ones(len(samples), np.float32)
    fade = int(0.05 * SAMPLE_RATE)
    for start_s, end_s in answer["pauses"]:
        start, end = int(start_s * SAMPLE_RATE), min(len(samples), int(end_s * SAMPLE_RATE))
        if end - start > 2 * fade:
            shape = np.full(end - start, PAUSE_GAIN, np.float32)
            shape[:fade] = np.linspace(1.0, PAUSE_GAIN, fade)
            shape[-fade:] = np.linspace(PAUSE_GAIN, 1.0, fade)
            gain[start:end] = np.minimum(gain[start:end], shape)
    return samples * gain


def _link(source: str, target: str) -> None:
    """``target`` as a hard link of ``source`` (a copy where the file system has none)."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_video_files(task: dict) -> int:
    """Worker: one video's crops, MP4 with sound and their ABAW8 links."""
    cv2.setNumThreads(1)
    out_dir, seed, index, size = task["out_dir"], task["seed"], task["index"], task["size"]
    answer = plan_answer(seed, index, task["frames"], task["positive"])
    plan = answer["plan"]
    path10, path8 = task["paths"]
    crops10 = os.path.join(out_dir, track.FACES_DIR, path10)
    crops8 = os.path.join(out_dir, track.FACES_DIR, path8)
    os.makedirs(crops10, exist_ok=True)
    look = dict(plan["look"])
    images = []
    for frame in range(answer["frames"]):
        rng = np.random.default_rng([seed, TRACK_CODE, 3, index, frame])
        look["gaze"], look["blink"], look["light"] = plan["gaze"][frame], plan["blink"][frame], plan["light"][frame]
        image = render_face(plan["face"], plan["au"][frame], plan["pose"][frame], look, size, rng)
        images.append(image)
        if answer["has_crop"][frame]:
            name = f"frame-{frame}.jpg"
            with open(os.path.join(crops10, name), "wb") as handle:
                handle.write(encode_jpeg(image, rng, "video"))
            _link(os.path.join(crops10, name), os.path.join(crops8, name))
    even = size + size % 2
    frames_rgb = (np.ascontiguousarray(cv2.copyMakeBorder(image, 0, even - size, 0, even - size,
                                                          cv2.BORDER_REPLICATE)[:, :, ::-1]) for image in images)
    sound = _voice(answer, np.random.default_rng([seed, TRACK_CODE, 4, index]))
    video_file = os.path.join(out_dir, path10)
    os.makedirs(os.path.dirname(video_file), exist_ok=True)
    write_video(video_file, frames_rgb, np.arange(answer["frames"]) / FPS, sound=sound, fps=FPS)
    _link(video_file, os.path.join(out_dir, track.FRAME_VIDEOS_DIR, path8))
    return answer["frames"]


def is_generated(out_dir: str, **params) -> bool:
    """True when ``out_dir`` holds a complete synthetic A/H set made with ``params`` (defaults fill the rest)."""
    params = {key: value for key, value in params.items() if key not in ("workers", "progress")}
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"is_generated({NAME!r}) got unknown parameters {sorted(unknown)}")
    return is_complete(out_dir, NAME, dict(DEFAULTS, **params), OWNED_PATHS)


def generate(out_dir, workers=None, progress=True, **params) -> dict:
    """Write the set (module text) to ``out_dir``; returns the generator's summary with counts of images (crops),
    videos per split, positive videos per split and frames."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise UserError(f"synthetic {NAME}: unknown parameters {', '.join(sorted(unknown))}")
    params = _check_params(NAME, **dict(DEFAULTS, **params))
    if params["frames"] < 8:
        raise UserError(f"synthetic {NAME}: frames must be at least 8, got {params['frames']}")
    videos, frames, size, seed = params["videos"], params["frames"], params["size"], params["seed"]
    start_time = time.perf_counter()
    _prepare_out_dir(out_dir, NAME, params, OWNED_PATHS)
    names = _names(seed, videos)
    splits, positive = _splits(seed, videos)
    answers = [plan_answer(seed, index, frames, bool(positive[index])) for index in range(videos)]
    tasks = [{"out_dir": str(out_dir), "seed": seed, "index": index, "size": size, "frames": frames,
              "positive": bool(positive[index]), "paths": names[index]} for index in range(videos)]
    workers_used = _run_tasks(_write_video_files, tasks, sum(a["frames"] for a in answers), workers, progress,
                              "ah videos")

    split_lines = {split: [] for split in ("train", "val", "test")}
    test_truth, frame_split, annotation, trial, trial_truth = [], {"train": [], "val": []}, [], [], []
    for (path10, path8), split, answer in zip(names, splits, answers):
        os.makedirs(os.path.join(out_dir, track.TRANSCRIPT_DIR, path10), exist_ok=True)
        stem = os.path.splitext(os.path.basename(path10))[0]
        with open(os.path.join(out_dir, track.TRANSCRIPT_DIR, path10, stem + ".yml"), "w", encoding="utf-8",
                  newline="\n") as handle:
            handle.write(transcript_yaml(answer["chunks"]))
        words = " ".join(text for _, _, text in answer["chunks"])
        split_lines[split].append(f"{path10},{answer['label'] if split != 'test' else 0},{words}")
        if split == "test":
            test_truth.append(f"{path10},{answer['label']},{words}")
        kept = np.flatnonzero(answer["has_crop"])
        frame_paths = [f"{path8}/frame-{k}.jpg" for k in kept]
        if split == "test":
            trial += [f"{frame},0" for frame in frame_paths]
            trial_truth += [f"{frame},{answer['frame_labels'][k]}" for frame, k in zip(frame_paths, kept)]
        else:
            frame_split[split].append(path8)
            pairs = "\n".join(f"  - [{json.dumps(frame)}, {answer['frame_labels'][k]}]"
                              for frame, k in zip(frame_paths, kept))
            annotation.append(f"{json.dumps(path8)}:\n  global_ah: {answer['label']}\n  frame_annotation:\n{pairs}")
    for split, lines in split_lines.items():
        write_text_atomic(os.path.join(out_dir, track.SPLIT_DIR, f"{split}.txt"), "\n".join(lines) + "\n")
    write_text_atomic(os.path.join(out_dir, track.SPLIT_DIR, track.TEST_LABEL_FILE), "\n".join(test_truth) + "\n")
    write_text_atomic(os.path.join(out_dir, track.FRAME_ANNOTATION), "\n".join(annotation) + "\n")
    for split, lines in frame_split.items():
        write_text_atomic(os.path.join(out_dir, track.FRAME_SPLIT_DIR, f"{split}.txt"), "\n".join(lines) + "\n")
    write_text_atomic(os.path.join(out_dir, track.FRAME_TEST_EXAMPLE), "\n".join(trial) + "\n")
    write_text_atomic(os.path.join(out_dir, track.TEST_LABEL_FILE), "\n".join(trial_truth) + "\n")

    counts = {"images": int(sum(a["has_crop"].sum() for a in answers)),
              "frames": int(sum(a["frames"] for a in answers)),
              "videos": {split: splits.count(split) for split in ("train", "val", "test")},
              "positive": {split: int(sum(positive[k] for k in range(videos) if splits[k] == split))
                           for split in ("train", "val", "test")},
              "silent": int(sum(a["silent"] for a in answers))}
    return _finish(out_dir, NAME, params, counts, start_time, workers_used)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The set's flags after OUT_DIR (``python -m datasets.synthetic ah OUT_DIR ...``); each flag's destination is
    a keyword of :func:`generate`."""
    parser.add_argument("--videos", type=bounded_int(3), default=DEFAULTS["videos"],
                        help=f"videos, split about 60/20/20 into train/val/test (default {DEFAULTS['videos']})")
    parser.add_argument("--frames", type=bounded_int(8), default=DEFAULTS["frames"],
                        help=f"mean frames per video (two a second); each has 0.75x to 1.25x that many "
                             f"(default {DEFAULTS['frames']})")
    parser.add_argument("--size", type=bounded_int(MIN_SIZE), default=DEFAULTS["size"],
                        help=f"crop side in pixels (default {DEFAULTS['size']})")
    parser.add_argument("--seed", type=bounded_int(0), default=DEFAULTS["seed"],
                        help="same seed, same bytes (default 0)")
    parser.add_argument("--workers", type=bounded_int(1), default=None, help="processes (default: all cores)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
