"""The Compound Expression track (C-EXPR-DB): the :class:`engine.task.Task` of ``main_ce.py``.

The test videos come with no training data, so a model is either trained on folders of compound-labelled face images
(RAF-DB's compound set has them) or used zero-shot:

- Training: masked CoTEX (``engine.tasks.lsd``) with a 7-class head, on the compound folders. Compound stills to
  video crops is the same kind of problem as the LSD track's synthetic-to-real images, a classification across a domain
  gap, and CoTEX is this project's model for it: the patch dropping and the agreement term of its co-trained ViTs, its
  MAE loading, layer decay and checkpoints all carry over, so this stage is that task with other data, classes and
  files (``--vit-num 1 --mask-ratio 0`` is a plain ViT classifier).
- Zero-shot: ``--eval --ckpt <an EMMA checkpoint of main_mtl.py>`` reads the 8 expression logits of its output row
  (``utils.abaw.OUT_EXPR``), turns them into probabilities and maps them to the 7 compounds by the track's rule
  (``datasets.tracks.ce.CETrack.zero_shot``). A checkpoint of this stage gives its 7 logits.

Test: the sample file's frames (``--test-list``, default ``<data-dir>/CVPR_6th_ABAW_CE_test_set_sample.txt``) over
``<data-dir>/cropped_aligned/`` as ``main_prepare.py`` writes it: frame ``01/00042.jpg`` is the crop
``cropped_aligned/01/00042.jpg`` (when a video's person was found as two or more tracks, the crop folder of the video
with the most frames). Frames without a crop (no face found) take the class of the nearest predicted frame of the same
video (the earlier one on a tie), else the most frequent predicted class; a video with no crop folder at all is named
in a warning and filled that way, since the submission must list every frame. The run writes ``test_predictions.txt``
in the challenge's format (the track's writer, which reads it back), and ``test_metrics.json`` (macro F1, with that of
the best constant prediction) where the synthetic test labels are present.

``--demo`` generates the synthetic CE set, prepares its videos with ``main_prepare.py``'s stage (reusing what an
earlier demo prepared), trains on its compound folders and scores its submission.
"""

from __future__ import annotations

import json
import os
import time
from functools import cached_property

import numpy as np
import torch

from datasets import lsd
from datasets.images import ImageListDataset
from datasets.media import prepared
from datasets.mtl import list_available
from datasets.tracks.ce import (
    CLASSES,
    COMPOUND_DIR,
    NUM_CLASSES,
    SAMPLE_FILE,
    TEST_LABEL_FILE,
    TRACK,
    CompoundFolders,
    frame_key,
    read_sample_file,
    read_test_labels,
)
from engine.cli import non_negative_float, positive_int, ratio
from engine.task import PROBABILITY_FLOOR, Selection, model_from_checkpoint, single_test_list, write_metrics
from engine.tasks.lsd import LSDTask
from utils import abaw
from utils.atomic import write_text_atomic
from utils.errors import UserError
from utils.monitor import log, warn

NO_VAL = "none"


def fill_classes(frames, classes: np.ndarray) -> tuple[np.ndarray, dict]:
    """Frames without a prediction (class -1): the class of the nearest predicted frame of the same video (the earlier
    one on a tie), else the most frequent predicted class. Returns the filled classes and how many took each way."""
    classes = np.asarray(classes, dtype=np.int64).copy()
    predicted = classes >= 0
    if not predicted.any():
        raise UserError("no frame of the sample file could be predicted (no face crop found); check --data-dir")
    keys = [frame_key(frame) for frame in frames]
    videos = np.array([video for video, _ in keys], dtype=object)
    numbers = np.array([number for _, number in keys], dtype=np.int64)
    most_frequent = int(np.bincount(classes[predicted], minlength=NUM_CLASSES).argmax())
    counts = {"same_video": 0, "most_frequent": 0}
    for video in np.unique(videos[~predicted]):
        rows = np.flatnonzero(videos == video)
        known = rows[predicted[rows]]
        order = known[np.lexsort((numbers[known],))]  # by frame number, so that argmin takes the earlier on a tie
        for row in rows[~predicted[rows]]:
            if len(order):
                classes[row] = classes[order[np.argmin(np.abs(numbers[order] - numbers[row]))]]
                counts["same_video"] += 1
            else:
                classes[row] = most_frequent
                counts["most_frequent"] += 1
    return classes, counts


class CETask(LSDTask):
    """Masked CoTEX with a 7-class head on compound image folders, or an EMMA checkpoint zero-shot."""

    name = "ce"
    prog = "main_ce.py"
    model_name = "cotex"
    # LSD's recipe for CoTEX fine-tuning from MAE weights (the compound folders are images of faces, as LSD's).
    defaults = dict(LSDTask.defaults, output_dir="runs/ce")
    # One ViT of the demo's small hybrid size, no patch dropping: 400 still images per class train it in seconds per
    # epoch. Its validation (compound stills) is not its test's domain (video crops), so no --bn-adapt.
    demo_run = dict(img_size=48, blr=1e-3, warmup_epochs=0.3, epochs=10, output_dir="runs/demo_ce", vit_num=1,
                    mask_ratio=0.0, stem_blocks=[1])
    demo_data = dict(synthetic="ce",
                     full=dict(videos=8, frames=50, width=320, height=180, per_class=400, size=64, seed=0),
                     small=dict(videos=2, frames=12, width=192, height=128, per_class=4, size=32, seed=0))
    batch_size_help = "per-process batch size (default: 64 * int(1 / (1 - mask ratio)), at most 4096, as LSD's)"
    output_width = NUM_CLASSES
    selection = Selection({"f1": "f1_macro"})

    # ---- command line
    @staticmethod
    def add_flags(groups) -> None:
        data = groups["data"]
        data.add_argument("--train-dir", "--train_dir", default=os.path.join(COMPOUND_DIR, "train"), metavar="DIR",
                          help="compound image folders for training, one per class (e.g. 'Fearfully Surprised'), "
                               "relative to --data-dir or absolute (default: %(default)s)")
        data.add_argument("--val-dir", "--val_dir", default=os.path.join(COMPOUND_DIR, "val"), metavar="DIR",
                          help="compound image folders for validation and the best checkpoint; 'none', or a default "
                               "folder that does not exist: no validation (default: %(default)s)")
        model = groups["model"]
        model.add_argument("--vit-num", "--vit_num", type=positive_int, default=2, metavar="K",
                           help="number of co-trained ViTs (default: %(default)s)")
        model.add_argument("--mask-ratio", "--mask_ratio", type=ratio, default=0.75, metavar="R",
                           help="fraction of patches each ViT drops in training (default: %(default)s)")
        optim = groups["optim"]
        optim.add_argument("--lambda-ce", "--lambda_ce", type=non_negative_float, default=1.0,
                           help="weight of the cross-entropy term (default: %(default)s)")
        optim.add_argument("--lambda-js", "--lambda_js", type=non_negative_float, default=100.0,
                           help="weight of the Jensen-Shannon term between the ViTs (default: %(default)s)")
        optim.add_argument("--scale-lr", action="store_true",
                           help="scale the lr by batch * accum * world / 256 (LSD's recipe uses blr as the lr)")

    @staticmethod
    def prepare_demo(args) -> None:
        """Prepare the demo set's videos (``main_prepare.py``'s stage; videos already prepared are skipped)."""
        from engine.tasks.prepare import build_parser, prepare

        root = args.data_dir  # the demo's synthetic set, or the folder typed with --data-dir
        videos = os.path.join(root, "videos")
        if not os.path.isdir(videos):
            return
        started = time.perf_counter()
        log(f"preparing the demo's videos into {root} (main_prepare.py's stage; prepared videos are reused)")
        failures = prepare(build_parser("").parse_args(["--videos", videos, "--output-dir", root, "--device",
                                                        args.device, "--no-progress"]))
        if failures:
            raise UserError("the demo's videos failed to prepare: " + "; ".join(message for _, message in failures))
        log(f"videos prepared in {time.perf_counter() - started:.0f} s")

    # ---- data
    @cached_property
    def train_folders(self) -> CompoundFolders:
        return CompoundFolders(self._split_dir(self.args.train_dir))

    @cached_property
    def val_folders(self) -> CompoundFolders | None:
        if self.args.val_dir == NO_VAL:
            return None
        root = self._split_dir(self.args.val_dir)
        if not os.path.isdir(root) and "val_dir" not in self.args.typed:
            log(f"no validation folders at {root}: no best checkpoint, the files come from last.pth")
            return None
        return CompoundFolders(root)

    def train_split(self):
        folders = self.train_folders
        log("compound training images per class: " + ", ".join(
            f"{name} {count}" for name, count in zip(CLASSES, folders.class_counts())))
        return lsd.LSDDataset(folders, skip_bad=True), folders.images

    def val_split(self):
        folders = self.val_folders
        return None if folders is None else lsd.LSDDataset(folders, skip_bad=self.args.allow_missing)

    @cached_property
    def _test_list(self) -> tuple | None:
        """(the sample file's frames, each frame's crop path under cropped_aligned/, whether it exists), or None
        without a sample file."""
        path = single_test_list(self.args) or os.path.join(self.args.data_dir, SAMPLE_FILE)
        if not os.path.isfile(path):
            log(f"no sample file {path} (pass --test-list): test_predictions.txt not written")
            return None
        frames = read_sample_file(path)
        crops = os.path.join(self.args.data_dir, prepared.CROPS)
        if not os.path.isdir(crops):
            raise UserError(f"{crops} not found: prepare the test videos first (python main_prepare.py --videos "
                            f"VIDEOS --output-dir {self.args.data_dir})")
        folder_of = self._crop_folders(crops, {frame_key(frame)[0] for frame in frames})
        absent = sorted(video for video, folder in folder_of.items() if folder is None)
        if absent:
            warn(f"{len(absent)} videos of the sample file have no crop folder in {crops} (no face found, or not "
                 f"prepared): {', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}; their frames are filled "
                 f"with the most frequent predicted class")
        paths = np.array([f"{folder_of[video]}/{name.rpartition('/')[2]}" if folder_of[video] else ""
                          for video, name in ((frame_key(frame)[0], frame) for frame in frames)], dtype=object)
        present = np.zeros(len(frames), dtype=bool)
        listed = paths != ""
        present[listed] = list_available(crops, paths[listed])
        if not present.any():
            raise UserError(f"no frame of {path} has a face crop in {crops}; check --data-dir")
        log(f"CE test: {len(frames)} frames of {len(folder_of)} videos in {path}; {int(present.sum())} with a face "
            f"crop, {int((~present).sum())} without (filled after prediction)")
        return frames, paths, present

    def _crop_folders(self, crops: str, videos) -> dict:
        """Video -> its crop folder: the video's own name, else the track folder of the video with the most crops
        (``videos.json``), else None."""
        with os.scandir(crops) as entries:
            existing = {entry.name for entry in entries if entry.is_dir()}
        try:
            records = prepared.read_videos(self.args.data_dir)
        except ValueError as error:
            raise UserError(str(error)) from None
        folder_of = {}
        for video in videos:
            tracks = (records.get(video) or {}).get("tracks") or {}
            candidates = sorted((count, folder) for folder, count in tracks.items() if folder in existing)
            folder_of[video] = video if video in existing else (candidates[-1][1] if candidates else None)
        return folder_of

    def test_split(self):
        if self._test_list is None:
            return None
        _, paths, present = self._test_list
        return ImageListDataset(os.path.join(self.args.data_dir, prepared.CROPS), paths[present],
                                skip_bad=self.args.allow_missing)

    def random_targets(self, count: int, generator):
        return torch.randint(0, NUM_CLASSES, (count,), generator=generator)

    # ---- model
    def model_config(self) -> dict:
        return dict(super().model_config(), num_classes=NUM_CLASSES)

    def load_for_eval(self, path: str):
        """A checkpoint of this stage (7 compound logits), or an EMMA checkpoint of ``main_mtl.py`` (zero-shot)."""
        from utils.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        config = checkpoint.get("model_config") or {}
        if config.get("name") == "emma":
            log(f"{path} is an EMMA checkpoint: zero-shot compounds from its 8 expression probabilities (the "
                f"geometric mean of each compound's two basic expressions, renormalised)")
            return model_from_checkpoint(self, checkpoint, path, "emma")
        model = model_from_checkpoint(self, checkpoint, path, self.model_name)
        if model is None:
            raise UserError(f"{path} has no model config: give a checkpoint of main_ce.py, or of main_mtl.py for "
                            f"zero-shot compounds")
        if model.config.get("num_classes") != NUM_CLASSES:
            raise UserError(f"{path} holds a CoTEX model of {model.config.get('num_classes')} classes, not the "
                            f"{NUM_CLASSES} compounds (an LSD checkpoint?)")
        return model

    # ---- prediction
    def predict(self, model, inputs):
        if model.config.get("name") != "emma":
            return super().predict(model, inputs)
        probabilities = torch.softmax(model(inputs)[:, abaw.OUT_EXPR].float(), dim=1)
        compounds = TRACK.zero_shot(probabilities.cpu().numpy())
        return torch.from_numpy(compounds).to(inputs.device).clamp_min(PROBABILITY_FLOOR).log().float()

    # ---- metrics and files
    def val_metrics(self, outputs: np.ndarray) -> dict:
        return TRACK.metrics(outputs.argmax(1), self.val_folders.labels)

    def fill_test(self, outputs, seen) -> np.ndarray:
        """The outputs over the frames with a crop -> a class for every frame of the sample file."""
        frames, _, present = self._test_list
        classes = np.full(len(frames), -1, dtype=np.int64)
        rows = np.flatnonzero(present)
        seen = np.ones(len(rows), dtype=bool) if seen is None else np.asarray(seen, dtype=bool)
        classes[rows[seen]] = np.asarray(outputs)[seen].argmax(1)
        classes, counts = fill_classes(frames, classes)
        filled = counts["same_video"] + counts["most_frequent"]
        if filled:
            log(f"filled {filled} of {len(frames)} frames without a prediction: {counts['same_video']} from the "
                f"nearest predicted frame of their video, {counts['most_frequent']} with the most frequent class")
        return classes

    def write_outputs(self, out_dir, val_outputs, test_outputs, test_seen, checkpoint_path) -> dict:
        from engine import plots
        from engine.task import save_figures

        val = {}
        if val_outputs is not None:
            val = self.val_metrics(val_outputs)
            write_metrics(out_dir, "val", val)
            rows = [f"{image},{int(c)}" for image, c in zip(self.val_folders.images, val_outputs.argmax(1))]
            write_text_atomic(os.path.join(out_dir, "val_predictions.txt"), "\n".join(["image,compound"] + rows) + "\n")
            save_figures({"ce_confusion": plots.confusion_figure(
                val["confusion"], CLASSES, f"CE validation (macro F1 {val['f1_macro']:.3f})")}, out_dir)
        if test_outputs is not None:
            frames = self._test_list[0]
            classes = self.fill_test(test_outputs, test_seen)
            path = os.path.join(out_dir, TRACK.submission_file)
            TRACK.write_submission(path, frames, classes)
            log(f"wrote {path} ({len(frames)} rows)")
            test = self.test_metrics(classes, frames)
            if test is not None:
                write_metrics(out_dir, "test", test)
        return val

    def _test_labels(self) -> dict | None:
        path = os.path.join(self.args.data_dir, TEST_LABEL_FILE)
        return read_test_labels(path) if os.path.isfile(path) else None

    def test_metrics(self, classes: np.ndarray, frames) -> dict | None:
        labels = self._test_labels()
        if labels is None:
            return None
        if any(frame not in labels for frame in frames):
            warn(f"{os.path.join(self.args.data_dir, TEST_LABEL_FILE)} does not label every frame; test metrics "
                 f"skipped")
            return None
        targets = np.array([labels[frame] for frame in frames])
        scores = TRACK.metrics(classes, targets)
        # the best constant prediction: the most frequent test class for every frame
        constant = TRACK.metrics(np.full(len(targets), np.bincount(targets, minlength=NUM_CLASSES).argmax()), targets)
        return dict(scores, constant_f1_macro=constant["f1_macro"], constant_accuracy=constant["accuracy"])

    def demo_score(self, out_dir: str):
        path = os.path.join(out_dir, "test_metrics.json")
        if not os.path.isfile(path):
            return None
        with open(path) as handle:
            test = json.load(handle)
        return "synthetic test macro F1 (7 compounds)", test["f1_macro"], test["constant_f1_macro"]

