"""Procedural FACS faces: the project's built-in data set, written in the official ABAW4 layouts.

The real ABAW4 data is licensed and cannot ship, so this module draws faces with OpenCV whose geometry follows facial
action units (AUs) and writes them exactly as the MTL and LSD tracks are released (see ``/work/shared/SYNTHETIC.md``
and ``ABAW4.md``). Tests, the ``--demo`` of both entry points and the benchmarks use it::

    python -m datasets.synthetic mtl OUT_DIR [--videos 40] [--frames 50] [--size 112] [--seed 0] [--workers N]
    python -m datasets.synthetic lsd OUT_DIR [--per-class 200] [--size 112] [--seed 0] [--workers N]

How a frame is made: an identity (face shape, skin, eye spacing, brows, mouth, hair and background) is drawn per video
(MTL) or per image (LSD); expressions are EMFACS prototypes whose AUs move brows, lids, cheeks, nose and lips with an
intensity in [0, 1]; then pose, lighting, colour cast, texture, blur, noise and a JPEG quality between 70 and 95 make
it a vision problem. Labels carry annotation noise and, in MTL training data, the real missing-label codes.

Determinism: every random choice comes from ``np.random.default_rng([seed, track, ...item index])``, and OpenCV runs
single-threaded, so the same seed writes the same bytes whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import shutil
import sys
import time

import cv2
import numpy as np
from tqdm import tqdm

from utils.errors import UserError

GENERATOR_VERSION = 1
META_FILE = "synthetic_meta.json"

# ---------------------------------------------------------------------------------------------------------------------
# Facial action units and expressions

DRAWN_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 12, 15, 20, 23, 24, 25, 26)  # every AU the renderer can draw
LABELLED_AUS = (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26)  # the 12 ABAW AUs, in annotation-file order
_AU = {au: i for i, au in enumerate(DRAWN_AUS)}  # AU number -> column of an intensity vector
_LABELLED_COLUMNS = np.array([_AU[au] for au in LABELLED_AUS])

MTL_EXPRESSIONS = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
NEUTRAL, OTHER = 0, 7
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

LSD_CLASSES = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
LSD_TO_MTL = (1, 2, 3, 4, 5, 6)  # LSD class index -> MTL expression index (same prototype)
LSD_REAL_FOLDERS = ("ANGER", "DISGUST", "FEAR", "HAPPINESS", "SADNESS", "SURPRISE")
LSD_TRAIN_FOLDERS = ("ANGRER",) + LSD_REAL_FOLDERS[1:]  # the training split is released with this misspelling

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
# The test split is labelled completely so that the demo can score every field of its submission.

# ---------------------------------------------------------------------------------------------------------------------
# Layout (ABAW4.md)

MTL_IMAGE_DIR = "cropped_aligned"
MTL_TRAIN_FILE = "training_set_annotations.txt"
MTL_VAL_FILE = "validation_set_annotations.txt"
MTL_TEST_LIST_FILE = "MTL_Challenge_test_set_release.txt"
TEST_LABEL_FILE = "test_set_annotations.txt"
MTL_HEADER = "image,valence,arousal,expression," + ",".join(f"AU{au}" for au in LABELLED_AUS)
MTL_TEST_LIST_HEADER = "image,valence,arousal,expression,aus"

LSD_TRAIN_DIR = "training_set_synthetic_images"
LSD_VAL_DIR = "validation_set_real_images"
LSD_TEST_DIR = "test_set_real_images"
LSD_TEST_LIST_FILE = "LSD_Challenge_test_set_release.txt"
LSD_HEADER = "image,expression"

# RNG keys: [seed, track code, stream, ...]. MTL streams: 0 video plan, 1 frame pixels (+ video, frame), 2 video
# names, 3 videos without EXPR, 4 video annotations. LSD: split code (+ image index) for pixels, 3 the test order.
_TRACK_CODE = {"mtl": 1, "lsd": 2}
_LSD_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_OWNED_PATHS = {
    "mtl": (MTL_IMAGE_DIR, MTL_TRAIN_FILE, MTL_VAL_FILE, MTL_TEST_LIST_FILE, TEST_LABEL_FILE),
    "lsd": (LSD_TRAIN_DIR, LSD_VAL_DIR, LSD_TEST_DIR, LSD_TEST_LIST_FILE, TEST_LABEL_FILE),
}
DEFAULTS = {
    "mtl": {"videos": 40, "frames": 50, "size": 112, "seed": 0},
    "lsd": {"per_class": 200, "size": 112, "seed": 0},
}
MIN_SIZE, MAX_SIZE = 32, 1024

# ---------------------------------------------------------------------------------------------------------------------
# Imaging styles. "rendered" is the flat look of the LSD synthetic split; "photo" the LSD real splits (texture, blur,
# colour cast, stronger noise and pose: a real domain gap); "video" the MTL frames, between the two.
# Keys: palette of skin/hair/background; outline (cartoon contour); clutter (max background boxes); texture (std of a
# coarse relative albedo grid); blur (Gaussian sigma range, pixels at 112 px); noise (std range, grey levels); cast
# (max per-channel gain change); light (gradient strength range); rotate (max degrees); framing (mean zoom); zoom
# (zoom range around it); shift (max shift, fraction of the image); jpeg (quality range).

STYLES = {
    "rendered": {"palette": "cartoon", "outline": True, "clutter": 0, "texture": 0.0, "blur": (0.0, 0.0),
                 "noise": (0.5, 2.0), "cast": 0.0, "light": (0.0, 0.12), "rotate": 6.0, "framing": 1.0,
                 "zoom": 0.06, "shift": 0.04, "jpeg": (85, 95)},
    "video": {"palette": "natural", "outline": False, "clutter": 2, "texture": 0.06, "blur": (0.0, 0.9),
              "noise": (2.0, 6.0), "cast": 0.10, "light": (0.05, 0.30), "rotate": 5.0, "framing": 1.15,
              "zoom": 0.05, "shift": 0.03, "jpeg": (70, 95)},
    "photo": {"palette": "natural", "outline": False, "clutter": 4, "texture": 0.11, "blur": (0.5, 1.4),
              "noise": (3.0, 8.0), "cast": 0.18, "light": (0.10, 0.40), "rotate": 9.0, "framing": 1.1,
              "zoom": 0.08, "shift": 0.045, "jpeg": (70, 92)},
}
_NATURAL_SKIN = np.array([(196, 214, 241), (160, 190, 228), (128, 160, 210), (96, 128, 176), (66, 92, 136),
                          (180, 200, 235)], np.float64)  # BGR
_CARTOON_SKIN = np.array([(200, 220, 255), (175, 205, 250), (150, 190, 245), (120, 165, 225), (210, 225, 255)],
                         np.float64)
_NATURAL_HAIR = np.array([(20, 25, 30), (30, 50, 80), (60, 90, 130), (120, 160, 200), (90, 90, 95), (40, 40, 60)],
                         np.float64)

_SHIFT = 4  # OpenCV drawing with 4 fractional bits: sub-pixel geometry, so small intensities still move lines
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA


# ---------------------------------------------------------------------------------------------------------------------
# Identities and expressions


def sample_identity(rng: np.random.Generator, style: str) -> dict:
    """A random face: shape, colours and feature placement, in normalised image coordinates (0..1)."""
    cartoon = STYLES[style]["palette"] == "cartoon"
    skins = _CARTOON_SKIN if cartoon else _NATURAL_SKIN
    skin = skins[rng.integers(len(skins))] + rng.uniform(-14, 14, 3)
    if cartoon:
        hair = rng.uniform(0, 255, 3) * np.array([0.6, 0.6, 0.8])
        background = rng.uniform(60, 255, 3)  # flat saturated backdrop
    else:
        hair = _NATURAL_HAIR[rng.integers(len(_NATURAL_HAIR))] + rng.uniform(-12, 12, 3)
        background = rng.uniform(20, 235) + rng.uniform(-35, 35, 3)
    return {
        "face_w": rng.uniform(0.27, 0.34), "face_h": rng.uniform(0.36, 0.43), "face_y": rng.uniform(0.52, 0.56),
        "skin": np.clip(skin, 0, 255), "hair": np.clip(hair, 0, 255), "background": np.clip(background, 0, 255),
        "hair_style": int(rng.integers(3)),
        "eye_sep": rng.uniform(0.105, 0.14), "eye_y": rng.uniform(0.45, 0.49), "eye_w": rng.uniform(0.045, 0.06),
        "eye_open": rng.uniform(0.018, 0.026), "iris": np.clip(rng.uniform(10, 140, 3), 0, 255),
        "brow_gap": rng.uniform(0.045, 0.065), "brow_arch": rng.uniform(0.0, 0.015),
        "brow_thick": rng.uniform(0.012, 0.024), "brow_colour": np.clip(hair * rng.uniform(0.5, 0.9), 0, 255),
        "nose_len": rng.uniform(0.09, 0.12), "nose_w": rng.uniform(0.025, 0.035),
        "mouth_y": rng.uniform(0.70, 0.74), "mouth_w": rng.uniform(0.07, 0.095),
        "lip_up": rng.uniform(0.010, 0.018), "lip_low": rng.uniform(0.013, 0.022),
        "lip_colour": np.clip(skin * np.array([0.65, 0.6, 0.95]) + rng.uniform(-15, 15, 3), 0, 255),
    }


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
# Drawing


@functools.lru_cache(maxsize=64)
def _unit_arc(t0: float, t1: float, n: int) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _ellipse_points(cx, cy, ax, ay, t0=0.0, t1=2 * np.pi, n=24) -> np.ndarray:
    return _unit_arc(t0, t1, n) * (ax, ay) + (cx, cy)


def _colour(bgr) -> tuple:
    return (float(bgr[0]), float(bgr[1]), float(bgr[2]))


def _mix(a, b, weight: float) -> tuple:
    """Colour between a (weight 0) and b (weight 1)."""
    weight = float(np.clip(weight, 0.0, 1.0))
    return _colour(np.asarray(a) * (1 - weight) + np.asarray(b) * weight)


class _Canvas:
    """An image plus the pose transform from normalised face coordinates to fixed-point pixels."""

    def __init__(self, size: int, background, pose):
        angle, zoom, shift_x, shift_y = pose
        self.size = size
        self.image = np.empty((size, size, 3), np.uint8)
        cv2.rectangle(self.image, (0, 0), (size, size), _colour(background), -1)  # much faster than a numpy fill
        theta = np.deg2rad(angle)
        scale = zoom * size * _ONE
        self.scale = zoom * size
        rotation = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        centre = np.array([0.5, 0.5])
        self.linear = rotation.T
        self.offset = (centre + np.array([shift_x, shift_y])) * size * _ONE - centre @ rotation.T
        self.angle = angle

    def px(self, length: float) -> int:
        """A line thickness in whole pixels (OpenCV needs an int), at least 1."""
        return max(1, int(round(length * self.scale)))

    def points(self, pts) -> np.ndarray:
        # Truncation instead of rounding: 1/16 px either way, and measurably cheaper at ~25 calls per image.
        return (np.asarray(pts, dtype=np.float64) @ self.linear + self.offset).astype(np.int32)

    def fill(self, pts, colour):
        cv2.fillPoly(self.image, [self.points(pts)], colour, _AA, _SHIFT)

    def line(self, pts, colour, thickness: float, closed=False):
        cv2.polylines(self.image, [self.points(pts)], closed, colour, self.px(thickness), _AA, _SHIFT)

    def ellipse(self, cx, cy, ax, ay, colour, thickness=-1):
        centre = self.points([[cx, cy]])[0]
        axes = (int(round(ax * self.scale * _ONE)), int(round(ay * self.scale * _ONE)))
        thick = -1 if thickness < 0 else self.px(thickness)
        cv2.ellipse(self.image, (int(centre[0]), int(centre[1])), axes, self.angle, 0, 360, colour, thick, _AA, _SHIFT)


def _draw_eye(canvas, face, side, au, gaze, blink, outline):
    cx = 0.5 + side * face["eye_sep"]
    cy = face["eye_y"]
    half_w = face["eye_w"]
    upper = face["eye_open"] * (1 + 0.9 * au[_AU[5]] - 0.55 * au[_AU[7]]) * (1 - 0.85 * blink)
    lower = face["eye_open"] * 0.8 * (1 - 0.65 * au[_AU[6]] - 0.35 * au[_AU[7]]) * (1 - 0.5 * blink)
    top = _ellipse_points(cx, cy, half_w, upper, np.pi, 2 * np.pi, 10)
    bottom = _ellipse_points(cx, cy, half_w, lower, 0, np.pi, 10)
    canvas.fill(np.concatenate([top, bottom]), (235, 238, 240))
    iris_r = min(0.55 * half_w, 0.9 * (upper + lower) / 2 + 0.002)
    iris_x = cx + gaze[0] * half_w * 0.35
    iris_y = cy + (lower - upper) / 2 + gaze[1] * 0.004
    canvas.ellipse(iris_x, iris_y, iris_r, iris_r, _colour(face["iris"]))
    canvas.ellipse(iris_x, iris_y, iris_r * 0.45, iris_r * 0.45, (15, 15, 15))
    lid = _colour(face["skin"] * 0.35)
    canvas.line(top, lid, 0.012 if outline else 0.009)
    canvas.line(bottom, _colour(face["skin"] * 0.6), 0.006)
    if au[_AU[6]] > 0.05:  # AU6: crow's-feet / cheek crease under the eye
        crease = _ellipse_points(cx, cy + lower + 0.016, half_w * 0.9, 0.012, 0.15 * np.pi, 0.85 * np.pi, 7)
        canvas.line(crease, _mix(face["skin"], face["skin"] * 0.45, au[_AU[6]]), 0.008)


def _draw_brow(canvas, face, side, au):
    eye_x = 0.5 + side * face["eye_sep"]
    base = face["eye_y"] - face["eye_open"] - face["brow_gap"]
    inner_x = eye_x - side * (face["eye_w"] * 0.95 + 0.022 * au[_AU[4]])
    outer_x = eye_x + side * face["eye_w"] * 1.15
    inner_y = base - 0.038 * au[_AU[1]] + 0.028 * au[_AU[4]]
    outer_y = base + 0.006 - 0.038 * au[_AU[2]] + 0.012 * au[_AU[4]]
    mid_y = (inner_y + outer_y) / 2 - face["brow_arch"] - 0.01 * au[_AU[2]]
    pts = [[inner_x, inner_y], [eye_x, mid_y], [outer_x, outer_y]]
    canvas.line(pts, _colour(face["brow_colour"]), face["brow_thick"])


def _draw_mouth(canvas, face, au):
    cy = face["mouth_y"] + 0.015 * au[_AU[26]]
    half_w = face["mouth_w"] * (1 + 0.35 * au[_AU[20]] + 0.15 * au[_AU[12]] - 0.2 * au[_AU[24]] - 0.1 * au[_AU[23]])
    corner_dy = -0.045 * au[_AU[12]] + 0.04 * au[_AU[15]] + 0.005 * au[_AU[20]]
    opening = (0.028 * au[_AU[25]] + 0.055 * au[_AU[26]]) * (1 - 0.9 * au[_AU[24]])
    raise_upper = 0.02 * au[_AU[10]]
    lip_up = face["lip_up"] * (1 - 0.55 * au[_AU[23]]) * (1 - 0.75 * au[_AU[24]])
    lip_low = face["lip_low"] * (1 - 0.55 * au[_AU[23]]) * (1 - 0.75 * au[_AU[24]])

    t = np.linspace(-1.0, 1.0, 11)
    bulge = 1 - t**2
    xs = 0.5 + half_w * t
    curve = cy + corner_dy * t**2
    upper_inner = curve - (0.3 * opening + raise_upper) * bulge
    lower_inner = curve + 0.7 * opening * bulge
    upper_outer = upper_inner - lip_up * np.sqrt(bulge) + 0.004 * np.exp(-(t / 0.2) ** 2)  # cupid's bow dip
    lower_outer = lower_inner + lip_low * np.sqrt(bulge)

    def path(ys):
        return np.stack([xs, ys], axis=1)

    gap = lower_inner - upper_inner
    if gap.max() > 0.003:
        canvas.fill(np.concatenate([path(upper_inner), path(lower_inner)[::-1]]), (40, 30, 60))
        teeth = upper_inner + np.minimum(gap, 0.012) * bulge
        canvas.fill(np.concatenate([path(upper_inner), path(teeth)[::-1]]), (225, 230, 235))
    lip = _colour(face["lip_colour"])
    canvas.fill(np.concatenate([path(upper_outer), path(upper_inner)[::-1]]), lip)
    canvas.fill(np.concatenate([path(lower_inner), path(lower_outer)[::-1]]), lip)
    canvas.line(path(upper_inner), _colour(face["lip_colour"] * 0.45), 0.007)
    return xs[0], xs[-1], curve[0]


def _draw_nose_and_folds(canvas, face, au, mouth_left, mouth_right, corner_y):
    skin = face["skin"]
    shade = _colour(skin * 0.7)
    top_y = face["eye_y"] + 0.02
    base_y = face["eye_y"] + face["nose_len"] - 0.008 * au[_AU[9]] - 0.006 * au[_AU[10]]
    canvas.line([[0.5 - 0.008, top_y], [0.5 - 0.012, base_y - 0.01]], shade, 0.006)
    nostrils = _ellipse_points(0.5, base_y, face["nose_w"], 0.012, 0.1 * np.pi, 0.9 * np.pi, 9)
    canvas.line(nostrils, _colour(skin * 0.5), 0.008)
    if au[_AU[9]] > 0.05:  # AU9: horizontal wrinkles across the bridge
        wrinkle = _mix(skin, skin * 0.4, au[_AU[9]])
        for k in range(3):
            y = top_y + 0.008 + 0.011 * k
            canvas.line([[0.5 - 0.022, y + 0.003], [0.5, y], [0.5 + 0.022, y + 0.003]], wrinkle, 0.006)
    fold = max(au[_AU[12]], au[_AU[10]], 0.6 * au[_AU[9]])
    if fold > 0.05:  # nasolabial folds deepen with smiles and upper-lip raising
        colour = _mix(skin, skin * 0.55, fold)
        for side, corner_x in ((-1, mouth_left), (1, mouth_right)):
            wing = [0.5 + side * (face["nose_w"] + 0.008), base_y - 0.006]
            bend = [0.5 + side * (face["nose_w"] + 0.03), base_y + 0.012]
            beside = [corner_x + side * 0.02, corner_y - 0.006]
            end = [corner_x + side * 0.012, corner_y + 0.008]
            canvas.line([wing, bend, beside, end], colour, 0.007)


def _draw_face(canvas: _Canvas, face: dict, au: np.ndarray, gaze, blink: float, outline: bool):
    skin = _colour(face["skin"])
    face_y = face["face_y"]
    jaw = 0.035 * au[_AU[26]]  # AU26 lowers the chin
    hair = _colour(face["hair"])
    canvas.ellipse(0.5, face_y - 0.06, face["face_w"] * 1.12, face["face_h"] * 0.92, hair)
    neck_w = face["face_w"] * 0.55
    canvas.fill([[0.5 - neck_w, face_y], [0.5 + neck_w, face_y], [0.5 + neck_w * 1.1, 1.2], [0.5 - neck_w * 1.1, 1.2]],
                _colour(face["skin"] * 0.82))
    for side in (-1, 1):
        canvas.ellipse(0.5 + side * face["face_w"] * 0.98, face["eye_y"] + 0.04, 0.03, 0.05, skin)
    canvas.ellipse(0.5, face_y + jaw / 2, face["face_w"], face["face_h"] + jaw / 2, skin)
    if outline:  # the "rendered" look: cartoon contour
        canvas.ellipse(0.5, face_y + jaw / 2, face["face_w"], face["face_h"] + jaw / 2, _colour(face["skin"] * 0.4),
                       0.012)
    if face["hair_style"] > 0:  # fringe over the forehead
        top = face_y - face["face_h"]
        depth = 0.05 + 0.03 * face["hair_style"]
        fringe = _ellipse_points(0.5, top + 0.02, face["face_w"] * 0.95, depth, np.pi, 2 * np.pi, 12)
        fringe = np.concatenate([fringe, [[0.5 + face["face_w"] * 0.9, top + depth * 0.9],
                                          [0.5, top + depth * 1.3], [0.5 - face["face_w"] * 0.9, top + depth * 0.9]]])
        canvas.fill(fringe, hair)
    if au[_AU[6]] > 0.05:  # AU6: raised, flushed cheeks
        cheek = _mix(face["skin"], face["skin"] * np.array([0.75, 0.75, 1.0]), 0.7 * au[_AU[6]])
        for side in (-1, 1):
            canvas.ellipse(0.5 + side * (face["eye_sep"] + 0.01), face["eye_y"] + 0.07 - 0.015 * au[_AU[6]],
                           0.04, 0.022, cheek)
    for side in (-1, 1):
        _draw_eye(canvas, face, side, au, gaze, blink, outline)
        _draw_brow(canvas, face, side, au)
    if au[_AU[4]] > 0.05:  # AU4: vertical furrows between the brows
        furrow = _mix(face["skin"], face["skin"] * 0.5, au[_AU[4]])
        brow_y = face["eye_y"] - face["eye_open"] - face["brow_gap"] + 0.02
        for side in (-1, 1):
            canvas.line([[0.5 + side * 0.008, brow_y - 0.02], [0.5 + side * 0.006, brow_y + 0.006]], furrow, 0.006)
    mouth_left, mouth_right, corner_y = _draw_mouth(canvas, face, au)
    _draw_nose_and_folds(canvas, face, au, mouth_left, mouth_right, corner_y)


def _draw_clutter(canvas: _Canvas, rng: np.random.Generator, count: int):
    """Background objects of the "photo" styles, drawn before the face (not moved by the head pose)."""
    size = canvas.size
    for _ in range(count):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
        w, h = rng.uniform(0.1, 0.6, 2) * size
        colour = _colour(rng.uniform(0, 255, 3))
        cv2.rectangle(canvas.image, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), colour, -1)


def _noise_bank(size: int) -> np.ndarray:
    """A fixed field of unit Gaussian noise a little larger than an image; images take shifted, flipped crops.

    Drawing fresh Gaussian noise costs more than drawing the face; a crop at a random offset is as good for training
    and just as deterministic (the bank depends only on the size).
    """
    bank = _NOISE_BANKS.get(size)
    if bank is None:
        side = size + _NOISE_MARGIN
        bank = np.random.default_rng([size, 7919]).standard_normal((side, side, 3), dtype=np.float32)
        _NOISE_BANKS[size] = bank
    return bank


_NOISE_BANKS: dict = {}
_NOISE_MARGIN = 97


def _gain_map(look: dict, size: int) -> np.ndarray:
    """Per-pixel BGR gain: lighting gradient x colour cast x skin/background texture, from a coarse grid."""
    texture = look["texture"]
    cells = 2 if texture is None else texture.shape[0]
    # Cell centres in -1..1; bilinear upsampling of a linear gradient keeps it linear.
    centres = (np.arange(cells) + 0.5) / cells * 2 - 1
    direction = look["light_angle"]
    light = 1.0 + look["light"] * (np.cos(direction) * centres[None, :] + np.sin(direction) * centres[:, None])
    if texture is not None:
        light = light * (1.0 + texture)
    coarse = (light[:, :, None] * np.asarray(look["cast"])[None, None, :]).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)


def render_face(face: dict, au: np.ndarray, pose, look: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """One BGR uint8 image of ``face`` showing AU intensities ``au`` (15, DRAWN_AUS order).

    ``pose`` is (degrees, zoom, shift x, shift y); ``look`` holds the camera: style name, lighting, colour cast, blur,
    noise, texture (coarse relative albedo grid or None), gaze and blink. ``rng`` draws the clutter and sensor noise.
    """
    style = STYLES[look["style"]]
    canvas = _Canvas(size, face["background"], pose)
    _draw_clutter(canvas, rng, int(rng.integers(0, style["clutter"] + 1)))
    _draw_face(canvas, face, au, look["gaze"], look["blink"], style["outline"])
    image = canvas.image
    if look["blur"] > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), look["blur"] * size / 112.0)
    image = cv2.multiply(image, _gain_map(look, size), dtype=cv2.CV_8U)
    bank = _noise_bank(size)
    row, col = rng.integers(0, _NOISE_MARGIN + 1, 2)
    flip_rows, flip_cols = rng.integers(0, 2, 2) * -2 + 1
    noise = bank[row:row + size, col:col + size][::flip_rows, ::flip_cols]
    return cv2.addWeighted(image, 1.0, noise, float(look["noise"]), 0.0, dtype=cv2.CV_8U)


def _sample_look(rng: np.random.Generator, style_name: str) -> dict:
    """Camera and lighting for one image (LSD) or the start of a video (MTL)."""
    style = STYLES[style_name]
    texture = None
    if style["texture"] > 0:
        cells = int(rng.integers(5, 10))
        texture = rng.normal(0.0, style["texture"], (cells, cells))
    return {
        "style": style_name,
        "light": rng.uniform(*style["light"]), "light_angle": rng.uniform(0, 2 * np.pi),
        "cast": 1.0 + rng.uniform(-style["cast"], style["cast"], 3),
        "blur": rng.uniform(*style["blur"]), "noise": rng.uniform(*style["noise"]), "texture": texture,
        "gaze": rng.uniform(-1, 1, 2), "blink": 0.0,
    }


def _sample_pose(rng: np.random.Generator, style_name: str) -> tuple:
    style = STYLES[style_name]
    angle = rng.uniform(-style["rotate"], style["rotate"])
    zoom = style["framing"] + rng.uniform(-style["zoom"], style["zoom"])
    return angle, zoom, rng.uniform(-style["shift"], style["shift"]), rng.uniform(-style["shift"], style["shift"])


def _encode_jpeg(image: np.ndarray, rng: np.random.Generator, style_name: str) -> bytes:
    low, high = STYLES[style_name]["jpeg"]
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(low, high + 1))])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buffer.tobytes()


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
    look = _sample_look(rng, "video")
    expression = np.empty(frames, np.int64)
    au = np.zeros((frames, len(DRAWN_AUS)))
    va_target = np.empty((frames, 2))
    bounds = _segment_bounds(rng, frames)
    previous = -1
    for start, end in zip(bounds[:-1], bounds[1:]):
        length = end - start
        label = previous
        while label == previous:  # an episode changes the expression
            label = int(rng.choice(len(MTL_EXPRESSIONS), p=EXPRESSION_WEIGHTS / EXPRESSION_WEIGHTS.sum()))
        previous = label
        # Onset, apex and offset: intensity ramps smoothly from a low level up to the apex and back.
        low, peak = rng.uniform(0.1, 0.25), rng.uniform(0.6, 1.0)
        ramp = min(max(3, length // 4), 8)
        envelope = np.clip(np.minimum(np.arange(length), length - 1 - np.arange(length)) / ramp, 0, 1)
        episode = low + (peak - low) * envelope
        expression[start:end] = label
        for au_number, gain in _segment_aus(rng, label).items():
            au[start:end, _AU[au_number]] = gain * episode
        point = rng.uniform(-0.5, 0.5, 2) if label == OTHER else np.array(CIRCUMPLEX[label])
        va_target[start:end] = point[None, :] * episode[:, None]
    # Frame-to-frame wobble: smooth so that temporal models have something to exploit, never a jump.
    au = np.clip(au + (au > 0) * _smooth_noise(rng, frames, 0.03, 10)[:, None], 0.0, 1.0)
    va = va_target + rng.normal(0.0, 0.05, 2) + np.stack([_smooth_noise(rng, frames, 0.06) for _ in range(2)], 1)

    poses = np.array(_sample_pose(rng, "video"))[None, :] + np.stack([
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


def video_labels(plan: dict, split: str, has_expr: bool) -> dict:
    """Annotated labels of a planned video: noise as in real annotation, and the missing codes of ``split``."""
    seed, video_index = plan["key"]
    rng = np.random.default_rng([seed, _TRACK_CODE["mtl"], 4, video_index])
    frames = len(plan["expression"])
    expression = plan["expression"].copy()
    relabel = rng.random(frames) < EXPR_LABEL_NOISE
    offsets = rng.integers(1, len(MTL_EXPRESSIONS), frames)
    expression[relabel] = (expression[relabel] + offsets[relabel]) % len(MTL_EXPRESSIONS)
    aus = (plan["au"][:, _LABELLED_COLUMNS] > AU_THRESHOLD).astype(np.int64)
    aus ^= (rng.random(aus.shape) < AU_LABEL_NOISE).astype(np.int64)
    va = np.clip(plan["va"] + rng.normal(0.0, VA_LABEL_NOISE, plan["va"].shape), -1.0, 1.0)
    va = np.round(va, 4)
    if not has_expr:
        expression[:] = -1
    if split == "train":
        va[rng.random(frames) < FRAME_NO_VA_RATE] = -5
        aus[rng.random(frames) < FRAME_NO_AU_RATE] = -1
    return {"expression": expression, "aus": aus, "va": va}


def _annotation_rows(name: str, numbers: np.ndarray, labels: dict) -> list:
    rows = []
    for i, number in enumerate(numbers):
        valence, arousal = labels["va"][i]
        va_text = "-5,-5" if valence == -5 else f"{valence:.4f},{arousal:.4f}"
        aus = ",".join(str(int(v)) for v in labels["aus"][i])
        rows.append(f"{name}/{int(number):05d}.jpg,{va_text},{int(labels['expression'][i])},{aus}")
    return rows


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
            handle.write(_encode_jpeg(image, rng, "video"))
    return len(task["frames"])


def generate_mtl(out_dir, videos=40, frames=50, size=112, seed=0, workers=None, progress=True) -> dict:
    """Write a synthetic MTL data set (ABAW4 layout) to ``out_dir``.

    ``videos`` are split about 60/20/20 into train/validation/test, ``frames`` per video, ``size`` px square frames.
    ``workers`` processes (None: all cores). Returns the contents of ``synthetic_meta.json`` (track, params, counts,
    version) plus ``out_dir``, ``seconds``, ``images_per_s`` and ``workers``.
    """
    params = _check_params("mtl", videos=videos, frames=frames, size=size, seed=seed)
    start_time = time.perf_counter()
    _prepare_out_dir(out_dir, "mtl", params)
    names = video_names(np.random.default_rng([seed, _TRACK_CODE["mtl"], 2]), videos)
    n_train, n_val, _ = split_sizes(videos)
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * (videos - n_train - n_val)
    # Which train/val videos lack expression labels; at least one per split keeps them so F1 is defined.
    expr_rng = np.random.default_rng([seed, _TRACK_CODE["mtl"], 3])
    has_expr = [split == "test" or expr_rng.random() >= VIDEO_NO_EXPR_RATE for split in splits]
    for split in ("train", "val"):
        members = [i for i, s in enumerate(splits) if s == split]
        if not any(has_expr[i] for i in members):
            has_expr[members[0]] = True

    rows = {"train": [], "val": [], "test": []}
    test_images = []
    tasks = []
    chunk = 64
    for index, (name, split) in enumerate(zip(names, splits)):
        plan = plan_video(seed, index, frames)
        labels = video_labels(plan, split, has_expr[index])
        rows[split].extend(_annotation_rows(name, plan["numbers"], labels))
        if split == "test":
            test_images.extend(f"{name}/{int(n):05d}.jpg" for n in plan["numbers"])
        folder = os.path.join(out_dir, MTL_IMAGE_DIR, name)
        os.makedirs(folder, exist_ok=True)
        worker_plan = {key: plan[key] for key in ("face", "look", "au", "pose", "gaze", "blink", "light", "numbers")}
        for first in range(0, frames, chunk):
            tasks.append({"plan": worker_plan, "size": size, "seed": seed, "video_index": index, "folder": folder,
                          "frames": list(range(first, min(first + chunk, frames)))})
    workers_used = _run_tasks(_render_video_chunk, tasks, videos * frames, workers, progress, "mtl frames")

    _write_text_atomic(os.path.join(out_dir, MTL_TRAIN_FILE), _lines([MTL_HEADER] + rows["train"]))
    _write_text_atomic(os.path.join(out_dir, MTL_VAL_FILE), _lines([MTL_HEADER] + rows["val"]))
    _write_text_atomic(os.path.join(out_dir, MTL_TEST_LIST_FILE), _lines([MTL_TEST_LIST_HEADER] + test_images))
    _write_text_atomic(os.path.join(out_dir, TEST_LABEL_FILE), _lines([MTL_HEADER] + rows["test"]))
    counts = {"images": videos * frames, "videos": {"train": n_train, "val": n_val, "test": videos - n_train - n_val},
              "frames": {split: len(rows[split]) for split in rows},
              "videos_without_expr": sum(not flag for flag in has_expr)}
    return _finish(out_dir, "mtl", params, counts, start_time, workers_used)


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
        au[_AU[au_number]] = np.clip(gain * peak + rng.normal(0.0, 0.05), 0.0, 1.0)
    return au


def _render_lsd_chunk(task: dict) -> int:
    """Worker: render and write LSD images; each image's identity, pose and noise come from its own RNG key."""
    cv2.setNumThreads(1)
    style = task["style"]
    for index, label, path in task["items"]:
        rng = np.random.default_rng([task["seed"], _TRACK_CODE["lsd"], task["split_code"], index])
        face = sample_identity(rng, style)
        look = _sample_look(rng, style)
        au = _lsd_aus(rng, label)
        pose = _sample_pose(rng, style)
        image = render_face(face, au, pose, look, task["size"], rng)
        with open(path, "wb") as handle:
            handle.write(_encode_jpeg(image, rng, style))
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
            items["train"].append((index, label, os.path.join(out_dir, LSD_TRAIN_DIR, LSD_TRAIN_FOLDERS[label],
                                                              f"{index:06d}.jpg")))
        for k in range(n_real):
            index = label * n_real + k
            items["val"].append((index, label, os.path.join(out_dir, LSD_VAL_DIR, LSD_REAL_FOLDERS[label],
                                                            f"img_{index:05d}.jpg")))
    # Test images are named 0.jpg, 1.jpg, ... in an order that does not reveal the class.
    test_labels = np.repeat(np.arange(n_classes), n_real)
    np.random.default_rng([seed, _TRACK_CODE["lsd"], 3]).shuffle(test_labels)
    for index, label in enumerate(test_labels):
        items["test"].append((index, int(label), os.path.join(out_dir, LSD_TEST_DIR, f"{index}.jpg")))
    for folder in LSD_TRAIN_FOLDERS:
        os.makedirs(os.path.join(out_dir, LSD_TRAIN_DIR, folder), exist_ok=True)
    for folder in LSD_REAL_FOLDERS:
        os.makedirs(os.path.join(out_dir, LSD_VAL_DIR, folder), exist_ok=True)
    os.makedirs(os.path.join(out_dir, LSD_TEST_DIR), exist_ok=True)

    tasks = []
    chunk = 64
    for split, style in (("train", "rendered"), ("val", "photo"), ("test", "photo")):
        for first in range(0, len(items[split]), chunk):
            tasks.append({"items": items[split][first:first + chunk], "style": style, "size": size, "seed": seed,
                          "split_code": _LSD_SPLIT_CODE[split]})
    total = sum(len(v) for v in items.values())
    workers_used = _run_tasks(_render_lsd_chunk, tasks, total, workers, progress, "lsd images")

    names = [f"{index}.jpg" for index in range(len(test_labels))]
    _write_text_atomic(os.path.join(out_dir, LSD_TEST_LIST_FILE), _lines([LSD_HEADER] + names))
    _write_text_atomic(os.path.join(out_dir, TEST_LABEL_FILE),
                       _lines([LSD_HEADER] + [f"{n},{int(c)}" for n, c in zip(names, test_labels)]))
    counts = {"images": total, "per_class": {"train": per_class, "val": n_real, "test": n_real},
              "split": {split: len(v) for split, v in items.items()}}
    return _finish(out_dir, "lsd", params, counts, start_time, workers_used)


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
    minimum = {"videos": 3, "frames": 1, "per_class": 1, "seed": 0}
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


def _prepare_out_dir(out_dir, track: str, params: dict):
    """Ready ``out_dir``: refuse foreign data, clear an earlier synthetic set of this track, mark it in progress."""
    os.makedirs(out_dir, exist_ok=True)
    meta = _read_meta(out_dir)
    owned = [name for name in _OWNED_PATHS[track] if os.path.exists(os.path.join(out_dir, name))]
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
    _write_text_atomic(os.path.join(out_dir, META_FILE), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def _finish(out_dir, track: str, params: dict, counts: dict, start_time: float, workers: int) -> dict:
    meta = _write_meta(out_dir, track, params, counts, complete=True)  # last: marks the set complete
    seconds = time.perf_counter() - start_time
    return dict(meta, out_dir=str(out_dir), seconds=seconds, images_per_s=counts["images"] / max(seconds, 1e-9),
                workers=workers)


def _lines(lines: list) -> str:
    return "\n".join(lines) + "\n"


def _write_text_atomic(path, text: str):
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def is_generated(out_dir, track, **params) -> bool:
    """True when ``out_dir`` holds a complete synthetic ``track`` set made with ``params`` (defaults fill the rest).

    ``workers`` and ``progress`` may be passed and are ignored: they do not change the data.
    """
    if track not in DEFAULTS:
        raise ValueError(f"unknown track {track!r}; expected one of {sorted(DEFAULTS)}")
    params = {key: value for key, value in params.items() if key not in ("workers", "progress")}
    unknown = set(params) - set(DEFAULTS[track])
    if unknown:
        raise TypeError(f"is_generated({track!r}) got unknown parameters {sorted(unknown)}")
    wanted = dict(DEFAULTS[track], **params)
    meta = _read_meta(out_dir)
    if meta is None or not meta.get("complete") or meta.get("version") != GENERATOR_VERSION:
        return False
    if meta.get("track") != track or meta.get("params") != {key: int(value) for key, value in wanted.items()}:
        return False
    return all(os.path.exists(os.path.join(out_dir, name)) for name in _OWNED_PATHS[track])


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def _bounded_int(low: int, high: int | None = None):
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datasets.synthetic", description=__doc__.split("\n")[0])
    tracks = parser.add_subparsers(dest="track", required=True)
    mtl = tracks.add_parser("mtl", help="multi-task learning track: videos of frames with VA, EXPR and AU labels")
    mtl.add_argument("out_dir")
    mtl.add_argument("--videos", type=_bounded_int(3), default=DEFAULTS["mtl"]["videos"],
                     help="number of videos, split about 60/20/20 into train/validation/test (default 40)")
    mtl.add_argument("--frames", type=_bounded_int(1), default=DEFAULTS["mtl"]["frames"],
                     help="frames per video (default 50)")
    lsd = tracks.add_parser("lsd", help="learning-from-synthetic-data track: six expression classes")
    lsd.add_argument("out_dir")
    lsd.add_argument("--per-class", type=_bounded_int(1), default=DEFAULTS["lsd"]["per_class"],
                     help="training images per class; validation and test get about a quarter (default 200)")
    for sub in (mtl, lsd):
        sub.add_argument("--size", type=_bounded_int(MIN_SIZE, MAX_SIZE), default=112, help="image side in pixels")
        sub.add_argument("--seed", type=_bounded_int(0), default=0, help="same seed, same bytes (default 0)")
        sub.add_argument("--workers", type=_bounded_int(1), default=None, help="processes (default: all cores)")
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    common = {"size": args.size, "seed": args.seed, "workers": args.workers, "progress": not args.no_progress}
    try:
        if args.track == "mtl":
            summary = generate_mtl(args.out_dir, videos=args.videos, frames=args.frames, **common)
            detail = ", ".join(f"{summary['counts']['videos'][s]} {s} videos" for s in ("train", "val", "test"))
        else:
            summary = generate_lsd(args.out_dir, per_class=args.per_class, **common)
            detail = ", ".join(f"{summary['counts']['split'][s]} {s}" for s in ("train", "val", "test"))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"synthetic {args.track}: wrote {summary['counts']['images']} images ({detail}) at {args.size} px to "
          f"{args.out_dir} in {summary['seconds']:.1f} s: {summary['images_per_s']:.0f} images/s "
          f"with {summary['workers']} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
