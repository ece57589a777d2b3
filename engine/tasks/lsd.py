"""Masked CoTEX on the ABAW4 learning-from-synthetic-data track: the :class:`engine.task.Task` of ``main_lsd.py``.

K ViTs, each dropping a random share of its patches in training, learn the 6 classes from synthetic images with a
cross-entropy and a Jensen-Shannon agreement term; a prediction is the class of the summed logits.
"""

from __future__ import annotations

import json
import os
from functools import cached_property

import numpy as np
import torch

from datasets import lsd, mtl
from datasets.images import ImageListDataset
from datasets.tracks import get_track
from datasets.transforms import lsd_train_augment
from engine import plots
from engine.cli import non_negative_float, positive_int, ratio
from engine.task import (
    MODEL_FLAGS,
    ImageTask,
    Selection,
    fill_unpredicted,
    log_probabilities,
    model_from_checkpoint,
    require_present,
    single_test_list,
    softmax,
    stem_config,
)
from utils import abaw, metrics
from utils.errors import UserError
from utils.losses import CoTEXLoss
from utils.monitor import log, warn
from utils.optim import vit_param_groups


class LSDTask(ImageTask):
    """Masked CoTEX: K co-trained ViTs, summed logits over the 6 classes."""

    name = "lsd"
    prog = "main_lsd.py"
    model_name = "cotex"
    # The reference recipe (ABAW4.md); the batch follows the mask ratio (derived_defaults).
    defaults = dict(output_dir="runs/cotex", epochs=6, warmup_epochs=5, batch_size=None, accum_iter=4, blr=5e-4,
                    min_lr=1e-6, layer_decay=0.65, weight_decay=0.05, drop_path=0.1, clip_grad=0.05)
    # The demo's hybrid stem re-estimates its BatchNorm statistics on the real-style validation images (--bn-adapt).
    # Its first stage has one residual block, its second ResNet-18's two: one block in both scored lower on the
    # real-style images (docs/results.md).
    demo_run = dict(img_size=48, blr=1e-3, warmup_epochs=0.3, output_dir="runs/demo_cotex", mask_ratio=0.5,
                    bn_adapt=True, stem_blocks=[1, 2])
    demo_data = dict(synthetic="lsd", full=dict(per_class=1500, size=64, seed=0),
                     small=dict(per_class=8, size=32, seed=0))
    batch_size_help = "per-process batch size (default: 64 * int(1 / (1 - mask ratio)), at most 4096, as the reference)"
    output_width = abaw.NUM_LSD_CLASSES
    selection = Selection({"f1": "f1"})
    model_flags = dict(MODEL_FLAGS, vit_num="vit_num")

    def __init__(self, args):
        self.args = args
        self.loss_fn = CoTEXLoss(lambda_ce=args.lambda_ce, lambda_js=args.lambda_js)
        self._test_images = None

    # ---- command line
    @staticmethod
    def add_flags(groups) -> None:
        data = groups["data"]
        data.add_argument("--train-dir", "--train_dir", default=lsd.TRAIN_DIR, metavar="NAME",
                          help="training split folder under --data-dir (default: %(default)s)")
        data.add_argument("--val-dir", "--val_dir", default=lsd.VAL_DIR, metavar="NAME",
                          help="validation split folder under --data-dir (default: %(default)s)")
        data.add_argument("--test-dir", "--test_dir", default=lsd.TEST_DIR, metavar="NAME",
                          help="folder of the test images named by the test list (default: %(default)s)")
        model = groups["model"]
        model.add_argument("--vit-num", "--vit_num", type=positive_int, default=2, metavar="K",
                           help="number of co-trained ViTs (default: %(default)s)")
        model.add_argument("--mask-ratio", "--mask_rate", "--mask_ratio", type=ratio, default=0.75, metavar="R",
                           help="fraction of patches each ViT drops in training (default: %(default)s; 0 gives "
                                "plain CoTEX, the reference script's default)")
        optim = groups["optim"]
        optim.add_argument("--lambda-ce", "--lambda_CE", "--lambda_ce", type=non_negative_float, default=1.0,
                           help="weight of the cross-entropy term (default: %(default)s)")
        optim.add_argument("--lambda-js", "--lambda_JS", "--lambda_js", type=non_negative_float, default=100.0,
                           help="weight of the Jensen-Shannon term (default: %(default)s)")
        optim.add_argument("--scale-lr", "--zoom_lr", action="store_true",
                           help="scale the lr by batch * accum * world / 256 (the reference LSD recipe used blr as "
                                "the lr)")


    @staticmethod
    def derived_defaults(args) -> dict:
        if args.batch_size is not None:
            return {}
        # The reference grows the batch with the mask ratio, since dropped tokens free memory.
        return {"batch_size": min(64 * int(1 / (1 - args.mask_ratio)), 4096)}

    @staticmethod
    def check_flags(args, error) -> None:
        for path in args.test_list or ():
            if not os.path.isfile(path):
                error(f"--test-list {path}: no such file")
        if args.mae_ckpt and args.vit_num % len(args.mae_ckpt) != 0:
            error(f"--vit-num {args.vit_num} is not divisible by the number of --mae-ckpt files "
                  f"({len(args.mae_ckpt)}); give one checkpoint, or one per ViT")

    # ---- data
    def _split_dir(self, name: str) -> str:
        return name if os.path.isabs(name) else os.path.join(self.args.data_dir, name)

    @cached_property
    def train_folders(self) -> lsd.ClassFolders:
        return lsd.ClassFolders(self._split_dir(self.args.train_dir))

    @cached_property
    def val_folders(self) -> lsd.ClassFolders:
        return lsd.ClassFolders(self._split_dir(self.args.val_dir))

    def train_split(self):
        folders = self.train_folders
        log("LSD training images per class: " + ", ".join(
            f"{c} {n}" for c, n in zip(lsd.CLASSES, folders.class_counts())))
        return lsd.LSDDataset(folders, skip_bad=True), folders.images

    def val_split(self):
        return lsd.LSDDataset(self.val_folders, skip_bad=self.args.allow_missing)

    def check_inputs(self) -> None:
        """Before the first training step: the test list, read otherwise only after training, is read now."""
        self._test_list  # noqa: B018 - read now, so that a bad test list stops the run before it trains

    def test_split(self):
        if self._test_list is None:
            return None
        root, self._test_images = self._test_list
        return ImageListDataset(root, self._test_images, skip_bad=self.args.allow_missing)

    @cached_property
    def _test_list(self) -> tuple | None:
        """(the test images' folder, the listed images), or None without a test list."""
        path = single_test_list(self.args) or os.path.join(self.args.data_dir, lsd.TEST_LIST_FILE)
        if not os.path.isfile(path):
            log("no test list found (pass --test-list): test_predictions.txt not written")
            return None
        images = lsd.read_test_list(path)
        root = self._split_dir(self.args.test_dir)
        if not os.path.isdir(root):
            raise UserError(f"LSD test image folder not found: {root}; set --test-dir")
        require_present(images, mtl.list_available(root, images), root, self.args.allow_missing)
        return root, images

    def train_augment(self, img_size: int):
        return lsd_train_augment(img_size)

    def random_targets(self, count: int, generator):
        return torch.randint(0, abaw.NUM_LSD_CLASSES, (count,), generator=generator)

    # ---- model
    def model_config(self) -> dict:
        a = self.args
        return dict(name="cotex", vit_num=a.vit_num, num_classes=abaw.NUM_LSD_CLASSES, vit_size=a.vit,
                    img_size=a.img_size, drop_path=a.drop_path, global_pool=a.global_pool, patch_size=a.patch_size,
                    patch_embed=a.patch_embed, **stem_config(a))

    def load_pretrained(self, model) -> None:
        if self.args.mae_ckpt:
            model.load_mae(self.args.mae_ckpt, log=log)
        else:
            warn("no --mae-ckpt: the ViTs start from random weights; expect far lower scores than the reference")

    def load_for_eval(self, path: str):
        """This project's checkpoints rebuild their model; the original ``{'state_dicts': [...]}`` files give the
        number of ViTs, the flags the rest."""
        from models import build_model
        from models.cotex import load_cotex_checkpoint
        from utils.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(self, checkpoint, path, self.model_name)
        if model is None:
            config = self.model_config()
            if "state_dicts" in checkpoint:
                config["vit_num"] = len(checkpoint["state_dicts"])
            model = build_model(config)
            load_cotex_checkpoint(model, path, log=log)  # by path, so that errors name the file
        return model

    def param_groups(self, model) -> list[dict]:
        groups = []
        for vit in model.vits:
            groups += vit_param_groups(vit, self.args.weight_decay, self.args.layer_decay)
        return groups

    def scales_lr(self) -> bool:
        return self.args.scale_lr  # the reference LSD recipe used blr itself as the lr

    # ---- training and prediction
    def loss(self, model, batch):
        inputs, targets = batch
        return self.loss_fn(model(inputs, mask_ratio=self.args.mask_ratio), targets)

    def predict(self, model, inputs):
        logits = model(inputs)  # CoTEX's prediction: the K ViTs' logits summed
        return torch.stack(logits).sum(0) if isinstance(logits, (list, tuple)) else logits

    # ---- metrics and files
    def val_metrics(self, outputs: np.ndarray) -> dict:
        return metrics.lsd_metrics(outputs.argmax(1), self.val_folders.labels)

    def checkpoint_extras(self) -> dict:
        return {}

    def ensemble_space(self, outputs):
        return softmax(outputs)  # members average class probabilities

    def output_space(self, values):
        return log_probabilities(values)

    def val_names(self):
        return self.val_folders.images

    def test_names(self):
        return self._test_images

    def write_predictions(self, path: str, names, outputs: np.ndarray) -> None:
        get_track("lsd").write_submission(path, names, outputs.argmax(1))

    def fill_test(self, outputs, seen):
        """An unreadable test image takes the mean output of the others."""
        return fill_unpredicted(outputs, seen, self._test_images, lambda row, predicted: outputs[predicted].mean(0))

    def figures(self, val_outputs) -> dict:
        return plots.lsd_figures(self, val_outputs)

    def _test_labels(self) -> dict | None:
        path = os.path.join(self.args.data_dir, lsd.TEST_LABEL_FILE)
        return lsd.read_test_labels(path) if os.path.isfile(path) else None

    def test_metrics(self, outputs: np.ndarray, images) -> dict | None:
        labels = self._test_labels()
        if labels is None:
            return None
        if any(image not in labels for image in images):
            warn(f"{os.path.join(self.args.data_dir, lsd.TEST_LABEL_FILE)} does not label every test image; test "
                 f"metrics skipped")
            return None
        return metrics.lsd_metrics(outputs.argmax(1), np.array([labels[image] for image in images]))

    def demo_score(self, out_dir: str):
        path = os.path.join(out_dir, "test_metrics.json")
        labels = self._test_labels()
        if not os.path.isfile(path) or labels is None:
            return None
        with open(path) as handle:
            test = json.load(handle)
        return "synthetic test macro F1", test["f1"], self.constant_baseline(np.array(list(labels.values())))["f1"]

    def constant_baseline(self, targets: np.ndarray) -> dict:
        """Scores of predicting the most frequent training class for every image."""
        counts = lsd.ClassFolders(self._split_dir(self.args.train_dir)).class_counts()
        return metrics.lsd_metrics(np.full(len(targets), counts.argmax()), targets)

