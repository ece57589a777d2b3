"""Procedural FACS faces, drawn with OpenCV: the renderer behind the built-in synthetic data set.

A face is an identity (face shape, skin, eye spacing, brows, mouth, hair and background: :func:`sample_identity`),
action unit (AU) intensities in [0, 1], one column per AU of ``DRAWN_AUS``, that move brows, lids, cheeks, nose and
lips, a head pose (rotation, zoom, shift: :func:`sample_pose`) and a look, one of three imaging styles (lighting, colour
cast, texture, blur, sensor noise, gaze and blink: :func:`sample_look`). :func:`render_face` draws one BGR image of it
and :func:`encode_jpeg` compresses it at a quality from the style's range. Which AUs make an expression, and the labels,
belong to ``datasets.synthetic``.

Determinism: every random choice comes from the generator passed in (the sensor-noise bank from a fixed key per image
size), so the caller's RNG key fixes the bytes.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# Action units

DRAWN_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 12, 15, 20, 23, 24, 25, 26)  # every AU the renderer can draw
AU_COLUMN = {au: i for i, au in enumerate(DRAWN_AUS)}  # AU number -> column of an intensity vector
_AU = AU_COLUMN  # short name for the drawing formulas below

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
# Identities, looks and poses


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



def sample_look(rng: np.random.Generator, style_name: str) -> dict:
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


def sample_pose(rng: np.random.Generator, style_name: str) -> tuple:
    """Head pose (degrees, zoom, shift x, shift y) for one image, or the mean pose of a video."""
    style = STYLES[style_name]
    angle = rng.uniform(-style["rotate"], style["rotate"])
    zoom = style["framing"] + rng.uniform(-style["zoom"], style["zoom"])
    return angle, zoom, rng.uniform(-style["shift"], style["shift"]), rng.uniform(-style["shift"], style["shift"])



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



# ---------------------------------------------------------------------------------------------------------------------
# Encoding


def encode_jpeg(image: np.ndarray, rng: np.random.Generator, style_name: str) -> bytes:
    """JPEG bytes of ``image`` at a quality drawn from ``rng`` in the style's range."""
    low, high = STYLES[style_name]["jpeg"]
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(low, high + 1))])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buffer.tobytes()

