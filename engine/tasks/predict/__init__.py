"""The affect of every face in a user's videos and images: the Python API that ``predict.py`` is a thin shell over.

::

    from engine.tasks.predict import Predictor

    predictor = Predictor("runs/emma/checkpoints/best_mtl.pth")           # or [A, B, C]: an ensemble
    frames = predictor.video("interview.mp4")      # pandas.DataFrame: one row per decoded frame and face
    photos = predictor.images(["a.jpg", "b.png"])  # one row per face (an image without a face: one row saying so)
    crops = predictor.faces(aligned)                # already aligned uint8 RGB crops (N, H, W, 3): one row each

A video goes through the face pipeline of ``main_prepare.py`` (``datasets.media``: PyAV decoding with frame times
and rotation, MTCNN detection in batches on the device, IoU tracking, alignment to the ArcFace template) in memory:
frames are decoded, detected and forgotten as they stream, the aligned crops of the faces are batched across frames
on the device, and only the rows of predictions are kept. When the video ends, the tracker joins tracks of one
person and drops short ones (spurious detections) exactly as ``main_prepare.py`` does, and the kept tracks are
numbered 1, 2, ... (left to right for two people, else by first appearance).

Checkpoints: EMMA checkpoints of ``main_mtl.py`` (the MTL track or the per-video tracks) and temporal ones of
``main_temporal.py`` (``engine.tasks.predict.temporal``: videos only), as a local path or a Hugging Face hub reference
``hf-hub:owner/repo/path/file.pth`` (fetched by ``huggingface_hub``, read from its cache when offline:
``HF_HUB_OFFLINE=1``); loading is ``weights_only``. The model, its input size, its AU thresholds and the smoothing
windows its training run chose (``MTLTask.inference_settings``) come from the checkpoint: a video's tracks are
smoothed over their frame numbers as ``main_mtl.py --eval`` smooths each video (``MTLTask.smooth_outputs``). Several
EMMA checkpoints are an ensemble, averaged as ``main_mtl.py --eval --ckpt A B`` does (``engine.report.average``: the
task's ensemble space, probabilities and clipped VA), with the first member's AU thresholds and windows.

The columns (docs/predict.md): ``frame`` (1-based decoding order), ``time`` (s from the first frame), ``track``,
``score`` (the detector's), ``x1, y1, x2, y2`` (the box in the upright frame's pixels), ``valence``, ``arousal``,
``expression`` (the class name), the probability of each expression (``neutral`` ... ``other``), of each AU
(``AU1`` ... ``AU26``) and its decision at the checkpoint's threshold (``AU1_active`` ...). A frame without a face
has one row with an empty track and empty predictions.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from datasets.media.faces import FacePipeline, Tracker, align, make_detector
from datasets.media.video import estimate_frames, probe, read_frames
from engine.tasks.predict.temporal import SequencePredictor, is_sequence_model, no_images, precision_flag
from utils import abaw
from utils.errors import UserError

HUB_PREFIX = "hf-hub:"
EXPR_COLUMNS = [name.lower() for name in abaw.EXPR_NAMES]
AU_COLUMNS = list(abaw.AU_NAMES)
AU_ACTIVE_COLUMNS = [f"{name}_active" for name in abaw.AU_NAMES]
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
PREDICTION_COLUMNS = ["valence", "arousal", "expression", *EXPR_COLUMNS, *AU_COLUMNS, *AU_ACTIVE_COLUMNS]
VIDEO_COLUMNS = ["frame", "time", "track", "score", *BOX_COLUMNS, *PREDICTION_COLUMNS]
IMAGE_COLUMNS = ["image", "face", "score", *BOX_COLUMNS, *PREDICTION_COLUMNS, "note"]
FACE_COLUMNS = ["face", *PREDICTION_COLUMNS]
NO_FACE = "no face found"


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints


def resolve_checkpoint(reference: str, what: str = "checkpoint", local_only: bool = False) -> str:
    """A local file for ``reference``: a path as given, or ``hf-hub:owner/repo/path/in/repo.pth`` through
    ``huggingface_hub`` (its cache first; with ``HF_HUB_OFFLINE=1`` or ``local_only`` only its cache). A reference
    that cannot be resolved is a one-line :class:`UserError`."""
    reference = os.fspath(reference)
    if not reference.startswith(HUB_PREFIX):
        if not os.path.isfile(reference):
            raise UserError(f"{what} not found: {reference}")
        return reference
    parts = reference[len(HUB_PREFIX):].split("/")
    if len(parts) < 3 or not all(parts):
        raise UserError(f"{reference}: a hub {what} is hf-hub:owner/repo/file.pth (the file's path in the repo)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), local_files_only=local_only)
    except LocalEntryNotFoundError:
        raise UserError(f"{reference}: not in the local Hugging Face cache, and the hub cannot be reached (offline, "
                        f"or HF_HUB_OFFLINE=1); download it once with network access") from None
    except (EntryNotFoundError, HfHubHTTPError, HFValidationError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{reference}: cannot be fetched from the Hugging Face hub ({first})") from None


def _stage_of(path: str, shown: str):
    """The task class whose model the file holds, among those whose outputs decode into valence, arousal, the
    expression and the AUs, and the file's model config."""
    from engine.tasks import TASKS
    from utils.checkpoint import load_checkpoint

    content = load_checkpoint(path, mmap=True)
    config = content.get("model_config")
    able = [stage for stage in TASKS.values() if hasattr(stage, "decode")]  # outputs -> VA, expression, AUs
    names = " or ".join(f"{stage.model_name} ({stage.prog})" for stage in able)
    if config is None:
        raise UserError(f"{shown} is not a model checkpoint of this project (it has no model_config); predict.py "
                        f"takes {names} checkpoints")
    for stage in able:
        if stage.model_name == config["name"]:
            return stage, config
    raise UserError(f"{shown} holds a {config['name']} model; predict.py takes {names} checkpoints")


def _eval_args(stage, typed=(), **settings):
    """The flags a task reads when it loads a checkpoint for evaluation: its parser's defaults and ``settings``, of
    which those in ``typed`` count as typed (they win over the checkpoint's)."""
    from engine.cli import build_parser

    parser = build_parser(stage, "")
    parser.set_defaults(track=stage.name, typed=sorted(typed), **settings)
    return parser.parse_args([])


def _hub_backbones(reference: str, config: dict) -> list[str] | None:
    """A temporal checkpoint from the hub whose recorded backbone is not on this machine: the file of the same name
    in the same folder of the same hub repo, from the local cache (nothing is fetched); None where one is missing."""
    recorded = config["features"].get("backbone") or []
    recorded = [recorded] if isinstance(recorded, str) else list(recorded)
    if not reference.startswith(HUB_PREFIX) or not recorded or all(os.path.isfile(name) for name in recorded):
        return None
    folder = reference.rsplit("/", 1)[0]
    found = []
    for name in recorded:
        try:
            found.append(name if os.path.isfile(name) else
                         resolve_checkpoint(f"{folder}/{os.path.basename(name)}", "backbone", local_only=True))
        except UserError:
            return None
    return found


def resolve_device(choice: str) -> torch.device:
    """auto: the GPU when there is one, else the CPU; cuda without one is a one-line error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda asked for, but no CUDA device is available (use cpu or auto)")
    return device


# ---------------------------------------------------------------------------------------------------------------------
# The predictor


class Predictor:
    """One checkpoint, or several (an ensemble), ready to predict faces, images and videos.

    ``device``: auto, cpu, cuda or cuda:N; ``precision``: auto (bf16 where the device computes it natively), bf16,
    fp16 or fp32; ``batch_size``: aligned faces per forward pass (across frames and people); the face pipeline's
    settings, each by default ``main_prepare.py``'s (so that both see the same faces): ``detect_batch`` (its
    ``--batch-size``: frames per detector batch), ``detect_every``, ``min_face``, ``min_track``, ``max_gap``,
    ``crop_size``; ``progress``: a tqdm bar per video.

    ``smoothing``: a video's VA and expression probabilities are averaged over neighbouring frames of each track with
    the windows its training run chose and stored in the checkpoint (``main_mtl.py --smooth-va``, ``--smooth-expr``;
    :attr:`smoothing_windows`), as ``main_mtl.py --eval`` smooths each video; False: the frames' own outputs.
    Images and single faces are never smoothed.

    ``backbone``: for a temporal checkpoint, its frame model's checkpoint (a path or ``hf-hub:`` reference, several
    for fold backbones) instead of the one it records; by default the recorded path, else a file of that name
    beside the checkpoint, and for a hub checkpoint the file of that name in its hub folder (from the local cache).
    """

    def __init__(self, ckpt, device: str = "auto", precision: str = "auto", batch_size: int = 64,
                 detect_batch: int | None = None, detect_every: int | None = None, min_face: int | None = None,
                 min_track: int | None = None, max_gap: int | None = None, crop_size: int | None = None,
                 progress: bool = False, smoothing: bool = True, backbone=None):
        from engine.runtime import choose_attention_kernel, make_autocast, resolve_precision
        from engine.tasks import prepare

        references = [ckpt] if isinstance(ckpt, (str, os.PathLike)) else list(ckpt)
        if not references:
            raise UserError("give at least one checkpoint")
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.autocast = make_autocast(self.device, self.dtype)
        # main_prepare.py's own flags and checks decide the face pipeline's settings (one rule for both)
        argv = ["--videos", "-", "--output-dir", "-"]
        for flag, value in (("--batch-size", detect_batch), ("--detect-every", detect_every), ("--min-face", min_face),
                            ("--min-track", min_track), ("--max-gap", max_gap), ("--crop-size", crop_size)):
            argv += [flag, str(value)] if value is not None else []
        faces = prepare.build_parser("").parse_args(argv)
        prepare.check_args(faces)
        self.batch_size, self.detect_batch = batch_size, faces.batch_size
        self.detect_every = prepare.detect_every(faces)  # --detect-every, or main_prepare.py's default rule
        self.min_face, self.min_track, self.max_gap, self.crop_size = (faces.min_face, faces.min_track, faces.max_gap,
                                                                       faces.crop_size)
        self.progress = progress
        self.paths = [resolve_checkpoint(reference) for reference in references]
        found = [_stage_of(path, str(reference)) for path, reference in zip(self.paths, references)]
        stages = [stage for stage, _ in found]
        stage, config = found[0]
        if any(other is not stage for other in stages[1:]):
            raise UserError("an ensemble's checkpoints must all be of one kind: "
                            + ", ".join(f"{ref} ({s.model_name})" for ref, s in zip(references, stages)))
        if len(self.paths) > 1 and not stage.ensembles:
            raise UserError(f"{stage.prog} checkpoints predict one at a time; give one --ckpt")
        settings, typed = {}, []
        if is_sequence_model(config):  # its backbone runs where, and at the precision, its features were made
            settings = dict(device="cuda" if self.device.type == "cuda" else "cpu",
                            precision=precision_flag(config["features"].get("precision")))
            if backbone is not None:
                backbones = [backbone] if isinstance(backbone, (str, os.PathLike)) else list(backbone)
                backbones = [resolve_checkpoint(reference, "backbone") for reference in backbones]
            else:
                backbones = _hub_backbones(os.fspath(references[0]), config)
            if backbones:
                settings["backbone_ckpt"], typed = backbones, ["backbone_ckpt"]
        elif backbone is not None:
            raise UserError(f"a backbone is given for {references[0]}, a frame model ({stage.model_name}) that needs "
                            f"none; --backbone-ckpt goes with a temporal checkpoint of main_temporal.py")
        self.task = stage(_eval_args(stage, typed, **settings))
        self.models, self.transforms = [], []
        first_extras = {}
        for index, path in enumerate(self.paths):
            model = self.task.load_for_eval(path)
            if index == 0:
                first_extras = self.task.checkpoint_extras()
            model.to(self.device).eval()
            choose_attention_kernel(model, self.device, self.dtype)
            self.models.append(model)
            self.transforms.append(self.task.input_transform(model.config.get("img_size")))
        if len(self.paths) > 1:
            self.task.use_ensemble_settings(self.paths[0], first_extras)
        self.sequence = None  # a temporal checkpoint: features per face, then the sequence model per track
        if is_sequence_model(config):
            self.sequence = SequencePredictor(self.task, self.models[0], self.device, self.autocast, batch_size)
        self.smooth = bool(smoothing)
        self._detector = None

    @property
    def au_thresholds(self) -> list[float]:
        return list(self.task.au_thresholds)

    @property
    def smoothing_windows(self) -> dict[str, int]:
        """The windows (frames; 0: off) over which :meth:`video` averages VA and the expression probabilities of
        each track: the checkpoint's (an ensemble's first member's), or none with ``smoothing=False``."""
        from engine.tasks.mtl import NO_SMOOTHING

        windows = (self.task.smoothing or NO_SMOOTHING) if self.smooth else NO_SMOOTHING
        return {what: int(window) for what, window in windows.items()}

    @property
    def detector(self):
        if self._detector is None:
            self._detector = make_detector("mtcnn", self.device, self.min_face)
        return self._detector

    # ---- model outputs
    @torch.inference_mode()
    def outputs(self, crops) -> np.ndarray:
        """The (ensemble's) output rows ``[VA, 8 expression log-probabilities, 12 AU logits]`` of aligned uint8 RGB
        crops (N, H, W, 3) of one size, batched by ``batch_size``; the round trip of ``main_mtl.py --eval``."""
        from engine.report import average
        from engine.task import to_device

        if self.sequence is not None:
            raise no_images(self.task.prog)
        crops = np.asarray(crops) if not isinstance(crops, np.ndarray) else crops
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise UserError(f"faces: expected uint8 RGB crops of shape (N, H, W, 3), got {crops.dtype} "
                            f"{tuple(crops.shape)}")
        if len(crops) == 0:
            return np.zeros((0, self.task.output_width), np.float32)
        chunks = []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(crops[start:start + self.batch_size])).permute(0, 3, 1, 2)
            batch = to_device(batch, self.device)
            members = []
            for model, transform in zip(self.models, self.transforms):
                with self.autocast():
                    out = self.task.predict(model, transform(batch))
                members.append(out.float().cpu().numpy())
            chunks.append(average(self.task, members))
        return np.concatenate(chunks)

    def decode(self, outputs: np.ndarray) -> dict:
        """Output rows -> the prediction columns: VA as written to the submission files, the expression's class name,
        the probabilities, and the AU decisions at the checkpoint's thresholds."""
        from engine.task import softmax

        va, expr, aus = self.task.decode(outputs)
        columns = {"valence": va[:, 0], "arousal": va[:, 1],
                   "expression": np.asarray(abaw.EXPR_NAMES, dtype=object)[expr]}
        probabilities = softmax(outputs[:, abaw.OUT_EXPR])
        columns.update({name: probabilities[:, k] for k, name in enumerate(EXPR_COLUMNS)})
        au_probabilities = abaw.au_probabilities(outputs)
        columns.update({name: au_probabilities[:, k] for k, name in enumerate(AU_COLUMNS)})
        columns.update({name: aus[:, k].astype(np.int64) for k, name in enumerate(AU_ACTIVE_COLUMNS)})
        return columns

    # ---- the three entry points
    def faces(self, crops) -> pd.DataFrame:
        """One row per aligned crop (``face``: its 0-based position in ``crops``) with the prediction columns."""
        outputs = self.outputs(crops)
        frame = pd.DataFrame({"face": np.arange(len(outputs)), **self.decode(outputs)})
        return _typed(frame, FACE_COLUMNS)

    def images(self, paths: Iterable[str], skip_unreadable: bool = False) -> pd.DataFrame:
        """One row per face of each image (``face``: 1, 2, ... left to right), with its box and score; an image
        without a face has one row with ``note`` "no face found". An unreadable image raises
        :class:`datasets.images.ImageDecodeError` naming it, or with ``skip_unreadable`` gets one row whose note says
        why."""
        from datasets.images import ImageDecodeError, decode_image

        if self.sequence is not None:
            raise no_images(self.task.prog)
        rows, pending, outputs, count = [], [], [], 0
        for path in paths:
            path = os.fspath(path)
            try:
                image = decode_image(path).permute(1, 2, 0).numpy()
            except ImageDecodeError as error:
                if not skip_unreadable:
                    raise
                rows.append({"image": path, "note": f"unreadable: {error}"})
                continue
            (found,) = self.detector.detect([image])
            found = sorted(found, key=lambda face: face.box[0])
            if not found:
                rows.append({"image": path, "note": NO_FACE})
            for number, face in enumerate(found, 1):
                rows.append({"image": path, "face": number, "score": face.score,
                             **dict(zip(BOX_COLUMNS, face.box)), "crop": count})
                pending.append(align(image, face.landmarks, self.crop_size))
                count += 1
                if len(pending) == self.batch_size:  # predicted as they come: no image is kept
                    outputs.append(self.outputs(np.stack(pending)))
                    pending = []
        if pending:
            outputs.append(self.outputs(np.stack(pending)))
        return self._with_predictions(rows, outputs, IMAGE_COLUMNS)

    def video(self, path: str) -> pd.DataFrame:
        """One row per decoded frame and kept face, in frame order and then by track (module text). Streams: the
        frames are decoded, detected and dropped as they go, and what is kept per frame and face is packed numbers
        (the frame's number and time; each face's frame, provisional track, score, box and output row). With
        ``smoothing`` (the default), VA and the expression probabilities are averaged per track over the frame
        numbers with the checkpoint's windows (:attr:`smoothing_windows`). An unreadable file raises
        :class:`datasets.media.video.MediaError` naming it."""
        path = os.fspath(path)
        info = probe(path)
        # main_prepare.py's tracking: a person back in the frame within 3 s stays one track
        tracker = Tracker(max_gap=self.max_gap, min_length=self.min_track,
                          join_gap=max(1, int(round(3 * (info.fps or 25)))))
        # the full search on every detect_every-th frame, only around its faces in between (as main_prepare.py)
        pipeline = FacePipeline(self.detector, self.detect_batch, tracker, self.detect_every)
        frame_numbers, frame_times = array("q"), array("d")  # 16 bytes a frame, not two Python objects
        face_frames, provisional, scores, boxes = array("q"), array("q"), array("d"), array("d")
        pending, outputs = [], []
        bar = _progress_bar(path, self.progress)
        try:
            for frame, found in pipeline.run(read_frames(path)):
                frame_numbers.append(frame.index)
                frame_times.append(frame.time)
                for face in found:
                    face_frames.append(frame.index)
                    provisional.append(face.track)
                    scores.append(float(face.score))
                    boxes.extend(float(value) for value in face.box)
                    pending.append(align(frame.image, face.landmarks, self.crop_size))
                    if len(pending) == self.batch_size:
                        outputs.append(self._per_face(np.stack(pending)))
                        pending = []
                if bar is not None:
                    bar.update()
            if pending:
                outputs.append(self._per_face(np.stack(pending)))
        finally:
            if bar is not None:
                bar.close()
        person, order, _ = tracker.finish()
        number = {ident: k + 1 for k, ident in enumerate(order)}
        idents, face_ident = np.unique(np.frombuffer(provisional, np.int64), return_inverse=True)
        track = np.array([number.get(person.get(int(ident), -1), 0) for ident in idents], np.int64)[face_ident]
        kept = track > 0
        frame_numbers, frame_times = np.frombuffer(frame_numbers, np.int64), np.frombuffer(frame_times, np.float64)
        face_frames = np.frombuffer(face_frames, np.int64)[kept]
        face_times = frame_times[np.searchsorted(frame_numbers, face_frames)]  # frame numbers ascend
        values = np.concatenate(outputs)[kept] if outputs else np.zeros((0, 0), np.float32)
        del outputs
        if self.sequence is not None:  # the faces' features -> each track's sequence -> per-face outputs
            outputs = self.sequence.outputs(path, values, track[kept], face_frames, face_times)
        else:
            outputs = values.reshape(len(values), -1) if len(values) else np.zeros((0, abaw.OUTPUT_WIDTH), np.float32)
        del values
        if self.smooth:  # per track over its frame numbers, as main_mtl.py --eval smooths each video
            outputs = self.task.smooth_outputs(outputs, track[kept], face_frames)
        boxes = np.frombuffer(boxes, np.float64).reshape(-1, 4)[kept]
        with_faces = pd.DataFrame({"frame": face_frames, "time": face_times, "track": track[kept],
                                   "score": np.frombuffer(scores, np.float64)[kept],
                                   **{name: boxes[:, k] for k, name in enumerate(BOX_COLUMNS)},
                                   **self.decode(outputs)})
        del outputs, boxes
        empty = ~np.isin(frame_numbers, face_frames)
        without = pd.DataFrame({"frame": frame_numbers[empty], "time": frame_times[empty]})
        table = pd.concat([with_faces, without], ignore_index=True) if len(without) else with_faces
        del with_faces, without
        table = table.sort_values(["frame", "track"], kind="stable", na_position="first").reset_index(drop=True)
        return _typed(table, VIDEO_COLUMNS)

    def _per_face(self, crops: np.ndarray) -> np.ndarray:
        """What a video keeps of each aligned face: the output row, or for a temporal checkpoint the features its
        sequence model reads."""
        return self.sequence.features(crops) if self.sequence is not None else self.outputs(crops)

    def _with_predictions(self, rows: list[dict], outputs: list, columns: list[str]) -> pd.DataFrame:
        """The table of ``rows`` (those with a face carry ``crop``, their row of the concatenated ``outputs``)."""
        table = pd.DataFrame(rows, columns=[*dict.fromkeys([*columns, "crop"])])
        if outputs:
            predictions = pd.DataFrame(self.decode(np.concatenate(outputs)))
            has_face = table["crop"].notna()
            for name in PREDICTION_COLUMNS:
                values = predictions[name].to_numpy()[table.loc[has_face, "crop"].astype(np.int64)]
                if table[name].dtype != values.dtype:
                    table[name] = table[name].astype(object if values.dtype == object else np.float64)
                table.loc[has_face, name] = values
        return _typed(table.drop(columns="crop"), columns)


def _typed(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The columns in their order, with integer columns that may be empty as pandas' nullable integers."""
    table = table.reindex(columns=list(columns))
    for name in ("frame", "track", "face", *AU_ACTIVE_COLUMNS):
        if name in table:
            table[name] = table[name].astype("Int64")
    for name in ("time", "score", *BOX_COLUMNS, "valence", "arousal", *EXPR_COLUMNS, *AU_COLUMNS):
        if name in table:
            table[name] = table[name].astype(np.float64)
    for name in ("expression", "note", "image"):
        if name in table:
            table[name] = table[name].astype(object)
    return table


def _progress_bar(path: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=estimate_frames(path) or None, unit="frame", desc=os.path.basename(path), dynamic_ncols=True,
                leave=False, smoothing=0.1)
