"""EMMA on the ABAW4 multi-task learning track: the :class:`engine.task.Task` of ``main_mtl.py``.

Outputs per frame ``[VA(2), EXPR(8), AU(12)]`` (``utils.abaw``). Besides the shared files, evaluation offers two
extras, both off by default so that a plain evaluation reports the model itself: per-AU thresholds tuned on
validation (``--tune-au-thresholds``) and temporal smoothing of VA and of expression probabilities, with the window
chosen on validation (``--smooth-va auto``). Both are saved next to the outputs (``au_thresholds.json``,
``val_metrics.json``); a training run also writes them into its own best checkpoint (:meth:`MTLTask.inference_settings`:
``au_thresholds`` and ``smoothing``), which ``--eval`` and ``predict.py`` then apply. A checkpoint given to ``--eval``
is an input and is never rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import cached_property

import numpy as np
import torch

from datasets import mtl
from datasets.images import ImageListDataset
from datasets.tracks import affwild2 as tracks
from datasets.tracks import get_track
from datasets.transforms import mtl_train_augment
from engine import plots
from engine.cli import non_negative_float, non_negative_int, positive_int, smoothing_window
from engine.task import (
    MODEL_FLAGS,
    ImageTask,
    Selection,
    fill_unpredicted,
    log_probabilities,
    logits_of,
    model_from_checkpoint,
    require_present,
    single_test_list,
    softmax,
    stem_config,
)
from utils import abaw, metrics
from utils.errors import UserError
from utils.losses import MTLLoss
from utils.monitor import log, warn, write_json
from utils.optim import vit_param_groups

AU_THRESHOLDS_FILE = "au_thresholds.json"
# The validation score of each per-video task (``--task``), and the keys of val_metrics.json that belong to it.
TASK_METRIC = {"va": "va", "expr": "f1_expr", "au": "f1_au"}
TASK_KEYS = {"va": ("va", "ccc_v", "ccc_a"), "expr": ("f1_expr", "acc_expr", "f1_per_expr"),
             "au": ("f1_au", "f1_per_au")}


class MTLTask(ImageTask):
    """EMMA: an MAE ViT for expressions and AUs, a frozen DAN, and a VA head over both."""

    name = "mtl"
    prog = "main_mtl.py"
    model_name = "emma"
    # The reference recipe (ABAW4.md).
    defaults = dict(output_dir="runs/emma", epochs=30, warmup_epochs=5, batch_size=100, accum_iter=4, blr=5e-4,
                    min_lr=1e-6, layer_decay=0.65, weight_decay=0.05, drop_path=0.1, clip_grad=0.05)
    # EMMA without its DAN branch: there is no AffectNet DAN for synthetic faces, and a random frozen DAN's scores
    # would be large noise in the VA head's input. One residual block per stem stage: a quarter less time per step
    # than ResNet-18's two, for test P_MTL 0.05 lower on average over three seeds (docs/results.md).
    demo_run = dict(img_size=48, warmup_epochs=0.4, output_dir="runs/demo_mtl", va_lr=1e-3, dan="none",
                    au_pos_weight="data", tune_au_thresholds=True, stem_blocks=[1])
    demo_data = dict(synthetic="mtl", full=dict(videos=240, frames=100, size=64, seed=0),
                     small=dict(videos=6, frames=12, size=32, seed=0))
    batch_size_help = "per-process batch size (default: %(default)s)"
    output_width = abaw.OUTPUT_WIDTH
    selection = Selection({"mtl": "p_mtl", "va": "va", "expr": "f1_expr", "au": "f1_au"})
    model_flags = dict(MODEL_FLAGS, dan="dan")
    saved_model_defaults = {"dan": "frozen"}  # configs record the DAN setting only when it is not the reference's

    def __init__(self, args):
        self.args = args
        self.au_thresholds = [abaw.DEFAULT_AU_THRESHOLD] * abaw.NUM_AU
        # {"va": window, "expr": window} (0: off): a checkpoint's (load_for_eval), or what post-processing chose
        self.smoothing: dict | None = None
        self._test = None  # (listed images, rows filled from stand-in images), once the test split is read
        self._test_frames = None  # per-video tasks: the test lists resolved against the images
        # ("mtl",): the ABAW4 MTL files; otherwise the per-video tracks of these tasks, joined per frame.
        self.tasks = tuple(getattr(args, "task", ("mtl",)))
        self.per_video = self.tasks != ("mtl",)
        if self.per_video:
            scores = {task: TASK_METRIC[task] for task in self.tasks}
            self.selection = Selection({"score": "score", **scores} if len(self.tasks) > 1 else scores)

    # ---- command line
    @staticmethod
    def add_flags(groups) -> None:
        groups["model"].add_argument(
            "--dan-ckpt", "--exp_pretrained_model_paths", metavar="PATH",
            help="AffectNet-pretrained DAN checkpoint ({'model_state_dict': ...}); absent: random DAN (warning)")
        groups["model"].add_argument(
            "--dan", choices=["frozen", "none"], default="frozen",
            help="frozen: the reference's frozen DAN feeds its expression scores to the VA head; none: EMMA without "
                 "the DAN branch, for data without an expression-pretrained DAN (the demo) (default: %(default)s)")
        groups["optim"].add_argument(
            "--va-lr", "--va_lr", type=non_negative_float, default=1e-4,
            help="constant learning rate of the VA head, as the reference's separate Adam (default: %(default)s)")
        add_task_flags(groups)
        groups["data"].add_argument(
            "--folds", type=positive_int, default=1, metavar="K",
            help="with --fold: split the training videos into K folds (by a hash of the video name) and train on all "
                 "but one, for out-of-fold features of the temporal stage (default: %(default)s, all videos)")
        groups["data"].add_argument(
            "--fold", type=non_negative_int, default=None, metavar="k",
            help="the fold (0 .. K-1) left out of training with --folds K")
        add_mtl_output_flags(groups)

    @staticmethod
    def derived_defaults(args) -> dict:
        return {}

    @staticmethod
    def check_flags(args, error) -> None:
        if (args.folds > 1) != (args.fold is not None) or (args.fold is not None and args.fold >= args.folds):
            error(f"--folds {args.folds} needs --fold k with 0 <= k < {args.folds} (and --fold needs --folds > 1)")
        check_task_flags(args, error)
        check_mtl_output_flags(args, error)

    # ---- data
    def image_root(self) -> str:
        return os.path.join(self.args.data_dir, mtl.IMAGE_DIR)

    @cached_property
    def challenge_dirs(self) -> dict[str, str]:
        """Per-video tasks: each task's challenge folder."""
        try:
            return tracks.find_challenge_dirs([self.args.annotation_dir or self.args.data_dir], self.tasks)
        except UserError as err:
            if self.args.demo and "data_dir" not in self.args.typed:
                raise UserError(f"{err}. The demo's data set has the MTL layout; for --task {','.join(self.tasks)} "
                                f"write the per-video one with python -m datasets.synthetic tracks "
                                f"data/synth_tracks --videos 240 --frames 100 --size 64 and pass --data-dir "
                                f"data/synth_tracks") from None
            raise

    def _load_split(self, split: str) -> mtl.Annotations:
        if self.per_video:
            return tracks.load_split(self.challenge_dirs, self.image_root(), split, log=log)
        return mtl.load_split(self.args.data_dir, mtl.TRAIN_FILE if split == "train" else mtl.VAL_FILE, log=log)

    @cached_property
    def train_annotations(self) -> mtl.Annotations:
        if self.per_video:
            shared = tracks.shared_videos(self.challenge_dirs)
            if shared:
                warn(f"{len(shared)} videos are in one task's Train_Set and another's Validation_Set (e.g. "
                     f"{', '.join(shared[:3])}): the model trains on their frames, so those validation scores are "
                     f"optimistic")
        annotations = self._load_split("train")
        folds, fold = getattr(self.args, "folds", 1), getattr(self.args, "fold", None)
        if fold is None:
            return annotations
        kept = annotations.subset(mtl.video_folds(annotations.images, folds) != fold)
        videos = len(set(mtl.video_and_frame(annotations.images)[0]))
        kept_videos = len(set(mtl.video_and_frame(kept.images)[0]))
        if kept_videos in (0, videos):
            raise UserError(f"--folds {folds} --fold {fold}: fold {fold} holds {videos - kept_videos} of the {videos} "
                            f"training videos; use fewer folds")
        log(f"fold {fold} of {folds} left out: training on {kept_videos} of {videos} videos ({len(kept)} frames)")
        return kept

    @cached_property
    def val_annotations(self) -> mtl.Annotations:
        return self._load_split("val")

    @cached_property
    def loss_fn(self) -> MTLLoss:
        if self.args.au_pos_weight != "data":
            return MTLLoss()
        weights = data_pos_weight(self.train_annotations.targets[:, abaw.LABEL_AU])
        log("AU pos_weight from the training annotations: " + " ".join(f"{w:.2f}" for w in weights))
        return MTLLoss(pos_weight=weights)

    def train_split(self):
        annotations = self.train_annotations
        self.loss_fn  # noqa: B018 - built now, so that its message comes with the data's
        return mtl.MTLDataset(self.image_root(), annotations, skip_bad=True), annotations.images

    def val_split(self):
        return mtl.MTLDataset(self.image_root(), self.val_annotations, skip_bad=self.args.allow_missing)

    def check_inputs(self) -> None:
        """Before the first training step: the test lists, read otherwise only after training, are read now."""
        self._test_list  # noqa: B018 - read now, so that a bad test list stops the run before it trains

    def test_split(self):
        """The test list's frames; absent images are an error, or stand-ins (the nearest frame of the same video)
        with ``--allow-missing``. Per-video tasks: the frames of every task's test list (below)."""
        if self._test_list is None:
            return None
        images, filled, self._test_frames, load_paths = self._test_list
        self._test = (images, filled)
        return ImageListDataset(self.image_root(), load_paths, skip_bad=self.args.allow_missing)

    @cached_property
    def _test_list(self) -> tuple | None:
        """(listed images, rows filled from stand-in images, per-video tasks' frames or None, the images to load),
        or None without a test list."""
        if self.per_video:
            return self._per_video_test_list()
        path = single_test_list(self.args) or os.path.join(self.args.data_dir, mtl.TEST_LIST_FILE)
        if not os.path.isfile(path):
            log("no test list found (pass --test-list): test_predictions.txt not written")
            return None
        images = mtl.read_test_list(path)
        present = mtl.list_available(self.image_root(), images)
        load_paths, filled = images.copy(), []
        if not present.all():
            require_present(images, present, self.image_root(), self.args.allow_missing)
            replacement = mtl.nearest_frames(self.image_root(), images, ~present)
            load_paths = np.array([replacement.get(image, image) for image in images], dtype=object)
            filled = [int(i) for i in np.flatnonzero(~present)]
        return images, filled, None, load_paths

    def _per_video_test_list(self) -> tuple | None:
        """Every frame of each task's test list gets a row: a frame without an image takes the prediction of the
        nearest frame of its video that has one (never of another video)."""
        args = self.args
        roots = list(dict.fromkeys(root for root in (args.data_dir, args.annotation_dir) if root))
        items = args.test_list or tracks.find_test_lists(roots, self.tasks)
        if not items:
            log("no test list found (pass --test-list [TASK=]FILE ...): no test predictions written")
            return None
        lists = [tracks.read_test_list(item, self.image_root(), self.tasks) for item in items]
        frames = tracks.test_frames(lists, self.image_root())
        for task, test_list in frames.lists.items():
            log(f"{task} test list {test_list.source}: {len(test_list.images)} frames"
                + (f"; {frames.filled[task]} have no image and take the prediction of the nearest frame of their "
                   f"video with one" if frames.filled[task] else ""))
        without = [task for task in self.tasks if task not in frames.lists]
        if without:
            warn(f"no test list for {', '.join(without)} (--task {','.join(self.tasks)}, test lists for "
                 f"{', '.join(frames.lists)}): no test predictions for {', '.join(without)}")
        return frames.images, [], frames, frames.images

    def train_augment(self, img_size: int):
        return mtl_train_augment(img_size)

    def random_targets(self, count: int, generator):
        va = torch.rand(count, 2, generator=generator) * 2 - 1
        expr = torch.randint(0, abaw.NUM_EXPR, (count, 1), generator=generator).float()
        aus = torch.randint(0, 2, (count, abaw.NUM_AU), generator=generator).float()
        return torch.cat([va, expr, aus], dim=1)

    # ---- model
    def model_config(self) -> dict:
        a = self.args
        config = dict(name="emma", vit_size=a.vit, img_size=a.img_size, drop_path=a.drop_path,
                      global_pool=a.global_pool, patch_size=a.patch_size, patch_embed=a.patch_embed)
        if a.dan != "frozen":  # configs record the DAN setting only when it is not the reference's
            config["dan"] = a.dan
        return dict(config, **stem_config(a))

    def load_pretrained(self, model) -> None:
        from models.dan import load_dan_weights
        from models.vit import load_mae_weights

        if self.args.mae_ckpt:
            if len(self.args.mae_ckpt) != 1:
                raise UserError("EMMA has one ViT: give one --mae-ckpt")
            load_mae_weights(model.vit, self.args.mae_ckpt[0], log=log)
        else:
            warn("no --mae-ckpt: the ViT starts from random weights; expect far lower scores than the reference")
        if model.cnn is None:
            if self.args.dan_ckpt:
                raise UserError("--dan-ckpt was given with --dan none (EMMA without its DAN); drop one of them")
            log("--dan none: EMMA without the DAN branch; the VA head reads the ViT's expression and AU outputs")
        elif self.args.dan_ckpt:
            load_dan_weights(model.cnn, self.args.dan_ckpt, log=log)
        else:
            warn("no --dan-ckpt: the frozen DAN has random weights, so its expression scores carry no information")

    def load_for_eval(self, path: str):
        """This project's checkpoints rebuild their model (and bring their AU thresholds); the authors' released
        EMMA files are read into the model the flags describe."""
        from models import build_model
        from models.emma import load_emma_checkpoint
        from utils.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(self, checkpoint, path, self.model_name)
        if model is None:
            model = build_model(self.model_config())
            load_emma_checkpoint(model, path, log=log)  # by path, so that errors name the file
            checkpoint = {}  # a released file brings no settings of ours
        self.use_checkpoint_settings(checkpoint, path)
        return model

    def use_checkpoint_settings(self, checkpoint: dict, path: str) -> None:
        """The inference settings of a checkpoint being loaded for evaluation: its AU thresholds (``--au-thresholds
        FILE`` wins) and the smoothing windows its training run chose (typed ``--smooth-va``/``--smooth-expr`` win,
        in :meth:`postprocess`)."""
        if checkpoint.get("au_thresholds"):
            self.au_thresholds = [float(value) for value in checkpoint["au_thresholds"]]
        self.smoothing = read_smoothing(checkpoint.get("smoothing"), path)
        if self.args.au_thresholds:
            self.au_thresholds = read_au_thresholds(self.args.au_thresholds)
            log(f"AU thresholds from {self.args.au_thresholds}: " + " ".join(f"{t:.2f}" for t in self.au_thresholds))

    def param_groups(self, model) -> list[dict]:
        groups = vit_param_groups(model.vit, self.args.weight_decay, self.args.layer_decay)
        # The reference trained the VA head with its own Adam at a constant lr and no weight decay.
        groups.append({"params": list(model.va_head.parameters()), "weight_decay": 0.0, "lr_scale": 1.0,
                       "fixed_lr": self.args.va_lr})
        return groups

    def scales_lr(self) -> bool:
        return True

    # ---- training and prediction
    def loss(self, model, batch):
        inputs, targets = batch
        return self.loss_fn(model(inputs), targets)

    def predict(self, model, inputs):
        return model(inputs)

    # ---- metrics and files
    def decode(self, outputs: np.ndarray, thresholds=None):
        """Output rows -> (VA, expression index, AU 0/1), rounded as written to the prediction files, so that the
        reported metrics are those of the files."""
        va = np.round(np.clip(outputs[:, abaw.OUT_VA].astype(np.float64), -1.0, 1.0), 6)
        expr = outputs[:, abaw.OUT_EXPR].argmax(1)
        aus = metrics.au_decisions(abaw.au_probabilities(outputs),
                                   self.au_thresholds if thresholds is None else thresholds)
        return va, expr, aus

    def val_metrics(self, outputs: np.ndarray) -> dict:
        return self._scores(self.decode(outputs), self.val_annotations.targets)

    def _scores(self, decoded, targets) -> dict:
        """The scores of decoded outputs; per-video tasks: those of the tasks run, and their sum as ``score``."""
        result = metrics.mtl_metrics(*decoded, targets)
        result["va"] = (result["ccc_v"] + result["ccc_a"]) / 2
        if not self.per_video:
            return result
        scores = {key: result[key] for task in self.tasks for key in TASK_KEYS[task]}
        if len(self.tasks) > 1:
            scores = {"score": sum(result[TASK_METRIC[task]] for task in self.tasks), **scores}
        return scores

    def checkpoint_extras(self) -> dict:
        extras = {"au_thresholds": list(self.au_thresholds)}
        if self.smoothing is not None:  # known once a checkpoint brought it or post-processing chose it
            extras["smoothing"] = dict(self.smoothing)
        return extras

    def inference_settings(self) -> dict:
        """After training's evaluation: the AU thresholds (tuned on validation with ``--tune-au-thresholds``) and
        the smoothing windows (0: off) that wrote its files, for its best checkpoint."""
        return {"au_thresholds": [float(value) for value in self.au_thresholds],
                "smoothing": {what: int(window) for what, window in (self.smoothing or NO_SMOOTHING).items()}}

    def smooth_outputs(self, outputs: np.ndarray, videos, frames) -> np.ndarray:
        """Output rows with VA and the expression probabilities averaged over the frames of their own video (or
        track) with the windows of :attr:`smoothing` (``utils.metrics.smooth_by_video``); AUs unchanged."""
        windows = self.smoothing or NO_SMOOTHING
        if not any(windows.get(what, 0) > 1 for what in SMOOTHED_COLUMNS) or len(outputs) == 0:
            return outputs
        outputs = outputs.copy()
        for what, columns in SMOOTHED_COLUMNS.items():
            if windows.get(what, 0) > 1:
                outputs[:, columns] = smooth(outputs[:, columns], videos, frames, windows[what], what)
        return outputs

    def ensemble_space(self, outputs):
        """Members average VA as each would submit it (clipped to [-1, 1]: a member's out-of-range raw value counts
        as the bound it writes, not as a weight that drags the mean), and the probabilities of the expressions
        (softmax) and of the AUs."""
        values = np.asarray(outputs, dtype=np.float64).copy()
        values[:, abaw.OUT_VA] = np.clip(values[:, abaw.OUT_VA], -1.0, 1.0)
        values[:, abaw.OUT_EXPR] = softmax(values[:, abaw.OUT_EXPR])
        values[:, abaw.OUT_AU] = abaw.au_probabilities(outputs)
        return values

    def output_space(self, values):
        """Back to output rows: log-probabilities of the expressions, logits of the AUs."""
        outputs = values.copy()
        outputs[:, abaw.OUT_EXPR] = log_probabilities(values[:, abaw.OUT_EXPR])
        outputs[:, abaw.OUT_AU] = logits_of(values[:, abaw.OUT_AU])
        return outputs

    def use_ensemble_settings(self, first_path, first_extras) -> None:
        """An ensemble's AU thresholds: those of --au-thresholds FILE, else the ones tuned on its validation outputs
        (--tune-au-thresholds), else the first member's; its smoothing windows: the first member's (typed flags
        win)."""
        self.smoothing = first_extras.get("smoothing")
        if self.args.au_thresholds:
            source = self.args.au_thresholds  # every load_for_eval applied them
        elif self.args.tune_au_thresholds:
            log("AU thresholds of the ensemble: tuned on its validation outputs (--tune-au-thresholds)")
            return
        else:
            self.au_thresholds = list(first_extras["au_thresholds"])
            source = f"the first member's ({first_path})"
        log(f"AU thresholds of the ensemble: {source}: " + " ".join(f"{t:.2f}" for t in self.au_thresholds))

    def val_names(self):
        return self.val_annotations.images

    def test_names(self):
        return self._test[0]

    def write_predictions(self, path: str, names, outputs: np.ndarray) -> None:
        get_track("mtl").write_submission(path, names, self.decode(outputs))

    def write_split_predictions(self, out_dir: str, split: str, names, outputs) -> list[tuple[str, int]]:
        """Per-video tasks: one file per task, ``<split>_predictions_<task>.txt``: validation over the frames that
        task labels, test over the task's list in list order."""
        if not self.per_video:
            return super().write_split_predictions(out_dir, split, names, outputs)
        decoded = dict(zip(("va", "expr", "au"), self.decode(outputs)))
        written = []
        for task in self.tasks:
            if split == "val":
                rows = np.flatnonzero(tracks.has_label(task, self.val_annotations.targets))
                images = np.asarray(names, dtype=object)[rows]
            elif task in self._test_frames.lists:
                rows, images = self._test_frames.rows[task], self._test_frames.lists[task].images
            else:
                continue
            path = os.path.join(out_dir, f"{split}_predictions_{task}.txt")
            get_track(task).write_submission(path, images, decoded[task][rows])
            written.append((path, len(images)))
        return written

    def figures(self, val_outputs) -> dict:
        return plots.mtl_figures(self, val_outputs, ("va", "expr", "au") if not self.per_video else self.tasks)

    def fill_test(self, outputs, seen):
        """Unreadable test frames take the output of the nearest predicted frame of the same video (any predicted
        frame where the video has none)."""
        images, filled = self._test
        videos, frames = mtl.video_and_frame(images)

        def nearest(row, predicted):
            same = predicted[videos[predicted] == videos[row]]
            pool = same if len(same) else predicted
            return outputs[pool[np.argmin(np.abs(frames[pool] - frames[row]))]]

        return fill_unpredicted(outputs, seen, images, nearest, filled)

    def test_metrics(self, outputs: np.ndarray, images) -> dict | None:
        if self.per_video:
            return self._per_video_test_metrics(outputs)
        targets = self.test_targets(images)
        return None if targets is None else metrics.mtl_metrics(*self.decode(outputs), targets)

    def _per_video_test_metrics(self, outputs: np.ndarray, thresholds=None) -> dict | None:
        """Scores of each task's test list (every listed frame, filled ones included) where ``Test_Set`` label files
        exist (the synthetic sets have them); None otherwise. ``thresholds``: AU thresholds other than the task's."""
        joined = tracks.join_split(self.challenge_dirs, "test")
        frames = self._test_frames
        if joined is None or not set(frames.lists) <= set(joined.tasks):
            return None
        row_of = {name: row for row, name in enumerate(joined.names())}
        decoded = self.decode(outputs, thresholds)
        result = {}
        for task in self.tasks:
            if task not in frames.lists:
                continue
            test_list, rows = frames.lists[task], frames.rows[task]
            targets = np.full((len(rows), abaw.LABEL_COLUMNS), -1.0, np.float32)
            targets[:, abaw.LABEL_VA] = abaw.VA_MISSING
            found = np.array([row_of.get(name, -1) for name in test_list.images])
            targets[found >= 0, tracks.LABELS[task]] = joined.targets[found[found >= 0], tracks.LABELS[task]]
            scores = self._scores(tuple(part[rows] for part in decoded), targets)
            result.update({key: scores[key] for key in TASK_KEYS[task]})
        if len(self.tasks) > 1 and len(frames.lists) == len(self.tasks):
            result = {"score": sum(result[TASK_METRIC[task]] for task in self.tasks), **result}
        return result

    def test_targets(self, images) -> np.ndarray | None:
        """Label rows of the test images where the data set has test labels (the synthetic sets do), else None."""
        path = os.path.join(self.args.data_dir, mtl.TEST_LABEL_FILE)
        if not os.path.isfile(path):
            return None
        labels = mtl.read_annotations(path)
        by_image = dict(zip(labels.images, labels.targets))
        missing = [image for image in images if image not in by_image]
        if missing:
            warn(f"{path} has no labels for {len(missing)} test images; test metrics skipped")
            return None
        return np.stack([by_image[image] for image in images])

    def postprocess(self, out_dir, val_outputs, test_outputs, test_images, checkpoint_path):
        """AU thresholds tuned on validation, and temporal smoothing with windows chosen on validation."""
        args = self.args
        report = {"au_thresholds": list(self.au_thresholds)}
        labels = self.val_annotations.targets
        runs = ("va", "expr", "au") if not self.per_video else self.tasks
        if args.tune_au_thresholds and "au" not in runs:
            log("--tune-au-thresholds: no AU task in --task; nothing to tune")
        elif args.tune_au_thresholds:
            thresholds, before, after = metrics.tune_au_thresholds(abaw.au_probabilities(val_outputs),
                                                                   labels[:, abaw.LABEL_AU])
            self.au_thresholds = thresholds
            report.update(au_thresholds=thresholds, f1_au_before_tuning=before, f1_au_after_tuning=after)
            path = os.path.join(out_dir, AU_THRESHOLDS_FILE)
            write_json(path, {"au_thresholds": thresholds, "f1_au_before_tuning": before, "f1_au_after_tuning": after,
                              "checkpoint": checkpoint_path})
            log(f"AU thresholds tuned on validation: F1_AU {before:.4f} -> {after:.4f}; saved in {path} "
                f"(--eval --au-thresholds {path} applies them again)")
        videos, frames = mtl.video_and_frame(self.val_annotations.images)
        stored = self.smoothing or {}  # a checkpoint's windows, used where the flag is not typed
        windows = {}
        for what, columns in SMOOTHED_COLUMNS.items():
            flag, typed = getattr(args, f"smooth_{what}"), f"smooth_{what}" in getattr(args, "typed", ())
            if not typed and stored.get(what):
                flag = stored[what]
                log(f"--smooth-{what}: window {flag}, the checkpoint's (--smooth-{what} 0 turns it off)")
            windows[what] = 0
            if flag == 0:
                continue
            if what not in runs:
                log(f"--smooth-{what}: no {what} task in --task; not smoothed")
                continue
            if flag == "auto":
                if what == "va":
                    window, scores = metrics.choose_smoothing(val_outputs[:, columns], labels[:, abaw.LABEL_VA],
                                                              videos, frames)
                else:
                    window, scores = _choose_expr_window(val_outputs, labels, videos, frames)
                log(f"--smooth-{what} auto: window {window} chosen on validation "
                    f"({', '.join(f'{w}: {s:.4f}' for w, s in scores.items())})")
            else:
                window = int(flag)
            report[f"smooth_{what}_window"] = windows[what] = window
        self.smoothing = windows
        val_outputs = self.smooth_outputs(val_outputs, videos, frames)
        if test_outputs is not None:
            test_outputs = self.smooth_outputs(test_outputs, *mtl.video_and_frame(test_images))
        return val_outputs, test_outputs, report

    def demo_score(self, out_dir: str):
        path = os.path.join(out_dir, "test_metrics.json")
        if not os.path.isfile(path):
            return None
        with open(path) as handle:
            test = json.load(handle)
        if self.per_video:
            key = self.selection.main if len(self.tasks) == 1 else "score"
            joined = tracks.join_split(self.challenge_dirs, "test")
            if key not in test or joined is None:
                return None
            name = "score (" + " + ".join(TASK_METRIC[task] for task in self.tasks) + ")" if key == "score" else key
            return f"synthetic test {name}", test[key], self.constant_baseline(joined.targets)[key]
        labels = mtl.read_annotations(os.path.join(self.args.data_dir, mtl.TEST_LABEL_FILE)).targets
        return "synthetic test P_MTL", test["p_mtl"], self.constant_baseline(labels)["p_mtl"]

    def constant_baseline(self, targets: np.ndarray) -> dict:
        """Scores of constant predictions on the same frames: training means for VA, the most frequent expression,
        every AU present (the constant with the highest F1 per AU, 2p/(1+p); predicting an AU absent scores 0)."""
        train = (self.train_annotations if self.per_video
                 else mtl.read_annotations(os.path.join(self.args.data_dir, mtl.TRAIN_FILE))).targets
        va_mean = [train[train[:, i] != abaw.VA_MISSING, i].mean() for i in range(2)]
        expr_labels = train[:, abaw.LABEL_EXPR]
        expr_mode = np.bincount(expr_labels[expr_labels >= 0].astype(int), minlength=abaw.NUM_EXPR).argmax()
        n = len(targets)
        return self._scores((np.tile(va_mean, (n, 1)), np.full(n, expr_mode), np.ones((n, abaw.NUM_AU), dtype=int)),
                            targets)



def add_task_flags(groups) -> None:
    """Which annotation files give the labels: the ABAW4 MTL files or the per-video single-task tracks (shared by
    ``main_temporal.py``)."""
    groups["data"].add_argument(
        "--task", type=task_list, default=("mtl",), metavar="{mtl,va,expr,au}[,...]",
        help="mtl: the ABAW4 MTL files; va, expr, au, or a comma list such as va,expr,au: the per-video annotation "
             "files of the single-task tracks (ABAW2-8), joined per frame so that one model trains on all of them "
             "(default: mtl)")
    groups["data"].add_argument(
        "--annotation-dir", metavar="DIR",
        help="with per-video tasks: the folder holding VA_Estimation_Challenge, EXPR_Classification_Challenge (or "
             "EXPR_Recognition_Challenge) and AU_Detection_Challenge, at any depth (default: --data-dir)")


def check_task_flags(args, error) -> None:
    if tuple(args.task) == ("mtl",):
        if args.annotation_dir:
            error("--annotation-dir applies to the per-video tasks (--task va, expr, au or a list of them)")
        if args.test_list and len(args.test_list) > 1:
            error("--task mtl has one test list; several --test-list files are for the per-video tasks")
        if args.test_list and not os.path.isfile(args.test_list[0]):
            error(f"--test-list {args.test_list[0]}: no such file")
        return
    if args.annotation_dir and not os.path.isdir(args.annotation_dir):
        error(f"--annotation-dir {args.annotation_dir}: no such folder")
    try:
        listed = [tracks.test_list_task(item, args.task)[0] for item in args.test_list or ()]
    except UserError as err:
        error(str(err))
    if len(set(listed)) != len(listed):
        error("--test-list: give one test list per task")


def add_mtl_output_flags(groups) -> None:
    """The flags of what the MTL outputs are trained with and turned into files (shared by ``main_temporal.py``)."""
    groups["optim"].add_argument(
        "--au-pos-weight", choices=["reference", "data"], default="reference",
        help="AU BCE pos_weight: the reference's values (tuned to s-Aff-Wild2) or negatives/positives of the "
             "training annotations (default: %(default)s)")
    evaluation = groups["evaluation"]
    evaluation.add_argument(
        "--tune-au-thresholds", action="store_true",
        help="pick a per-AU threshold on validation and use it for the test file; the thresholds are saved in "
             f"<output-dir>/{AU_THRESHOLDS_FILE}, and a training run also stores them in its best checkpoint (a "
             "checkpoint given to --eval is never modified)")
    evaluation.add_argument(
        "--au-thresholds", metavar="FILE",
        help=f"with --eval: per-AU thresholds from an earlier run's {AU_THRESHOLDS_FILE} (or val_metrics.json), "
             "instead of the checkpoint's (default: the checkpoint's, else 0.5)")
    evaluation.add_argument(
        "--smooth-va", type=smoothing_window, default=0, metavar="{auto,0,W}",
        help="average VA over W neighbouring frames of a video; auto picks W on validation; a training run stores "
             "the window in its best checkpoint (default: off; with --eval, the checkpoint's)")
    evaluation.add_argument("--smooth-expr", type=smoothing_window, default=0, metavar="{auto,0,W}",
                            help="the same for expression probabilities (default: off; with --eval, the "
                                 "checkpoint's)")


def check_mtl_output_flags(args, error) -> None:
    if args.au_thresholds and not args.eval:
        error("--au-thresholds applies to --eval (a training run writes its files with the thresholds of "
              "--tune-au-thresholds, or 0.5)")
    if args.au_thresholds and not os.path.isfile(args.au_thresholds):
        error(f"--au-thresholds {args.au_thresholds}: no such file")


def task_list(text: str) -> tuple[str, ...]:
    """``--task``: mtl, or a comma list of va, expr, au."""
    try:
        return tracks.parse_tasks(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def read_au_thresholds(path: str) -> list[float]:
    """Per-AU thresholds from a JSON file with an ``au_thresholds`` list of 12 (``au_thresholds.json`` or
    ``val_metrics.json`` of an earlier run)."""
    try:
        with open(path) as handle:
            thresholds = json.load(handle)["au_thresholds"]
        thresholds = [float(value) for value in thresholds]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--au-thresholds {path}: not a JSON file with an au_thresholds list ({err})") from None
    if len(thresholds) != abaw.NUM_AU or not all(0.0 <= value <= 1.0 for value in thresholds):
        raise UserError(f"--au-thresholds {path}: expected {abaw.NUM_AU} thresholds in [0, 1], got {thresholds}")
    return thresholds


def data_pos_weight(aus: np.ndarray) -> list[float]:
    """Negatives / positives per AU over the labelled entries (the rule behind BCE pos_weight), at least 1e-3."""
    weights = []
    for column in aus.T:
        labelled = column[column != abaw.AU_MISSING]
        positives = max(float((labelled == 1).sum()), 1.0)
        weights.append(max(float((labelled == 0).sum()) / positives, 1e-3))
    return weights


# The output columns that smoothing averages over neighbouring frames, by the name of their window.
SMOOTHED_COLUMNS = {"va": abaw.OUT_VA, "expr": abaw.OUT_EXPR}
NO_SMOOTHING = {"va": 0, "expr": 0}


def read_smoothing(stored, path: str) -> dict | None:
    """A checkpoint's ``smoothing`` entry ({"va": window, "expr": window}), or None where it has none."""
    if stored is None:
        return None
    try:
        windows = {what: int(stored.get(what, 0)) for what in SMOOTHED_COLUMNS}
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"{path}: its smoothing entry {stored!r} is not {{'va': window, 'expr': window}}") from None
    if any(window < 0 or (window > 1 and window % 2 == 0) for window in windows.values()):
        raise UserError(f"{path}: its smoothing windows {windows} must be 0 (off) or odd")
    return windows


def smooth(values, videos, frames, window, what):
    """VA (``what`` "va") or expression log-probabilities ("expr") averaged over ``window`` frame numbers of their
    own video (``utils.metrics.smooth_by_video``); the expressions' probabilities are averaged, and returned as
    log-probabilities so that argmax and softmax read them as before."""
    if what == "expr":  # average probabilities, then back to log space so that argmax still applies
        shifted = values - values.max(1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
        return np.log(np.maximum(metrics.smooth_by_video(probs, videos, frames, window), 1e-12))
    return metrics.smooth_by_video(values, videos, frames, window)


def _choose_expr_window(outputs, labels, videos, frames, windows=abaw.SMOOTHING_WINDOWS):
    """The expression smoothing window with the best F1_EXPR on validation (0 unless one is strictly better)."""
    known = labels[:, abaw.LABEL_EXPR] != abaw.EXPR_MISSING
    logits = outputs[:, abaw.OUT_EXPR]
    scores = {}
    for window in windows:
        smoothed = smooth(logits, videos, frames, window, "expr") if window > 1 else logits
        no_aus = np.zeros((len(outputs), abaw.NUM_AU), int)
        scores[window] = metrics.mtl_metrics(outputs[:, abaw.OUT_VA], smoothed.argmax(1), no_aus,
                                             labels)["f1_expr"] if known.any() else 0.0
    best = max(scores, key=lambda w: (scores[w] > scores[0], scores[w], -w))
    return (best if scores[best] > scores[0] else 0), scores
