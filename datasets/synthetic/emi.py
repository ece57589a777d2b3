"""The synthetic Emotional Mimicry Intensity set: people who mimic a cue, in the layout Hume-Vidmimic2 is released in.

``datasets.tracks.emi`` reads it as it reads the real set::

    train_split.csv, valid_split.csv         Filename,Admiration,...,Empathic Pain,...,Joy (padded ids, k/N values)
    face_images/<id5>/<int>.jpg              face crops numbered from 0, unpadded; a few frames without a crop
    audio/<id5>.mp3                          16 kHz mono (libmp3lame); some videos have none
    vit/<id5>.pkl, wav2vec2/<id5>.pkl        pickled float32 arrays (frames, 32) and (20 ms steps, 48)
    test_data/{raw,face_images,audio,vit,wav2vec2}/   the test videos; raw/<id5>.mp4 are H.264 with AAC sound
    test_labels.csv                          the test labels (synthetic data only, so that a demo scores itself)

How a video is made: each person is a planned video of ``datasets.synthetic`` (identity, look, pose, and expression
episodes that stay in the background at a third of their strength). At a cue frame the person sees a mix of the six
emotions (a Dirichlet draw) and, after a latency of some frames, mimics it with a strength of their own: each emotion
drives its action units (Amusement and Joy the smile AU6 + AU12, Amusement with open lips; Empathic Pain sadness's
AU1 + AU4 + AU15; Excitement surprise's AU1 + AU2 + AU5 + AU25 + AU26 and high arousal; Determination AU4 + AU7 +
AU23 + AU24; Admiration a mild smile with raised brows), its valence and arousal, and so the sound
(``datasets.synthetic.sound``: loudness and pitch from arousal, laughter, sighs). The intensity of an emotion is the
most the person showed of it; N annotators (3 to 6) each say yes with that probability (plus their own noise), and
the label is k / N. The ``.pkl`` features are fixed random projections of the per-frame state (ViT: action units,
valence, arousal, pose and the identity; wav2vec2: the sound's loudness, valence, arousal and expression) plus noise,
so they carry the signal as the real ones do, the sound's less than the face's.

Determinism: every random choice comes from ``np.random.default_rng([seed, 8, stream, video])``; OpenCV and x264 run
single-threaded, so the same seed writes the same bytes whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
import fractions
import io
import os
import pickle
import time

import cv2
import numpy as np

from datasets.synthetic import (
    _finish,
    _prepare_out_dir,
    _run_tasks,
    bounded_int,
    is_complete,
    plan_video,
    split_sizes,
)
from datasets.synthetic.render import DRAWN_AUS, encode_jpeg, render_face
from datasets.synthetic.sound import SAMPLE_RATE, TRACE_RATE, render_sound
from datasets.synthetic.videos import write_video
from datasets.tracks.emi import (
    AUDIO_DIR,
    FACES_DIR,
    HEADER,
    LABEL_FILES,
    LABEL_NAMES,
    RAW_DIR,
    TEST_DIR,
    TEST_LABEL_FILE,
    padded,
)
from utils.abaw import EXPR_NAMES
from utils.atomic import write_text_atomic
from utils.errors import UserError

TRACK = "emi"  # the name in synthetic_meta.json
DEFAULTS = {"videos": 100, "frames": 32, "size": 112, "seed": 0}
FEATURE_DIMS = {"vit": 32, "wav2vec2": 48}
OWNED_PATHS = (LABEL_FILES["train"], LABEL_FILES["val"], TEST_LABEL_FILE, FACES_DIR, AUDIO_DIR, *FEATURE_DIMS,
               TEST_DIR)
_CODE = 8  # this module's RNG stream, apart from datasets.synthetic's (1 to 4), the raw videos' (6), A/H (7), CE (9)
# Streams: 0 the video plan, 1 frame pixels (+ frame), 2 ids, 3 projections, 4 sound, 5 feature noise.

# How each emotion shows (AU -> gain), where it sits in the circumplex (valence, arousal), and which MTL expression
# its sound bursts are (laughter, sighs, gasps).
EMOTION_AUS = {
    "Admiration": {1: 0.5, 2: 0.5, 5: 0.3, 6: 0.3, 12: 0.5},
    "Amusement": {6: 0.9, 12: 1.0, 25: 0.8, 26: 0.5},
    "Determination": {4: 0.9, 7: 0.8, 23: 0.7, 24: 0.8},
    "Empathic Pain": {1: 0.9, 4: 0.6, 15: 0.9},
    "Excitement": {1: 0.7, 2: 0.8, 5: 0.9, 25: 0.7, 26: 0.8},
    "Joy": {6: 0.7, 10: 0.2, 12: 0.9},
}
EMOTION_VA = {"Admiration": (0.5, 0.3), "Amusement": (0.8, 0.6), "Determination": (0.1, 0.6),
              "Empathic Pain": (-0.6, -0.2), "Excitement": (0.5, 0.9), "Joy": (0.8, 0.4)}
EMOTION_EXPRESSION = {"Admiration": "Happiness", "Amusement": "Happiness", "Determination": "Anger",
                      "Empathic Pain": "Sadness", "Excitement": "Surprise", "Joy": "Happiness"}
_AU_GAINS = np.array([[EMOTION_AUS[name].get(au, 0.0) for au in DRAWN_AUS] for name in LABEL_NAMES])
_VA_POINTS = np.array([EMOTION_VA[name] for name in LABEL_NAMES])
_EXPRESSIONS = np.array([EXPR_NAMES.index(EMOTION_EXPRESSION[name]) for name in LABEL_NAMES])

CUE_MIX = 0.6  # Dirichlet concentration of the cue's mix: one or two emotions dominate
MIX_GAIN = 1.6  # a dominant share of the mix at full strength shows at full intensity
BACKGROUND = 0.25  # the person's own expression episodes, at this share of their strength
ANNOTATORS = (3, 6)  # raters per video (inclusive)
RATER_NOISE = 0.08  # std of a rater's misjudgement of the intensity
FRAME_RATES = (10.0, 12.0, 15.0)
SILENT_RATE = 0.15  # videos without sound (no MP3, no wav2vec2 features), in every split
NO_FACE_RATE = 0.03  # frames whose face was not found: no crop, no ViT row
# The raw MP4s' side: x264 through PyAV wrote different bytes from run to run for frames 112, 192 or 224 px wide
# (it reads the uninitialised padding of rows whose chroma width is not a multiple of 64), never for 128 or 640.
RAW_ALIGN = 128
FEATURE_NOISE = {"vit": 0.2, "wav2vec2": 0.6}
STATE_DIMS = {"vit": len(DRAWN_AUS) + 2 + 4 + 6, "wav2vec2": 1 + 2 + 3}  # see _vit_state and _wav2vec2_state


# ---------------------------------------------------------------------------------------------------------------------
# Planning: the cue, the mimicry, the labels


def frame_count(seed: int, index: int, frames: int) -> int:
    """Frames of video ``index``: between three quarters and five quarters of ``frames``."""
    rng = np.random.default_rng([seed, _CODE, 0, index])
    return max(1, int(rng.integers(round(0.75 * frames), round(1.25 * frames) + 1)))


def plan_mimicry(seed: int, index: int, frames: int) -> dict:
    """Video ``index`` but its pixels and sound: a planned person, the cue, the mimicry traces, and the labels."""
    count = frame_count(seed, index, frames)
    rng = np.random.default_rng([seed, _CODE, 0, index, 1])
    person = plan_video(seed, 100_000 + index, count)  # ids beyond the MTL set's videos: other people
    cue = rng.dirichlet(np.full(len(LABEL_NAMES), CUE_MIX))
    strength = rng.uniform(0.05, 1.0)
    cue_frame = rng.uniform(0.05, 0.35) * count
    latency, rise = rng.uniform(1.0, 6.0), rng.uniform(2.0, 5.0)
    t = np.arange(count)
    onset = np.clip((t - cue_frame - latency) / rise, 0.0, 1.0)
    fade = 1.0 - 0.3 * np.clip((t - cue_frame - latency - rise) / count, 0.0, 1.0)
    shown = np.clip(MIX_GAIN * strength * cue[None, :] * (onset * fade)[:, None], 0.0, 1.0)  # (frames, 6)
    au = np.clip(shown @ _AU_GAINS + BACKGROUND * person["au"], 0.0, 1.0)
    va = np.clip(shown @ _VA_POINTS + BACKGROUND * person["va"], -1.0, 1.0)
    dominant = shown.argmax(axis=1)
    expression = np.where(shown.max(axis=1) > 0.2, _EXPRESSIONS[dominant], 0)
    intensity = shown.max(axis=0)  # the most the person showed of each emotion
    raters = int(rng.integers(ANNOTATORS[0], ANNOTATORS[1] + 1))
    seen = np.clip(intensity + rng.normal(0.0, RATER_NOISE, len(LABEL_NAMES)), 0.0, 1.0)
    votes = rng.binomial(raters, seen)
    has_face = rng.random(count) >= NO_FACE_RATE
    has_face[0] = True
    return dict(person, au=au, va=va, expression=expression, frames=count, fps=float(rng.choice(FRAME_RATES)),
                silent=bool(rng.random() < SILENT_RATE), has_face=has_face, intensity=intensity,
                label=votes / raters, raters=raters, cue=cue, strength=strength, key=(seed, index))


def _label_text(value: float) -> str:
    return repr(round(float(value), 3))  # 0.333, 0.0, 1.0 as the released files write k / N


def label_rows(ids: list, plans: list) -> list[str]:
    """The lines of a split file: the header, then one row per video in id order."""
    rows = sorted(zip(ids, plans), key=lambda pair: pair[0])
    return [HEADER] + [",".join([padded(video_id)] + [_label_text(value) for value in plan["label"]])
                       for video_id, plan in rows]


# ---------------------------------------------------------------------------------------------------------------------
# Features: noisy random projections of the per-frame state


def projections(seed: int) -> dict:
    """One fixed (state, features) matrix per feature set of a synthetic set."""
    rng = np.random.default_rng([seed, _CODE, 3])
    return {name: rng.normal(0.0, 1.0 / np.sqrt(STATE_DIMS[name]), (STATE_DIMS[name], FEATURE_DIMS[name]))
            for name in FEATURE_DIMS}


def _vit_state(plan: dict) -> np.ndarray:
    """Per frame with a face: AUs (doubled: the face's expression dominates a face embedding), valence, arousal,
    pose and the identity (each scaled to about half a unit)."""
    keep = plan["has_face"]
    pose = plan["pose"][keep] / np.array([10.0, 0.2, 0.1, 0.1])
    identity = np.random.default_rng([plan["key"][0], _CODE, 5, plan["key"][1], 0]).normal(0.0, 0.5, 6)
    return np.concatenate([2.0 * plan["au"][keep], plan["va"][keep], pose, np.repeat(identity[None], keep.sum(), 0)], 1)


def _wav2vec2_state(plan: dict, samples: np.ndarray) -> np.ndarray:
    """Per 20 ms of sound: its loudness (log RMS), and the valence, arousal and expression (happy, sad, surprised)."""
    step = SAMPLE_RATE // TRACE_RATE
    steps = len(samples) // step
    windows = samples[:steps * step].reshape(steps, step).astype(np.float64)
    loudness = (np.log10(np.sqrt((windows ** 2).mean(axis=1)) + 1e-5) + 2.5) / 1.5
    times = np.arange(steps) / TRACE_RATE
    frame_times = np.arange(plan["frames"]) / plan["fps"]
    frame = np.clip(np.searchsorted(frame_times, times, side="right") - 1, 0, plan["frames"] - 1)
    kinds = np.stack([plan["expression"][frame] == EXPR_NAMES.index(name)
                      for name in ("Happiness", "Sadness", "Surprise")], 1).astype(np.float64)
    va = np.stack([np.interp(times, frame_times, plan["va"][:, axis]) for axis in range(2)], 1)
    return np.concatenate([loudness[:, None], va, kinds], 1)


def _feature_bytes(state: np.ndarray, projection: np.ndarray, noise: float, rng: np.random.Generator) -> bytes:
    features = state @ projection + rng.normal(0.0, noise, (len(state), projection.shape[1]))
    return pickle.dumps(features.astype(np.float32), protocol=4)


# ---------------------------------------------------------------------------------------------------------------------
# Sound


def video_sound(plan: dict) -> np.ndarray | None:
    """The person's recording (float32 at 16 kHz), or None for a silent video."""
    if plan["silent"]:
        return None
    seed, index = plan["key"]
    rng = np.random.default_rng([seed, _CODE, 4, index])
    duration = plan["frames"] / plan["fps"]
    frame_times = np.arange(plan["frames"]) / plan["fps"]
    grid = np.arange(int(round(duration * TRACE_RATE))) / TRACE_RATE
    valence = np.interp(grid, frame_times, plan["va"][:, 0])
    arousal = np.interp(grid, frame_times, plan["va"][:, 1])
    expression = plan["expression"][np.clip(np.searchsorted(frame_times, grid, side="right") - 1, 0,
                                            plan["frames"] - 1)]
    return render_sound(valence, arousal, expression, TRACE_RATE, rng, SAMPLE_RATE)


def mp3_bytes(samples: np.ndarray) -> bytes:
    """``samples`` (float32, 16 kHz mono) as MP3 through PyAV's libmp3lame."""
    import av

    buffer = io.BytesIO()
    container = av.open(buffer, "w", format="mp3")
    try:
        # LAME's fastest setting (quality 9) is 3.5 times faster than its default; the voice stays intelligible.
        stream = container.add_stream("libmp3lame", rate=SAMPLE_RATE, layout="mono", options={"compression_level": "9"})
        step = 1152  # one MPEG-1 layer III frame
        for start in range(0, len(samples), step):
            chunk = av.AudioFrame.from_ndarray(np.asarray(samples[None, start:start + step], np.float32),
                                               format="flt", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = SAMPLE_RATE, start, fractions.Fraction(1, SAMPLE_RATE)
            for packet in stream.encode(chunk):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# Writing


def _write(path: str, data: bytes) -> None:
    # A plain write, as for the other synthetic sets: synthetic_meta.json, written last, marks the set complete.
    with open(path, "wb") as handle:
        handle.write(data)


def _write_video(task: dict) -> int:
    """Worker: one video's crops, sound, features and (test) MP4. Each frame's noise comes from its own RNG key."""
    cv2.setNumThreads(1)
    plan, size, base, name = task["plan"], task["size"], task["base"], padded(task["id"])
    seed, index = plan["key"]
    folder = os.path.join(base, FACES_DIR, name)
    os.makedirs(folder, exist_ok=True)
    look = dict(plan["look"])
    images, written = [], 0
    for frame in range(plan["frames"]):
        rng = np.random.default_rng([seed, _CODE, 1, index, frame])
        look["gaze"], look["blink"], look["light"] = plan["gaze"][frame], plan["blink"][frame], plan["light"][frame]
        image = render_face(plan["face"], plan["au"][frame], plan["pose"][frame], look, size, rng)
        if plan["has_face"][frame]:
            _write(os.path.join(folder, f"{frame}.jpg"), encode_jpeg(image, rng, "video"))
            written += 1
        if task["raw"]:
            images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    samples = video_sound(plan)
    feature_rng = np.random.default_rng([seed, _CODE, 5, index, 1])
    _write(os.path.join(base, "vit", name + ".pkl"),
           _feature_bytes(_vit_state(plan), task["projections"]["vit"], FEATURE_NOISE["vit"], feature_rng))
    if samples is not None:
        _write(os.path.join(base, AUDIO_DIR, name + ".mp3"), mp3_bytes(samples))
        _write(os.path.join(base, "wav2vec2", name + ".pkl"),
               _feature_bytes(_wav2vec2_state(plan, samples), task["projections"]["wav2vec2"],
                              FEATURE_NOISE["wav2vec2"], feature_rng))
    if task["raw"]:
        images = [_raw_frame(image) for image in images]
        times = np.round(np.arange(plan["frames"]) / plan["fps"], 3)
        write_video(os.path.join(base, RAW_DIR, name + ".mp4"), images, times, sound=samples, fps=plan["fps"])
    return written


def _raw_frame(image: np.ndarray) -> np.ndarray:
    """A crop framed for the raw MP4: centred on a frame whose side is a multiple of ``RAW_ALIGN``, the border
    repeating the crop's edge."""
    side = -(-image.shape[0] // RAW_ALIGN) * RAW_ALIGN
    before = (side - image.shape[0]) // 2
    after = side - image.shape[0] - before
    return cv2.copyMakeBorder(image, before, after, before, after, cv2.BORDER_REPLICATE)


def _check(videos, frames, size, seed) -> dict:
    params = {"videos": videos, "frames": frames, "size": size, "seed": seed}
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise UserError(f"synthetic {TRACK}: {key} must be an integer, got {value!r}")
    if videos < 3 or frames < 2 or seed < 0 or not 32 <= size <= 1024:
        raise UserError(f"synthetic {TRACK}: needs videos >= 3, frames >= 2, 32 <= size <= 1024 and seed >= 0, "
                        f"got {params}")
    return {key: int(value) for key, value in params.items()}


def generate(out_dir, workers=None, progress=True, **params) -> dict:
    """Write the synthetic EMI set (module docstring) to ``out_dir``; ``params`` are those of ``DEFAULTS``.

    ``videos`` are split about 60/20/20 into train, validation and test; video i has about ``frames`` frames (three
    to five quarters of it) of ``size`` px crops. ``workers`` processes (None: all cores). Returns the contents of
    ``synthetic_meta.json`` (track, params, counts with "images" and "videos") plus ``out_dir``, ``seconds``,
    ``images_per_s`` and ``workers``."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"synthetic {TRACK}: unknown parameters {sorted(unknown)}")
    params = _check(**dict(DEFAULTS, **params))
    start_time = time.perf_counter()
    _prepare_out_dir(out_dir, TRACK, params, OWNED_PATHS)
    videos, seed = params["videos"], params["seed"]
    n_train, n_val, n_test = split_sizes(videos)
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    ids = [int(i) for i in np.random.default_rng([seed, _CODE, 2]).permutation(videos)]
    plans = [plan_mimicry(seed, index, params["frames"]) for index in range(videos)]
    matrices = projections(seed)

    for base in (out_dir, os.path.join(out_dir, TEST_DIR)):
        for name in (FACES_DIR, AUDIO_DIR, *FEATURE_DIMS):
            os.makedirs(os.path.join(base, name), exist_ok=True)
    os.makedirs(os.path.join(out_dir, TEST_DIR, RAW_DIR), exist_ok=True)
    keys = ("face", "look", "au", "pose", "gaze", "blink", "light", "va", "expression", "frames", "fps", "silent",
            "has_face", "key")
    tasks = [{"plan": {key: plan[key] for key in keys}, "id": video_id, "size": params["size"],
              "projections": matrices, "raw": split == "test",
              "base": os.path.join(out_dir, TEST_DIR) if split == "test" else out_dir}
             for video_id, split, plan in zip(ids, splits, plans)]
    total = sum(int(plan["has_face"].sum()) for plan in plans)
    workers_used = _run_tasks(_write_video, tasks, total, workers, progress, "emi frames")

    for split, file_name in (("train", LABEL_FILES["train"]), ("val", LABEL_FILES["val"]), ("test", TEST_LABEL_FILE)):
        members = [i for i, s in enumerate(splits) if s == split]
        write_text_atomic(os.path.join(out_dir, file_name),
                          "\n".join(label_rows([ids[i] for i in members], [plans[i] for i in members])) + "\n")
    counts = {"images": total, "videos": {split: splits.count(split) for split in ("train", "val", "test")},
              "videos_without_audio": sum(plan["silent"] for plan in plans), "raw_videos": n_test,
              "frames": sum(plan["frames"] for plan in plans)}
    return _finish(out_dir, TRACK, params, counts, start_time, workers_used)


def is_generated(out_dir, **params) -> bool:
    """True when ``out_dir`` holds a complete synthetic EMI set made with ``params`` (``DEFAULTS`` fill the rest;
    ``workers`` and ``progress`` are ignored: they do not change the data)."""
    params = {key: value for key, value in params.items() if key not in ("workers", "progress")}
    return is_complete(out_dir, TRACK, dict(DEFAULTS, **params), OWNED_PATHS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The generator's flags (``python -m datasets.synthetic emi OUT_DIR ...``)."""
    parser.add_argument("--videos", type=bounded_int(3), default=DEFAULTS["videos"],
                        help=f"number of videos, split about 60/20/20 into train/validation/test "
                             f"(default {DEFAULTS['videos']})")
    parser.add_argument("--frames", type=bounded_int(2), default=DEFAULTS["frames"],
                        help=f"about this many frames per video, from 3/4 to 5/4 of it (default {DEFAULTS['frames']})")
    parser.add_argument("--size", type=bounded_int(32), default=DEFAULTS["size"],
                        help=f"face crop side in pixels (default {DEFAULTS['size']})")
    parser.add_argument("--seed", type=bounded_int(0), default=DEFAULTS["seed"],
                        help="same seed, same bytes (default 0)")
