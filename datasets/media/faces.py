"""The face pipeline: frames in, per-frame faces out (detected, tracked, aligned), with no file implied.

- Detection: a :class:`Detector` turns a batch of equal-size RGB frames into boxes, scores and 5 landmarks per face.
  :class:`MTCNNDetector` is facenet-pytorch's MTCNN, whose weights ship inside its wheel (nothing is downloaded),
  batched on the device. Its ``min_face`` (pixels) is the smallest face searched: MTCNN's image pyramid starts at
  ``12 / min_face`` of the frame, so 40 px instead of facenet-pytorch's 20 px skips the two largest, most costly
  levels (about 1.7x faster) and loses only faces under about 40 px, too small to show an expression.
  Another detector (RetinaFace, SCRFD with a user's weights) is a class with the same ``detect`` added to
  ``DETECTORS``.
- Tracking: :class:`Tracker` links each frame's faces to the tracks of the frames before by box overlap (IoU, optimal
  assignment with ``scipy.optimize.linear_sum_assignment``); a track survives a gap of up to ``max_gap`` frames
  without a match; at the end, tracks that never overlap in time and meet where the other left off are joined (a
  person who left the frame for a moment), and tracks shorter than ``min_length`` frames are dropped and counted.
- Alignment: :func:`align` warps a face onto the ArcFace 112 x 112 five-point template scaled to the crop size by
  the least-squares similarity transform (rotation, uniform scale, shift) from its landmarks: eyes level and at
  fixed places.

:class:`FacePipeline` runs all three over a frame stream: ``for frame, faces in pipeline.run(frames)`` gives each
frame with its faces and their provisional track ids, in frame order; ``pipeline.tracker.finish()`` then says which
tracks are kept and joined.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

# ArcFace's 112 x 112 five-point template (insightface): left eye, right eye, nose tip, left and right mouth corner,
# as seen in the image.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]], dtype=np.float64)


@dataclass
class Face:
    """One detected face: box (x1, y1, x2, y2) in frame pixels, score, landmarks (5, 2), and its track id."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    track: int = -1


# ---------------------------------------------------------------------------------------------------------------------
# Detection


class Detector:
    """The detector interface: ``detect(images)`` for a list of equal-size RGB uint8 frames returns, per frame, a
    list of :class:`Face` (track unset)."""

    name = "detector"

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        raise NotImplementedError


class MTCNNDetector(Detector):
    """facenet-pytorch's MTCNN (P-, R- and O-net, weights from its wheel) on ``device``, the whole batch at once.

    ``min_face``: the smallest face searched, in pixels (facenet-pytorch's default is 20; see the module text);
    ``thresholds``: the three stages' score thresholds (facenet-pytorch's defaults).
    """

    name = "mtcnn"

    def __init__(self, device="cpu", min_face: int = 40, thresholds=(0.6, 0.7, 0.7), factor: float = 0.709):
        import torch
        from facenet_pytorch import MTCNN

        self.device = torch.device(device)
        self.model = MTCNN(device=self.device, min_face_size=min_face, thresholds=list(thresholds), factor=factor,
                           keep_all=True).eval()
        self.min_face = min_face

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        import torch
        from facenet_pytorch.models.utils.detect_face import detect_face

        if not images:
            return []
        batch = torch.from_numpy(np.stack(images)).to(self.device)
        model = self.model
        with torch.inference_mode():
            boxes, points = detect_face(batch, model.min_face_size, model.pnet, model.rnet, model.onet,
                                        model.thresholds, model.factor, self.device)
        result = []
        for frame_boxes, frame_points in zip(boxes, points):
            frame_boxes = np.asarray(frame_boxes, dtype=np.float64).reshape(-1, 5)
            frame_points = np.asarray(frame_points, dtype=np.float64).reshape(-1, 5, 2)
            order = np.argsort(-frame_boxes[:, 4], kind="stable")
            result.append([Face(frame_boxes[i, :4].copy(), float(frame_boxes[i, 4]), frame_points[i].copy())
                           for i in order])
        return result


DETECTORS = {"mtcnn": MTCNNDetector}


def make_detector(name: str, device, min_face: int) -> Detector:
    return DETECTORS[name](device=device, min_face=min_face)


# ---------------------------------------------------------------------------------------------------------------------
# Tracking


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4): an (n, m) array."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


@dataclass
class _Track:
    ident: int
    first: int
    last: int
    box: np.ndarray  # the last matched box
    first_box: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # box change per frame, smoothed
    length: int = 1
    centre_x_sum: float = 0.0


class Tracker:
    """Links faces over frames; see the module text. ``update(frame, faces)`` sets each face's ``track``.

    ``iou``: the least overlap between a track's predicted box and a face to link them; ``max_gap``: frames a track
    may go unmatched and still continue; ``min_length``: tracks with fewer faces are dropped at the end;
    ``join_gap``: at most this many frames between the end of one track and the start of a later one for them to
    be joined as one person (who left the frame and came back near where they left).
    """

    def __init__(self, iou: float = 0.3, max_gap: int = 12, min_length: int = 5, join_gap: int = 90):
        self.iou, self.max_gap, self.min_length, self.join_gap = iou, max_gap, min_length, join_gap
        self.active: list[_Track] = []
        self.ended: list[_Track] = []
        self.next_id = 0

    def update(self, frame: int, faces: list[Face]) -> list[Face]:
        from scipy.optimize import linear_sum_assignment

        self.active, gone = ([t for t in self.active if frame - t.last <= self.max_gap + 1],
                             [t for t in self.active if frame - t.last > self.max_gap + 1])
        self.ended += gone
        matched = set()
        if faces and self.active:
            predicted = np.stack([t.box + t.velocity * (frame - t.last) for t in self.active])
            overlap = box_iou(predicted, np.stack([f.box for f in faces]))
            rows, cols = linear_sum_assignment(-overlap)
            for row, col in zip(rows, cols):
                if overlap[row, col] >= self.iou:
                    self._extend(self.active[row], frame, faces[col])
                    matched.add(col)
        for index, face in enumerate(faces):
            if index not in matched:
                track = _Track(self.next_id, frame, frame, face.box.copy(), face.box.copy(),
                               centre_x_sum=float(face.box[0] + face.box[2]) / 2)
                self.next_id += 1
                face.track = track.ident
                self.active.append(track)
        return faces

    @staticmethod
    def _extend(track: _Track, frame: int, face: Face) -> None:
        step = (face.box - track.box) / (frame - track.last)
        track.velocity = 0.5 * track.velocity + 0.5 * step
        track.box, track.last = face.box.copy(), frame
        track.length += 1
        track.centre_x_sum += float(face.box[0] + face.box[2]) / 2
        face.track = track.ident

    def finish(self) -> tuple[dict[int, int], list[int], int]:
        """End tracking: returns ``(person, order, dropped)``. Tracks that never overlap in time are first joined
        into one person where a later one starts within ``join_gap`` frames of an earlier one's end, near where it
        ended and at a similar size (someone who left the frame for a moment); a person seen in fewer than
        ``min_length`` frames is then dropped (a spurious detection) and counted in ``dropped``. ``person`` maps the
        kept track ids to their person's id (its first track's), ``order`` lists the persons: left to right by mean
        horizontal position when there are two, else by first appearance."""
        tracks = sorted(self.ended + self.active, key=lambda t: (t.first, t.ident))
        self.ended, self.active = tracks, []
        chains: list[list[_Track]] = []
        for track in tracks:  # join a track to the chain that ended nearest before it, where it ended
            best, best_distance = None, None
            for chain in chains:
                tail = chain[-1]
                if tail.last >= track.first or track.first - tail.last > self.join_gap:
                    continue
                size = max(tail.box[2] - tail.box[0], tail.box[3] - tail.box[1], 1.0)
                distance = np.abs(_centre(tail.box) - _centre(track.first_box)).max() / size
                scale = (track.first_box[2] - track.first_box[0]) / max(tail.box[2] - tail.box[0], 1.0)
                if distance <= 1.5 and 0.5 <= scale <= 2.0 and (best is None or distance < best_distance):
                    best, best_distance = chain, distance
            if best is None:
                chains.append([track])
            else:
                best.append(track)
        kept = [chain for chain in chains if sum(t.length for t in chain) >= self.min_length]
        dropped = len(chains) - len(kept)
        person = {track.ident: chain[0].ident for chain in kept for track in chain}
        if len(kept) == 2:
            def mean_x(chain):
                return sum(t.centre_x_sum for t in chain) / sum(t.length for t in chain)
            kept.sort(key=mean_x)
        order = [chain[0].ident for chain in kept]
        return person, order, dropped


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


# ---------------------------------------------------------------------------------------------------------------------
# Alignment


def template(crop_size: int) -> np.ndarray:
    """The ArcFace five-point template scaled from 112 to ``crop_size`` pixels."""
    return ARCFACE_TEMPLATE * (crop_size / 112.0)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 least-squares similarity transform (rotation, uniform scale, shift) taking ``source`` points to
    ``target`` points (Umeyama's closed form, without reflection)."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mean_s, mean_t = source.mean(0), target.mean(0)
    centred_s, centred_t = source - mean_s, target - mean_t
    covariance = centred_t.T @ centred_s / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    variance = (centred_s ** 2).sum() / len(source)
    scale = (singular * sign).sum() / variance if variance > 0 else 1.0
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mean_t - scale * rotation @ mean_s
    return matrix


def align(image: np.ndarray, landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """The face of ``image`` with ``landmarks`` (5, 2) warped onto the template: a (crop_size, crop_size, 3) crop."""
    matrix = similarity_transform(landmarks, template(crop_size))
    return cv2.warpAffine(image, matrix, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


# ---------------------------------------------------------------------------------------------------------------------
# The pipeline over a stream


def prefetch(iterable, depth: int):
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead (decoding overlaps detection: FFmpeg and
    the detector's kernels release the GIL). An exception in the thread is raised here, in order."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(("end", done))
        except BaseException as error:  # handed to the consumer
            items.put(("error", error))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            kind, item = items.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        close = getattr(iterable, "close", None)
        thread.join(timeout=5)
        if close is not None and not thread.is_alive():
            close()


class FacePipeline:
    """Detection in batches of ``batch_size`` frames, then tracking, over a stream of ``Frame``s (see
    ``datasets.media.video.read_frames``). ``run`` yields ``(frame, faces)`` in frame order; the tracker is left in
    ``self.tracker`` for ``finish()``."""

    def __init__(self, detector: Detector, batch_size: int = 16, tracker: Tracker | None = None):
        self.detector, self.batch_size = detector, batch_size
        self.tracker = tracker or Tracker()

    def run(self, frames):
        batch = []
        for frame in prefetch(frames, depth=2 * self.batch_size):
            batch.append(frame)
            if len(batch) == self.batch_size:
                yield from self._flush(batch)
                batch = []
        if batch:
            yield from self._flush(batch)

    def _flush(self, batch):
        detections = self.detector.detect([frame.image for frame in batch])
        for frame, faces in zip(batch, detections):
            yield frame, self.tracker.update(frame.index, faces)
