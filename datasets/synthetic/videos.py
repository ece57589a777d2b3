"""Raw synthetic recordings: the synthetic people as MP4 videos with sound, and the truth to score a face pipeline.

``python -m datasets.synthetic videos OUT_DIR [--videos 6] [--frames 60] [--width 640] [--height 360]`` writes::

    OUT_DIR/videos/<video>.mp4            H.264 (PyAV), AAC sound at 16 kHz (none for silent videos)
    OUT_DIR/truth/<video>.csv             frame,time,person,folder,visible,x1,y1,x2,y2,lx1,ly1,...,lx5,ly5: every
                                          person's true box and 5 landmarks in the upright frame, per frame
    OUT_DIR/training_set_annotations.txt, validation_set_annotations.txt, MTL_Challenge_test_set_release.txt,
    test_set_annotations.txt              the MTL annotations of the same frames (1-based decoding order), keyed by
                                          the crop folder ``main_prepare.py`` names: <video>, <video>_left/_right

Each person is planned as an MTL video of ``datasets.synthetic`` (identity, expression episodes, AUs, valence and
arousal), drawn by ``datasets.synthetic.render`` and composited into a larger frame over a moving background: the
head moves, turns in the image plane and changes scale. Video i of a set has the features of ``features(i)``: some
hold two people side by side, some have a stretch where the person leaves the frame, some have no sound, some carry a
phone's rotation flag (stored turned, shown upright), some run at a variable frame rate. The sound comes from
``datasets.synthetic.sound.render_sound`` over the same valence, arousal and expression traces.

A face counts as visible (to be found) when its box lies inside the frame. Same seed, same bytes: x264 encodes with
one thread (with its default threads, the last, partial macroblock column of a 360-pixel-wide stored frame came out
differently from run to run) and without macroblock-tree rate control (its lookahead gave short clips different bytes
in different processes).
"""

from __future__ import annotations

import fractions
import os
import time

import cv2
import numpy as np

from datasets import mtl
from datasets.synthetic import _MTL_HEADER, _au_text, _va_text, plan_video, split_sizes, video_labels
from datasets.synthetic.render import AU_COLUMN, render_face
from datasets.synthetic.sound import render_sound
from utils.atomic import atomic_write, write_text_atomic

DEFAULTS = dict(videos=6, frames=60, width=640, height=360, fps=25.0, seed=0)
DEMO = dict(videos=6, frames=40, width=320, height=180, fps=25.0, seed=0)  # main_prepare.py --demo
TRUTH_COLUMNS = ["frame", "time", "person", "folder", "visible", "x1", "y1", "x2", "y2"] + [
    f"l{axis}{k}" for k in range(1, 6) for axis in "xy"]
SAMPLE_RATE = 16000
TRACE_RATE = 50  # traces resampled to this many values per second for the sound (as datasets.synthetic.sound)
_CODE = 6  # this module's RNG stream, outside datasets.synthetic's track codes (1 to 4)


def features(index: int) -> dict:
    """What video ``index`` shows: people (1 or 2), a stretch out of the frame, silence, rotation, variable rate."""
    kind = index % 6
    return {"people": 2 if kind == 1 else 1, "leaves": kind == 2, "silent": kind == 3,
            "rotation": (90, 270)[(index // 6) % 2] if kind == 4 else 0, "variable_rate": kind in (2, 5)}


def video_name(index: int) -> str:
    return f"synth{index:03d}"


def folders(name: str, people: int) -> list[str]:
    return [name] if people == 1 else [f"{name}_left", f"{name}_right"]


def _smooth(rng, n: int, scale: float, period: float) -> np.ndarray:
    knots = max(2, int(n / period) + 2)
    return np.interp(np.arange(n), np.linspace(0, n - 1, knots), rng.uniform(-scale, scale, knots))


def plan_recording(seed: int, index: int, frames: int, width: int, height: int, fps: float) -> dict:
    """Everything about video ``index`` but pixels: people (each an MTL plan and a head path), times, features."""
    feats = features(index)
    rng = np.random.default_rng([seed, _CODE, 0, index])
    intervals = np.full(frames - 1, 1.0 / fps)
    if feats["variable_rate"]:  # phone-like: intervals wander between about 0.6 and 1.6 of the average
        intervals *= np.exp(_smooth(rng, frames - 1, 0.45, 4))
    times = np.round(np.concatenate([[0.0], np.cumsum(intervals)]), 3)  # millisecond timestamps
    people = []
    for person in range(feats["people"]):
        plan = plan_video(seed + 1000 * (index + 1), person, frames)
        # the head's tile size: a third (two people) or half the frame height, breathing +-15%
        base = height * (0.55 if feats["people"] == 1 else 0.42)
        size = base * np.exp(_smooth(rng, frames, 0.15, 20))
        lane = (0.5 if feats["people"] == 1 else (0.28, 0.72)[person]) * width
        cx = lane + _smooth(rng, frames, 0.08 * width, 15)
        cy = height * 0.5 + _smooth(rng, frames, 0.06 * height, 15)
        angle = _smooth(rng, frames, 14.0, 12) + plan["pose"][:, 0]
        if feats["leaves"]:  # slides out of the left edge and comes back a little later
            away = np.zeros(frames)
            start, length = int(frames * 0.35), max(4, int(frames * 0.3))
            ramp = np.clip(np.minimum(np.arange(frames) - start, start + length - np.arange(frames)) / 3, 0, 1)
            away = ramp * (cx + size)
            cx = cx - away
        people.append({"plan": plan, "size": size, "cx": cx, "cy": cy, "angle": angle})
    background = rng.uniform(30, 220, (6, 10, 3))
    return {"features": feats, "times": times, "people": people, "background": background, "key": (seed, index),
            "width": width, "height": height, "fps": fps}


def _landmarks_in_tile(face: dict, au: np.ndarray) -> np.ndarray:
    """The 5 landmarks of a face drawn at pose (0, 1, 0, 0), in tile units (0..1): eyes, nose tip, mouth corners."""
    half_w = face["mouth_w"] * (1 + 0.35 * au[AU_COLUMN[20]] + 0.15 * au[AU_COLUMN[12]] - 0.2 * au[AU_COLUMN[24]]
                                - 0.1 * au[AU_COLUMN[23]])
    corner = face["mouth_y"] + 0.015 * au[AU_COLUMN[26]] - 0.045 * au[AU_COLUMN[12]] + 0.04 * au[AU_COLUMN[15]]
    nose = face["eye_y"] + face["nose_len"] - 0.008 * au[AU_COLUMN[9]] - 0.006 * au[AU_COLUMN[10]]
    return np.array([[0.5 - face["eye_sep"], face["eye_y"]], [0.5 + face["eye_sep"], face["eye_y"]], [0.5, nose],
                     [0.5 - half_w, corner], [0.5 + half_w, corner]])


def _head_mask(face: dict, tile: int) -> np.ndarray:
    mask = np.zeros((tile, tile), np.uint8)
    for cx, cy, ax, ay in ((0.5, face["face_y"] - 0.06, face["face_w"] * 1.12, face["face_h"] * 0.92),
                           (0.5, face["face_y"] + 0.02, face["face_w"], face["face_h"] + 0.02)):
        cv2.ellipse(mask, (int(cx * tile), int(cy * tile)), (int(ax * tile), int(ay * tile)), 0, 0, 360, 255, -1)
    return cv2.GaussianBlur(mask, (0, 0), 1.0)


def render_frame(recording: dict, k: int) -> tuple[np.ndarray, list[dict]]:
    """Frame ``k`` (0-based) upright as RGB uint8, and each person's truth: box, landmarks (5, 2), visible."""
    width, height = recording["width"], recording["height"]
    seed, index = recording["key"]
    t = recording["times"][k]
    # moving background: a smooth colour field panning sideways
    coarse = recording["background"]
    big = cv2.resize(coarse.astype(np.float32), (width * 2, height), interpolation=cv2.INTER_CUBIC)
    shift = int(t * width * 0.1) % width
    frame = np.clip(big[:, shift:shift + width], 0, 255).astype(np.uint8)
    truth = []
    for person, head in enumerate(recording["people"]):
        plan = head["plan"]
        tile = 128
        rng = np.random.default_rng([seed, _CODE, 1, index, person, k])
        look = dict(plan["look"], gaze=plan["gaze"][k], blink=plan["blink"][k], light=plan["light"][k])
        image = render_face(plan["face"], plan["au"][k], (0.0, 1.0, 0.0, 0.0), look, tile, rng)
        mask = _head_mask(plan["face"], tile)
        scale = head["size"][k] / tile
        matrix = cv2.getRotationMatrix2D((tile / 2, tile / 2), float(head["angle"][k]), scale)
        matrix[:, 2] += np.array([head["cx"][k], head["cy"][k]]) - tile / 2
        warped = cv2.warpAffine(image[:, :, ::-1], matrix, (width, height), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_LINEAR).astype(np.float32)[..., None]
        frame = (frame * (1 - alpha / 255) + warped * (alpha / 255)).astype(np.uint8)
        points = _landmarks_in_tile(plan["face"], plan["au"][k]) * tile
        landmarks = points @ matrix[:, :2].T + matrix[:, 2]
        # the face box: the face ellipse's extent, as a detector frames a face (brows to chin, cheek to cheek)
        face = plan["face"]
        outline = np.stack([0.5 + face["face_w"] * np.cos(np.linspace(0, 2 * np.pi, 24)),
                            face["face_y"] + face["face_h"] * np.sin(np.linspace(0, 2 * np.pi, 24))], 1)
        corners = outline * tile @ matrix[:, :2].T + matrix[:, 2]
        box = np.array([corners[:, 0].min(), corners[:, 1].min(), corners[:, 0].max(), corners[:, 1].max()])
        visible = bool(box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height)
        truth.append({"person": person, "box": box, "landmarks": landmarks, "visible": visible})
    return frame, truth


def _sound(recording: dict, rng) -> np.ndarray | None:
    if recording["features"]["silent"]:
        return None
    times = recording["times"]
    duration = float(times[-1]) + 1.0 / recording["fps"]
    grid = np.arange(int(round(duration * TRACE_RATE))) / TRACE_RATE
    mix = None
    for head in recording["people"]:
        plan = head["plan"]
        valence = np.interp(grid, times, plan["va"][:, 0])
        arousal = np.interp(grid, times, plan["va"][:, 1])
        expression = plan["expression"][np.clip(np.searchsorted(times, grid, side="right") - 1, 0, len(times) - 1)]
        samples = render_sound(np.clip(valence, -1, 1), np.clip(arousal, -1, 1), expression, TRACE_RATE, rng,
                               SAMPLE_RATE)
        mix = samples if mix is None else mix[:len(samples)] * 0.7 + samples[:len(mix)] * 0.7
    return mix.astype(np.float32)


def write_video(path: str, frames, times, rotation: int = 0, sound=None, fps: float = 25.0) -> None:
    """Encode upright RGB ``frames`` (an iterable) at ``times`` (s, millisecond steps) as H.264 MP4 with an optional
    16 kHz AAC ``sound``; ``rotation`` (degrees counter-clockwise) is stored as the display matrix, the pixels turned
    the other way, so that a player (and ``datasets.media.video``) shows them upright."""
    import av

    with atomic_write(path, "wb") as handle:  # a killed generator leaves no half-written video
        container = av.open(handle, "w", format="mp4")
        try:
            _encode(container, frames, times, rotation, sound, fps)
        finally:
            container.close()


def _encode(container, frames, times, rotation: int, sound, fps: float) -> None:
    import av

    video = None
    millisecond = fractions.Fraction(1, 1000)
    audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if sound is not None else None
    for image, stamp in zip(frames, times):
        stored = np.ascontiguousarray(np.rot90(image, k=-(rotation // 90))) if rotation else image
        if video is None:
            video = container.add_stream("libx264", rate=int(round(fps)),
                                         options={"preset": "veryfast", "crf": "18", "threads": "1",
                                                  "x264-params": "no-mbtree=1"})
            video.width, video.height, video.pix_fmt = stored.shape[1], stored.shape[0], "yuv420p"
            video.codec_context.time_base = millisecond
            if rotation:
                video.set_display_rotation(rotation)
        frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
        frame.pts, frame.time_base = int(round(stamp * 1000)), millisecond
        for packet in video.encode(frame):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    if audio is not None:
        step = 1024
        for start in range(0, len(sound), step):
            chunk = av.AudioFrame.from_ndarray(np.asarray(sound[None, start:start + step], np.float32), format="flt",
                                               layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = SAMPLE_RATE, start, fractions.Fraction(1, SAMPLE_RATE)
            for packet in audio.encode(chunk):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)


def _frames_with_truth(recording: dict, names: list, truth_lines: list, visible_frames: list):
    """Yield the video's frames, adding each person's truth row to ``truth_lines`` and visible frames (0-based) to
    ``visible_frames[person]`` as it goes."""
    for k in range(len(recording["times"])):
        image, truth = render_frame(recording, k)
        for item in truth:
            values = [f"{v:.2f}" for v in list(item["box"]) + list(item["landmarks"].reshape(-1))]
            truth_lines.append(",".join([str(k + 1), f"{recording['times'][k]:.6f}", str(item["person"]),
                                         names[item["person"]], str(int(item["visible"]))] + values))
            if item["visible"]:
                visible_frames[item["person"]].append(k)
        yield image


def _size_even(value: int) -> int:
    return value + value % 2


def generate_videos(out_dir, videos: int = 6, frames: int = 60, width: int = 640, height: int = 360,
                    fps: float = 25.0, seed: int = 0, progress: bool = False) -> dict:
    """Write the set (module text) to ``out_dir``; a set already complete with the same parameters is kept.
    Returns a summary: counts and seconds."""
    width, height = _size_even(width), _size_even(height)
    params = dict(videos=videos, frames=frames, width=width, height=height, fps=fps, seed=seed)
    marker = os.path.join(out_dir, "videos_meta.txt")
    signature = repr(sorted(params.items()))
    if os.path.exists(marker) and open(marker, encoding="utf-8").read().strip() == signature:
        return {"videos": videos, "frames": videos * frames, "seconds": 0.0, "cached": True}
    started = time.perf_counter()
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "truth"), exist_ok=True)
    n_train, n_val, _ = split_sizes(max(videos, 3))
    rows = {"train": [], "val": [], "test": []}
    test_images = []
    iterator = range(videos)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, unit="video")
    for index in iterator:
        name = video_name(index)
        recording = plan_recording(seed, index, frames, width, height, fps)
        feats = recording["features"]
        split = "train" if index < n_train else "val" if index < n_train + n_val else "test"
        names = folders(name, feats["people"])
        truth_lines = [",".join(TRUTH_COLUMNS)]
        visible_frames = [[] for _ in names]

        sound = _sound(recording, np.random.default_rng([seed, _CODE, 2, index]))
        images = _frames_with_truth(recording, names, truth_lines, visible_frames)
        write_video(os.path.join(out_dir, "videos", f"{name}.mp4"), images, recording["times"],
                    feats["rotation"], sound, fps)
        write_text_atomic(os.path.join(out_dir, "truth", f"{name}.csv"), "\n".join(truth_lines) + "\n")
        for person, folder in enumerate(names):
            labels = video_labels(recording["people"][person]["plan"], split, has_expr=True)
            for k in visible_frames[person]:
                rows[split].append(f"{folder}/{k + 1:05d}.jpg,{_va_text(*labels['va'][k])},"
                                   f"{int(labels['expression'][k])},{_au_text(labels['aus'][k])}")
                if split == "test":
                    test_images.append(f"{folder}/{k + 1:05d}.jpg")
    for split, file in (("train", mtl.TRAIN_FILE), ("val", mtl.VAL_FILE), ("test", mtl.TEST_LABEL_FILE)):
        write_text_atomic(os.path.join(out_dir, file), "\n".join([_MTL_HEADER] + rows[split]) + "\n")
    test_list = "\n".join([mtl.SUBMISSION_HEADER] + test_images) + "\n"
    write_text_atomic(os.path.join(out_dir, mtl.TEST_LIST_FILE), test_list)
    write_text_atomic(marker, signature + "\n")
    return {"videos": videos, "frames": videos * frames, "seconds": round(time.perf_counter() - started, 2),
            "cached": False}


ANNOTATION_FILES = (mtl.TRAIN_FILE, mtl.VAL_FILE, mtl.TEST_LIST_FILE, mtl.TEST_LABEL_FILE)


# ---------------------------------------------------------------------------------------------------------------------
# Scoring a prepared folder against the truth


def score_prepared(source: str, prepared_dir: str, crop_size: int | None = None) -> dict:
    """Detection recall and precision (IoU >= 0.5 with a visible true face), identity switches (a person's faces
    moving to another crop folder than the one they held), and the landmark error after alignment: the true landmarks
    mapped through each crop's alignment, against the template, in crop pixels (mean and 95th percentile)."""
    from datasets.media import prepared
    from datasets.media.faces import box_iou, similarity_transform, template

    records = prepared.read_videos(prepared_dir)
    true_positive = false_positive = missed = switches = 0
    errors = []
    for name in sorted(records):
        truth_path = os.path.join(source, "truth", f"{name}.csv")
        if not os.path.exists(truth_path):
            continue
        truth = np.genfromtxt(truth_path, delimiter=",", names=True, dtype=None, encoding="utf-8")
        truth = np.atleast_1d(truth)
        found = prepared.read_faces(prepared_dir, name)
        found = found[found["track"] != ""]
        size = crop_size or _crop_size(prepared_dir, records[name])
        held = {}
        for frame in range(1, records[name]["frames"] + 1):
            rows = truth[truth["frame"] == frame]
            detections = found[found["frame"] == frame]
            boxes_t = np.stack([[r["x1"], r["y1"], r["x2"], r["y2"]] for r in rows]) if len(rows) else np.zeros((0, 4))
            boxes_d = detections[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
            overlap = box_iou(boxes_t, boxes_d)
            used = set()
            for i, row in enumerate(rows):
                j = int(np.argmax(overlap[i])) if overlap.shape[1] else -1
                if j >= 0 and overlap[i, j] >= 0.5 and j not in used:
                    used.add(j)
                    true_positive += 1
                    detection = detections.iloc[j]
                    folder = detection["track"]
                    if row["person"] in held and held[row["person"]] != folder:
                        switches += 1
                    held[row["person"]] = folder
                    marks = detection[prepared.LANDMARK_COLUMNS].to_numpy(np.float64).reshape(5, 2)
                    true_marks = np.array([[row[f"lx{k}"], row[f"ly{k}"]] for k in range(1, 6)])
                    matrix = similarity_transform(marks, template(size))
                    mapped = true_marks @ matrix[:, :2].T + matrix[:, 2]
                    errors.append(np.linalg.norm(mapped - template(size), axis=1).mean())
                elif row["visible"]:
                    missed += 1
            false_positive += len(detections) - len(used)
    errors = np.array(errors) if errors else np.zeros(1)
    return {"recall": round(true_positive / max(true_positive + missed, 1), 4),
            "precision": round(true_positive / max(true_positive + false_positive, 1), 4),
            "identity_switches": switches, "faces_found": true_positive, "faces_missed": missed,
            "false_detections": false_positive, "landmark_error_px": round(float(errors.mean()), 2),
            "landmark_error_p95_px": round(float(np.percentile(errors, 95)), 2)}


def _crop_size(prepared_dir: str, record: dict) -> int:
    for folder, count in record["tracks"].items():
        directory = os.path.join(prepared_dir, "cropped_aligned", folder)
        if count and os.path.isdir(directory):
            first = sorted(os.listdir(directory))[0]
            return cv2.imread(os.path.join(directory, first)).shape[0]
    return 112


def describe_scores(scores: dict) -> str:
    return (f"against the truth: recall {scores['recall']:.3f}, precision {scores['precision']:.3f}, "
            f"{scores['identity_switches']} identity switches, landmark error after alignment "
            f"{scores['landmark_error_px']:.2f} px (95th percentile {scores['landmark_error_p95_px']:.2f}) "
            f"in {scores.get('seconds', 0):.1f} s")
