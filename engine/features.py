"""Per-frame features of a frozen backbone, extracted once and reused: the input of the temporal stage.

A backbone is any checkpoint this project trains (EMMA, CoTEX, an MAE pretraining run); its model's ``features(x)``
gives named parts per frame (``vit``: the ViT's pooled feature; EMMA also ``heads``, its output row, and ``dan``, the
DAN's scores). A split's features are ``<split>.npy`` (float32, one row per listed frame, in list order; loaded
memory-mapped) with ``<split>.json`` (the content key, the columns of each part, the frames without a feature)
in ``<feature-dir>/<backbone key>/``.

The content key hashes the checkpoint file's bytes, the parts, the precision and the split's frame list: a cached
split is reused only when all of them are unchanged, and extracted again otherwise; the frames an extraction could
not read are read again on reuse, so a repaired image is extracted. Extraction runs like evaluation
(``engine.evaluate``): every frame once, the same batches on any number of processes, so the files are identical.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from engine.evaluate import eval_loader, predict
from utils import dist
from utils.atomic import atomic_write
from utils.errors import UserError
from utils.monitor import log

FORMAT = 1
PART_ORDER = ("vit", "heads", "dan")


def file_sha256(path: str, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def optional_file_sha256(path: str | None) -> str | None:
    """The digest of a file that may be absent (a video without a recording): None where there is none."""
    return file_sha256(path) if path is not None and os.path.isfile(path) else None


def list_sha256(images) -> str:
    return hashlib.sha256("\n".join(str(image) for image in images).encode()).hexdigest()


def find_backbone(recorded: str, checkpoint_path: str) -> str | None:
    """The frozen backbone of a checkpoint trained on its features (temporal, video-level): at the path recorded in
    it, else a file of the same name in the checkpoint's own folder (a checkpoint and its backbone handed on
    together), else None."""
    if os.path.isfile(recorded):
        return recorded
    beside = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), os.path.basename(recorded))
    if os.path.isfile(beside) and not os.path.samefile(beside, checkpoint_path):
        log(f"the backbone {recorded} is not there; reading {beside}, beside {checkpoint_path}")
        return beside
    return None


class Backbone:
    """A frozen backbone checkpoint: its model, the parts it offers, and the key of its features."""

    def __init__(self, path: str, parts: str, precision_name: str):
        from utils.checkpoint import load_checkpoint

        if not os.path.isfile(path):
            raise UserError(f"--backbone-ckpt {path}: no such file")
        checkpoint = load_checkpoint(path, "backbone checkpoint")
        if not isinstance(checkpoint, dict) or "model_config" not in checkpoint:
            raise UserError(f"--backbone-ckpt {path}: not a checkpoint of this project (no model_config); train "
                            f"it with main_mtl.py, main_lsd.py or main_pretrain.py")
        self.path, self.config, self.checkpoint = path, checkpoint["model_config"], checkpoint
        self.sha256 = dist.broadcast_object(file_sha256(path) if dist.is_main() else None)
        self.precision = precision_name
        self.choose(parts)

    def choose(self, parts: str) -> None:
        """Extract ``parts`` (a comma list, or auto for all the backbone offers); sets the parts and the key."""
        offered = offered_parts(self.config)
        chosen = tuple(offered) if parts == "auto" else tuple(p for p in PART_ORDER if p in parts.split(","))
        unknown = sorted(set(parts.split(",")) - set(PART_ORDER)) if parts != "auto" else []
        if unknown or not chosen or not set(chosen) <= set(offered):
            raise UserError(f"--features {parts}: a {self.config.get('name')} backbone offers "
                            f"{', '.join(offered)} (comma list, or auto for all)")
        self.parts = chosen
        self.key = hashlib.sha256(json.dumps([FORMAT, self.sha256, chosen, self.precision]).encode()).hexdigest()

    def model(self):
        from models import build_model
        from models.weights import load_exactly

        model = build_model(self.config)
        load_exactly(model, self.checkpoint["model"], self.path, f"{self.config['name']} backbone")
        return model

    def describe(self) -> dict:
        return {"backbone": self.path, "key": self.key, "parts": list(self.parts), "precision": self.precision}

    def split_features(self, split: str, images, dataset, feature_dir: str, args, device) -> SplitFeatures:
        return split_features(self, split, images, dataset, feature_dir, args, device)


class FoldBackbones:
    """K backbones, backbone k trained without fold k of the training videos (``main_mtl.py --folds K --fold k``):
    a training frame's features come from the backbone that never saw its video, a validation or test frame's are the
    mean of all K. Only output parts (``heads``, ``dan``) combine this way: the ViT features of separately trained
    models do not share a space."""

    def __init__(self, paths: list[str], parts: str, precision_name: str):
        members = [Backbone(path, "auto", precision_name) for path in paths]
        offered = [part for part in members[0].parts if part != "vit"]
        if parts == "auto":
            parts = ",".join(offered)
        if "vit" in parts.split(",") or not offered:
            raise UserError(f"--folds {len(paths)}: only the backbones' outputs combine across folds (--features "
                            f"{','.join(offered) or 'heads'}); the ViT features of separately trained models do not "
                            f"share a space")
        for member in members:
            member.choose(parts)
        folds = {}
        for member in members:
            saved = member.checkpoint.get("args") or {}
            if saved.get("folds") != len(paths) or saved.get("fold") is None:
                raise UserError(f"--folds {len(paths)}: {member.path} was not trained with --folds {len(paths)} "
                                f"--fold k (its flags: --folds {saved.get('folds', 1)} --fold {saved.get('fold')})")
            if saved["fold"] in folds:
                raise UserError(f"--folds: {folds[saved['fold']].path} and {member.path} both leave out fold "
                                f"{saved['fold']}")
            folds[saved["fold"]] = member
        self.members = [folds[k] for k in range(len(paths))]
        self.parts, self.precision, self.checkpoint = self.members[0].parts, precision_name, {}
        self.path = ", ".join(member.path for member in self.members)
        self.key = hashlib.sha256(json.dumps([FORMAT, "folds", [m.key for m in self.members]]).encode()).hexdigest()

    def describe(self) -> dict:
        return {"backbone": [member.path for member in self.members], "key": self.key, "parts": list(self.parts),
                "precision": self.precision, "folds": len(self.members)}

    def split_features(self, split: str, images, dataset, feature_dir: str, args, device) -> SplitFeatures:
        return fold_split_features(self, split, images, dataset, feature_dir, args, device)


def fold_split_features(backbones: FoldBackbones, split: str, images, dataset, feature_dir: str, args,
                        device) -> SplitFeatures:
    """A split's features from fold backbones: each member's cached or extracted features, combined (out-of-fold rows
    for training, the members' mean otherwise)."""
    from datasets.mtl import video_folds

    per_member = [split_features(member, split, images, dataset, feature_dir, args, device)
                  for member in backbones.members]
    if split == "train":
        fold = video_folds(images, len(per_member))
        array = np.empty(per_member[0].array.shape, np.float32)
        available = np.zeros(len(images), bool)
        for k, features in enumerate(per_member):
            rows = fold == k
            array[rows] = features.array[rows]
            available[rows] = features.available[rows]
    else:
        array = np.mean([np.asarray(features.array, np.float64) for features in per_member], axis=0)
        array = array.astype(np.float32)
        available = np.logical_and.reduce([features.available for features in per_member])
    return SplitFeatures(array, available, per_member[0].columns)


def offered_parts(config: dict) -> list[str]:
    if config.get("name") == "emma":
        return ["vit", "heads"] + ([] if config.get("dan") == "none" else ["dan"])
    return ["vit"]


class Extraction:
    """The prediction hooks of ``engine.evaluate.predict`` for feature extraction."""

    def __init__(self, parts, width: int):
        self.parts, self.output_width = parts, width

    def predict(self, model, inputs):
        features = model.features(inputs)
        return torch.cat([features[part].float() for part in self.parts], dim=1)


class SplitFeatures:
    """One split's features: ``array`` (memory-mapped, frames x dim), ``available`` (frames with a feature) and
    ``columns`` (part -> (first, end))."""

    def __init__(self, array, available, columns):
        self.array, self.available, self.columns = array, available, columns

    def part(self, name: str) -> np.ndarray:
        first, end = self.columns[name]
        return np.asarray(self.array[:, first:end])


def split_features(backbone: Backbone, split: str, images, dataset, feature_dir: str, args, device) -> SplitFeatures:
    """The features of ``dataset`` (the split's image dataset, rows in the order of ``images``): from the cache when
    its key matches, else extracted (on every process) and written by rank 0."""
    folder = os.path.join(feature_dir, backbone.key[:16])
    array_path, index_path = os.path.join(folder, f"{split}.npy"), os.path.join(folder, f"{split}.json")
    key = hashlib.sha256(f"{backbone.key}:{list_sha256(images)}".encode()).hexdigest()
    # Rank 0 judges the cache and every rank acts on its verdict (an error included, so no rank waits for another).
    verdict = dist.broadcast_object(_judge_cache(index_path, key, dataset, split) if dist.is_main() else None)
    if verdict[0] == "error":
        raise UserError(verdict[1])
    if verdict[0] == "extract":
        if dist.is_main() and verdict[1]:
            log(f"{index_path}: {verdict[1]}; extracting {split} again")
        _extract(backbone, split, images, dataset, array_path, index_path, key, args, device)
    else:
        log(f"{split} features: reusing {array_path} (same checkpoint and frame list)")
    return load_split_features(array_path, index_path, key, len(images))


def _judge_cache(index_path: str, key: str, dataset, split: str) -> tuple[str, str | None]:
    """("reuse", None), ("extract", why) or ("error", message). The frames an extraction could not read are read
    again: a repaired image is extracted, and one still unreadable where the split allows none (evaluation frames
    without ``--allow-missing``) is the dataset's error naming it."""
    try:
        os.makedirs(os.path.dirname(index_path), exist_ok=True)  # before any extraction, not after it
        index = _read_index(index_path, len(dataset))
        if index is None:
            return "extract", None
        if index["key"] != key:
            return "extract", "features of another frame list"
        repaired = 0
        for row in index["unavailable"]:
            if dataset[row][0] is not None:
                repaired += 1
        if repaired:
            return "extract", f"{repaired} of the {len(index['unavailable'])} {split} frames that could not be read " \
                              f"are readable now"
        return "reuse", None
    except UserError as err:
        return "error", str(err)
    except OSError as err:
        return "error", f"cannot write features to {os.path.dirname(index_path)}: {err.strerror or err} " \
                        f"(--feature-dir)"


def _read_index(index_path: str, frames: int) -> dict | None:
    """A split's feature index, checked; None where there is none (or it is not even JSON: extracted again)."""
    try:
        with open(index_path) as handle:
            index = json.load(handle)
    except (OSError, ValueError):
        return None
    _check_index(index, index_path, frames)
    return index


def _check_index(index, index_path: str, frames: int) -> None:
    """A one-line error naming what is wrong with an index file that is JSON but not one of ours."""
    def wrong(problem):
        return UserError(f"{index_path}: not a feature index written by this project ({problem}); delete "
                         f"{os.path.dirname(index_path)} to extract the features again")

    if not isinstance(index, dict):
        raise wrong(f"a JSON {type(index).__name__}, not an object")
    for name, kind in (("key", str), ("dim", int), ("columns", dict), ("unavailable", list)):
        if not isinstance(index.get(name), kind):
            raise wrong(f"no {name} entry of type {kind.__name__}")
    for part, span in index["columns"].items():
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) for v in span)
                and 0 <= span[0] < span[1] <= index["dim"]):
            raise wrong(f"columns of {part} are {span}, not [first, end] within {index['dim']}")
    bad = [row for row in index["unavailable"] if not isinstance(row, int) or not 0 <= row < frames]
    if bad:
        raise wrong(f"unavailable row {bad[0]} is not a frame of the {frames} listed")


def _extract(*args) -> None:
    # Building the model draws an initialisation and a loader draws its base seed from the global generator: keep
    # the run's random state as it was, so that a run does not depend on whether its features were cached.
    with torch.random.fork_rng(devices=[]):
        _extract_split(*args)


def _extract_split(backbone, split, images, dataset, array_path, index_path, key, args, device) -> None:
    from datasets.images import collate_uint8
    from datasets.transforms import BatchTransform
    from engine.runtime import choose_attention_kernel, make_autocast, resolve_precision

    dtype = resolve_precision(args.precision, device)
    model = backbone.model().to(device).eval()
    choose_attention_kernel(model, device, dtype)
    with torch.inference_mode():
        probe = model.features(torch.zeros(1, 3, backbone.config["img_size"], backbone.config["img_size"],
                                           device=device))
    columns, width = {}, 0
    for part in backbone.parts:
        columns[part] = (width, width + probe[part].shape[1])
        width += probe[part].shape[1]
    loader = eval_loader(dataset, args.extract_batch_size, args.num_workers, device, collate_uint8)
    transform = BatchTransform(backbone.config["img_size"])
    outputs, seen = predict(Extraction(backbone.parts, width), model, loader, transform, make_autocast(device, dtype),
                            device, desc=f"extract {split}", allow_missing=True)
    if dist.is_main():
        unavailable = np.flatnonzero(~seen)
        if len(unavailable):
            log(f"{split} features: {len(unavailable)} frames could not be read and have no feature "
                f"(e.g. {images[unavailable[0]]}); windows mask them out")
        os.makedirs(os.path.dirname(array_path), exist_ok=True)
        with atomic_write(array_path, "wb") as handle:
            np.save(handle, outputs.astype(np.float32))
        with atomic_write(index_path) as handle:
            json.dump(dict(backbone.describe(), key=key, split=split, frames=len(images), dim=width,
                           columns=columns, list_sha256=list_sha256(images), unavailable=unavailable.tolist(),
                           frame_list=f"{split}_frames.txt"), handle, indent=1)
        with atomic_write(os.path.join(os.path.dirname(array_path), f"{split}_frames.txt")) as handle:
            handle.write("".join(f"{image}\n" for image in images))
        log(f"{split} features: {len(images)} frames x {width} ({', '.join(backbone.parts)}) -> {array_path}")
    dist.barrier()


def load_split_features(array_path: str, index_path: str, key: str, frames: int) -> SplitFeatures:
    """A split's cached features, checked against the expected key and frame count (a file cut short, or of another
    checkpoint or frame list, is a one-line error naming it)."""
    try:
        with open(index_path) as handle:
            index = json.load(handle)
    except (OSError, ValueError) as err:
        raise UserError(f"{index_path}: unreadable feature index ({err})") from None
    _check_index(index, index_path, frames)
    if index.get("key") != key:
        raise UserError(f"{index_path}: features of another checkpoint or frame list than the one named (key "
                        f"{str(index.get('key'))[:16]}, expected {key[:16]}); delete {os.path.dirname(index_path)} "
                        f"to extract them again")
    try:
        array = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as err:  # an empty file is an EOFError
        raise UserError(f"{array_path}: feature file cut short or damaged ({err or 'empty'}); delete it to extract "
                        f"again") from None
    if array.dtype != np.float32:
        raise UserError(f"{array_path}: {array.dtype} values, not float32 features; delete it to extract again")
    if array.ndim != 2 or array.shape != (frames, index["dim"]):
        raise UserError(f"{array_path}: {array.shape} features, expected ({frames}, {index['dim']}); delete it to "
                        f"extract again")
    available = np.ones(frames, bool)
    available[np.asarray(index.get("unavailable", []), dtype=np.int64)] = False
    return SplitFeatures(array, available, {part: tuple(span) for part, span in index["columns"].items()})
