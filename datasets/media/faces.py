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
    """MTCNN's cascade with facenet-pytorch's P-, R- and O-nets (weights from its wheel) on ``device``, a whole batch
    of frames at once.

    ``min_face``: the smallest face searched, in pixels (facenet-pytorch's default is 20; see the module text);
    ``thresholds``: the three stages' score thresholds and ``factor`` the pyramid's step (facenet-pytorch's defaults).
    The cascade is facenet-pytorch's ``detect_face`` with one change: the candidate boxes of the second and third
    stage are cut out and resized for their nets in one batched ``roi_align`` each (areas averaged, zeros outside the
    frame, as the original MTCNN pads) instead of one resize per box, which cost more than the nets on a CPU.
    """

    name = "mtcnn"

    def __init__(self, device="cpu", min_face: int = 40, thresholds=(0.6, 0.7, 0.7), factor: float = 0.709):
        import torch
        from facenet_pytorch import MTCNN

        self.device = torch.device(device)
        model = MTCNN(device=self.device, min_face_size=min_face, thresholds=list(thresholds), factor=factor).eval()
        self.pnet, self.rnet, self.onet = model.pnet, model.rnet, model.onet
        self.min_face, self.thresholds, self.factor = min_face, tuple(thresholds), factor

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        return self._run(images, None)

    def refine(self, images: list[np.ndarray], seeds: list[np.ndarray]) -> list[list[Face]]:
        """The faces of ``images`` near ``seeds`` (per frame, an (n, 4) array of boxes where faces are expected):
        the second and third stages alone, on candidates around the seed boxes, instead of the proposal net over the
        whole image pyramid."""
        return self._run(images, seeds)

    def _run(self, images, seeds) -> list[list[Face]]:
        import torch

        if not images:
            return []
        with torch.inference_mode():
            batch = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).float()
            if seeds is None:
                boxes, owner = self._proposals(batch)
            else:
                boxes, owner = self._seed_boxes(seeds)
            boxes, points, owner = self._refine_stages(batch, boxes, owner)
        boxes, points, owner = boxes.cpu().numpy(), points.cpu().numpy(), owner.cpu().numpy()
        result = []
        for index in range(len(images)):
            mine = np.flatnonzero(owner == index)
            mine = mine[np.argsort(-boxes[mine, 4], kind="stable")]
            result.append([Face(boxes[i, :4].astype(np.float64), float(boxes[i, 4]),
                                points[i].astype(np.float64)) for i in mine])
        return result

    def _seed_boxes(self, seeds):
        """Square candidates around each seed box, as the proposal net would offer them: three sizes (from a little
        larger to half as large again as the box) at five positions (the box's centre, and a tenth of the box
        diagonally from it); the second stage scores them and keeps the best, so a face that moved or turned since
        the seed is still framed."""
        import torch

        rows, owners = [], []
        sizes = np.array([1.1, 1.3, 1.5])
        shifts = np.array([(0.0, 0.0), (-0.1, -0.1), (0.1, -0.1), (-0.1, 0.1), (0.1, 0.1)])
        for index, frame_seeds in enumerate(seeds):
            for box in np.asarray(frame_seeds, np.float64).reshape(-1, 4):
                centre, side = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]).max()
                for size in sizes:
                    for shift in shifts:
                        middle = centre + shift * side
                        rows.append([*(middle - size * side / 2), *(middle + size * side / 2), 1.0])
                        owners.append(index)
        boxes = torch.tensor(rows, dtype=torch.float32, device=self.device).reshape(-1, 5)
        return boxes, torch.tensor(owners, dtype=torch.long, device=self.device)

    def _proposals(self, images):
        """Stage 1: the proposal net over the image pyramid, the whole batch per level; square candidate boxes
        (n, 5) with scores, and their frame index (n,)."""
        import torch
        from facenet_pytorch.models.utils.detect_face import generateBoundingBox, rerec
        from torch.nn.functional import interpolate
        from torchvision.ops import batched_nms

        height, width = images.shape[2:]
        scale = 12.0 / self.min_face
        side = min(height, width) * scale
        found, owners = [], []
        while side >= 12:
            level = interpolate(images, size=(int(height * scale + 1), int(width * scale + 1)), mode="area")
            regression, probability = self.pnet((level - 127.5) * 0.0078125)
            candidates, owner = generateBoundingBox(regression, probability[:, 1], scale, self.thresholds[0])
            keep = batched_nms(candidates[:, :4], candidates[:, 4], owner, 0.5)
            found.append(candidates[keep])
            owners.append(owner[keep])
            scale, side = scale * self.factor, side * self.factor
        boxes = torch.cat(found) if found else images.new_zeros((0, 9))
        owner = torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long, device=images.device)
        keep = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7)
        boxes, owner = boxes[keep], owner[keep]
        size = (boxes[:, 2:4] - boxes[:, 0:2]).repeat(1, 2)
        return rerec(torch.cat([boxes[:, :4] + boxes[:, 5:9] * size, boxes[:, 4:5]], dim=1)), owner

    def _refine_stages(self, images, boxes, owner):
        """Stages 2 and 3 on candidate boxes: (boxes (n, 5) with scores, landmarks (n, 5, 2), frame index (n,))."""
        import torch
        from facenet_pytorch.models.utils.detect_face import batched_nms_numpy, bbreg, rerec
        from torchvision.ops import batched_nms

        points = images.new_zeros((0, 5, 2))
        if len(boxes):  # stage 2: the refinement net on 24 x 24 crops
            regression, probability = self.rnet(self._crops(images, boxes, owner, 24))
            passed = probability[:, 1] > self.thresholds[1]
            boxes = torch.cat([boxes[passed, :4], probability[passed, 1:2]], dim=1)
            owner, regression = owner[passed], regression[passed]
            keep = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7)
            boxes = rerec(bbreg(boxes[keep], regression[keep]))
            owner = owner[keep]
        if len(boxes):  # stage 3: the output net on 48 x 48 crops: final boxes, scores and landmarks
            regression, marks, probability = self.onet(self._crops(images, boxes, owner, 48))
            passed = probability[:, 1] > self.thresholds[2]
            boxes = torch.cat([boxes[passed, :4], probability[passed, 1:2]], dim=1)
            owner, regression, marks = owner[passed], regression[passed], marks[passed]
            box_w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
            box_h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
            points = torch.stack([box_w * marks[:, :5] + boxes[:, 0:1] - 1, box_h * marks[:, 5:] + boxes[:, 1:2] - 1],
                                 dim=2)
            boxes = bbreg(boxes, regression)
            keep = batched_nms_numpy(boxes[:, :4], boxes[:, 4], owner, 0.7, "Min")
            boxes, points, owner = boxes[keep], points[keep], owner[keep]
        return boxes, points, owner

    @staticmethod
    def _crops(images, boxes, owner, size: int):
        """Each box's pixels (facenet-pytorch's 1-based inclusive corners) resized to ``size``, normalised."""
        import torch
        from torchvision.ops import roi_align

        rois = torch.cat([owner[:, None].to(boxes.dtype), boxes[:, 0:2] - 1, boxes[:, 2:4]], dim=1)
        # 3 x 3 bilinear samples averaged per output pixel: close to an area resize at the few-fold reductions of
        # face boxes, and a fixed cost whatever the box size
        crops = roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=3, aligned=True)
        return (crops - 127.5) * 0.0078125


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
    ``self.tracker`` for ``finish()``.

    ``detect_every`` K > 1 (for a detector with ``refine``): the full detector runs on frames 1, 1 + K, 1 + 2K, ...
    (and the last), and a frame between two of them is searched only where those two found faces (``refine``: the
    second and third MTCNN stages on those boxes, a fraction of the cost of the image pyramid). A person seen in at
    least K consecutive frames is in some fully searched frame, so with K no larger than the tracker's minimum track
    length every face that can make a kept track is looked for in every frame. Frames wait for the next fully
    searched one: at most ``batch_size + K`` frames are held.
    """

    def __init__(self, detector: Detector, batch_size: int = 16, tracker: Tracker | None = None,
                 detect_every: int = 1):
        self.detector, self.batch_size = detector, batch_size
        self.tracker = tracker or Tracker()
        self.every = detect_every if hasattr(detector, "refine") else 1
        self._previous_key: list[Face] | None = None

    def _is_key(self, frame) -> bool:
        return (frame.index - 1) % self.every == 0

    def run(self, frames):
        self._previous_key = None
        buffer = []
        for frame in prefetch(frames, depth=2 * self.batch_size):
            buffer.append(frame)
            if self._is_key(frame) and len(buffer) >= self.batch_size:
                yield from self._process(buffer, final=False)
                buffer = []
        if buffer:
            yield from self._process(buffer, final=True)

    def _process(self, buffer, final: bool):
        keys = [k for k, frame in enumerate(buffer) if self._is_key(frame) or (final and k == len(buffer) - 1)]
        found: dict[int, list[Face]] = {}
        for start in range(0, len(keys), self.batch_size):
            chunk = keys[start:start + self.batch_size]
            found.update(zip(chunk, self.detector.detect([buffer[k].image for k in chunk])))
        between = [k for k in range(len(buffer)) if k not in found]
        seeded, expected = [], {}
        for k in between:
            before = max((key for key in keys if key < k), default=None)
            after = min((key for key in keys if key > k), default=None)
            faces_before = found[before] if before is not None else self._previous_key or []
            faces_after = found[after] if after is not None else []
            if faces_before or faces_after:
                seeded.append((k, np.stack([face.box for face in faces_before + faces_after])))
                expected[k] = max(len(faces_before), len(faces_after))
            else:
                found[k] = []
        for start in range(0, len(seeded), self.batch_size):
            chunk = seeded[start:start + self.batch_size]
            faces = self.detector.refine([buffer[k].image for k, _ in chunk], [boxes for _, boxes in chunk])
            found.update(zip([k for k, _ in chunk], faces))
        # where the search around the neighbours' faces found fewer faces than a neighbour has, search in full
        missing = [k for k, count in expected.items() if len(found[k]) < count]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            found.update(zip(chunk, self.detector.detect([buffer[k].image for k in chunk])))
        self._previous_key = found[keys[-1]] if keys else self._previous_key
        for k, frame in enumerate(buffer):
            yield frame, self.tracker.update(frame.index, found[k])
