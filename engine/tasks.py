"""What differs between the two tracks: data, model, loss, predictions, metrics and prediction files.

The training loop (``engine.train``), prediction (``engine.evaluate``) and the run driver (``engine.runner``) are
shared; each calls into an :class:`MTLTask` (EMMA) or an :class:`LSDTask` (masked CoTEX).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from datasets import lsd, mtl
from datasets.images import ImageListDataset
from datasets.transforms import BatchTransform, lsd_train_augment, mtl_train_augment
from engine import submission
from utils import metrics
from utils.errors import UserError
from utils.losses import CoTEXLoss, MTLLoss
from utils.monitor import log, warn
from utils.optim import vit_param_groups


class MTLTask:
    """EMMA on the MTL track: outputs ``[VA(2), EXPR(8), AU(12)]`` per frame."""

    name = "mtl"
    output_width = 22
    best_metrics = {"mtl": "p_mtl", "va": "va", "expr": "f1_expr", "au": "f1_au"}

    def __init__(self, args):
        self.args = args
        self.loss_fn = MTLLoss()
        self.au_thresholds = [metrics.DEFAULT_AU_THRESHOLD] * mtl.NUM_AU

    # ---- data
    def image_root(self) -> str:
        return os.path.join(self.args.data_dir, mtl.IMAGE_DIR)

    def train_split(self):
        annotations = mtl.load_split(self.args.data_dir, mtl.TRAIN_FILE, log=log)
        if getattr(self.args, "au_pos_weight", "reference") == "data":
            self.loss_fn = MTLLoss(pos_weight=data_pos_weight(annotations.targets[:, 3:]))
            log("AU pos_weight from the training annotations: " +
                " ".join(f"{w:.2f}" for w in self.loss_fn.pos_weight.tolist()))
        return mtl.MTLDataset(self.image_root(), annotations, skip_bad=True), annotations.images

    def val_split(self):
        self.val_annotations = mtl.load_split(self.args.data_dir, mtl.VAL_FILE, log=log)
        return mtl.MTLDataset(self.image_root(), self.val_annotations, skip_bad=self.args.allow_missing)

    def test_list(self) -> str | None:
        path = self.args.test_list or os.path.join(self.args.data_dir, mtl.TEST_LIST_FILE)
        return path if os.path.isfile(path) else None

    def test_split(self, path: str):
        """The test-list dataset; absent images are an error, or stand-ins with ``--allow-missing``."""
        images = mtl.read_test_list(path)
        present = mtl.list_available(self.image_root(), images)
        load_paths = images.copy()
        self.filled_rows = []
        if not present.all():
            require_present(images, present, self.image_root(), self.args.allow_missing)
            replacement = mtl.nearest_frames(self.image_root(), images, ~present)
            load_paths = np.array([replacement.get(image, image) for image in images], dtype=object)
            self.filled_rows = [int(i) for i in np.flatnonzero(~present)]
        self.test_images = images
        return ImageListDataset(self.image_root(), load_paths, skip_bad=self.args.allow_missing)

    def train_augment(self, img_size: int):
        """Per-sample training augmentation to the model's input size, run in the loader workers."""
        return mtl_train_augment(img_size)

    def input_transform(self, img_size: int):
        """uint8 batch on the device -> normalised model input (training batches come at the model's size)."""
        return BatchTransform(img_size)

    # ---- model
    def model_config(self) -> dict:
        a = self.args
        config = dict(name="emma", vit_size=a.vit, img_size=a.img_size, drop_path=a.drop_path,
                      global_pool=a.global_pool, patch_size=a.patch_size, patch_embed=a.patch_embed)
        if a.dan != "frozen":
            config["dan"] = a.dan
        return config

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

    def param_groups(self, model) -> list[dict]:
        groups = vit_param_groups(model.vit, self.args.weight_decay, self.args.layer_decay)
        # The reference trained the VA head with its own Adam at a constant lr and no weight decay.
        groups.append({"params": list(model.va_head.parameters()), "weight_decay": 0.0, "lr_scale": 1.0,
                       "fixed_lr": self.args.va_lr})
        return groups

    # ---- training and prediction
    def loss(self, model, images, targets):
        return self.loss_fn(model(images), targets)

    def predict(self, model, images):
        return model(images)

    # ---- metrics and files
    def decode(self, outputs: np.ndarray, thresholds=None):
        # Rounded as written to the prediction files, so that the reported metrics are those of the files.
        va = np.round(np.clip(outputs[:, :2].astype(np.float64), -1.0, 1.0), 6)
        expr = outputs[:, 2:10].argmax(1)
        probs = 1.0 / (1.0 + np.exp(-outputs[:, 10:22].astype(np.float64)))
        aus = metrics.au_decisions(probs, self.au_thresholds if thresholds is None else thresholds)
        return va, expr, aus

    def val_metrics(self, outputs: np.ndarray) -> dict:
        va, expr, aus = self.decode(outputs)
        result = metrics.mtl_metrics(va, expr, aus, self.val_annotations.targets)
        result["va"] = (result["ccc_v"] + result["ccc_a"]) / 2
        return result

    def write_val_predictions(self, path: str, outputs: np.ndarray) -> None:
        submission.write_mtl_predictions(path, self.val_annotations.images, *self.decode(outputs))

    def write_test_predictions(self, path: str, outputs: np.ndarray) -> None:
        submission.write_mtl_predictions(path, self.test_images, *self.decode(outputs))

    def test_metrics(self, outputs: np.ndarray) -> dict | None:
        path = os.path.join(self.args.data_dir, mtl.TEST_LABEL_FILE)
        if not os.path.isfile(path):
            return None
        labels = mtl.read_annotations(path)
        by_image = dict(zip(labels.images, labels.targets))
        missing = [image for image in self.test_images if image not in by_image]
        if missing:
            warn(f"{path} has no labels for {len(missing)} test images; test metrics skipped")
            return None
        targets = np.stack([by_image[image] for image in self.test_images])
        va, expr, aus = self.decode(outputs)
        return metrics.mtl_metrics(va, expr, aus, targets)

    def constant_baseline(self, targets: np.ndarray) -> dict:
        """Scores of constant predictions on the same frames: training means for VA, the most frequent expression, every
        AU present (the constant with the highest F1 per AU, 2p/(1+p); predicting an AU absent scores 0)."""
        train = mtl.read_annotations(os.path.join(self.args.data_dir, mtl.TRAIN_FILE)).targets
        va_mean = [train[train[:, i] != mtl.VA_MISSING, i].mean() for i in range(2)]
        expr_labels = train[:, 2][train[:, 2] >= 0].astype(int)
        expr_mode = np.bincount(expr_labels, minlength=mtl.NUM_EXPR).argmax()
        n = len(targets)
        return metrics.mtl_metrics(np.tile(va_mean, (n, 1)), np.full(n, expr_mode),
                                   np.ones((n, mtl.NUM_AU), dtype=int), targets)


def require_present(images, present, root: str, allow_missing: bool) -> None:
    """A test list naming absent images is an error, unless ``--allow-missing`` (the rows are filled later)."""
    missing = images[~present]
    if len(missing) and not allow_missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise UserError(f"{len(missing)} test-list images are missing under {root}: {shown}; restore them, or pass "
                        f"--allow-missing to fill them from stand-ins")


def data_pos_weight(aus: np.ndarray) -> list[float]:
    """Negatives / positives per AU over the labelled entries (the rule behind BCE pos_weight), at least 1e-3."""
    weights = []
    for column in aus.T:
        labelled = column[column >= 0]
        positives = max(float((labelled == 1).sum()), 1.0)
        weights.append(max(float((labelled == 0).sum()) / positives, 1e-3))
    return weights


class LSDTask:
    """Masked CoTEX on the LSD track: K ViTs, summed logits over the 6 classes."""

    name = "lsd"
    output_width = lsd.NUM_CLASSES
    best_metrics = {"f1": "f1"}

    def __init__(self, args):
        self.args = args
        self.loss_fn = CoTEXLoss(lambda_ce=args.lambda_ce, lambda_js=args.lambda_js)

    def _split_dir(self, name: str) -> str:
        return name if os.path.isabs(name) else os.path.join(self.args.data_dir, name)

    def train_split(self):
        folders = lsd.ClassFolders(self._split_dir(self.args.train_dir))
        counts = folders.class_counts()
        log("LSD training images per class: " + ", ".join(f"{c} {n}" for c, n in zip(lsd.CLASSES, counts)))
        return lsd.LSDDataset(folders, skip_bad=True), folders.images

    def val_split(self):
        self.val_folders = lsd.ClassFolders(self._split_dir(self.args.val_dir))
        return lsd.LSDDataset(self.val_folders, skip_bad=self.args.allow_missing)

    def test_list(self) -> str | None:
        path = self.args.test_list or os.path.join(self.args.data_dir, lsd.TEST_LIST_FILE)
        return path if os.path.isfile(path) else None

    def test_split(self, path: str):
        images = lsd.read_test_list(path)
        root = self._split_dir(self.args.test_dir)
        if not os.path.isdir(root):
            raise UserError(f"LSD test image folder not found: {root}; set --test-dir")
        require_present(images, mtl.list_available(root, images), root, self.args.allow_missing)
        self.filled_rows = []
        self.test_images = images
        return ImageListDataset(root, images, skip_bad=self.args.allow_missing)

    def train_augment(self, img_size: int):
        """Per-sample training augmentation to the model's input size, run in the loader workers."""
        return lsd_train_augment(img_size)

    def input_transform(self, img_size: int):
        """uint8 batch on the device -> normalised model input (training batches come at the model's size)."""
        return BatchTransform(img_size)

    def model_config(self) -> dict:
        a = self.args
        return dict(name="cotex", vit_num=a.vit_num, num_classes=lsd.NUM_CLASSES, vit_size=a.vit,
                    img_size=a.img_size, drop_path=a.drop_path, global_pool=a.global_pool, patch_size=a.patch_size,
                    patch_embed=a.patch_embed)

    def load_pretrained(self, model) -> None:
        if self.args.mae_ckpt:
            model.load_mae(self.args.mae_ckpt, log=log)
        else:
            warn("no --mae-ckpt: the ViTs start from random weights; expect far lower scores than the reference")

    def param_groups(self, model) -> list[dict]:
        groups = []
        for vit in model.vits:
            groups += vit_param_groups(vit, self.args.weight_decay, self.args.layer_decay)
        return groups

    def loss(self, model, images, targets):
        return self.loss_fn(model(images, mask_ratio=self.args.mask_ratio), targets)

    def predict(self, model, images):
        logits = model(images)
        return torch.stack(logits).sum(0) if isinstance(logits, (list, tuple)) else logits

    def val_metrics(self, outputs: np.ndarray) -> dict:
        return metrics.lsd_metrics(outputs.argmax(1), self.val_folders.labels)

    def write_val_predictions(self, path: str, outputs: np.ndarray) -> None:
        submission.write_lsd_predictions(path, self.val_folders.images, outputs.argmax(1))

    def write_test_predictions(self, path: str, outputs: np.ndarray) -> None:
        submission.write_lsd_predictions(path, self.test_images, outputs.argmax(1))

    def test_metrics(self, outputs: np.ndarray) -> dict | None:
        path = os.path.join(self.args.data_dir, lsd.TEST_LABEL_FILE)
        if not os.path.isfile(path):
            return None
        labels = lsd.read_test_labels(path)
        if any(image not in labels for image in self.test_images):
            warn(f"{path} does not label every test image; test metrics skipped")
            return None
        return metrics.lsd_metrics(outputs.argmax(1), np.array([labels[image] for image in self.test_images]))

    def constant_baseline(self, targets: np.ndarray) -> dict:
        counts = lsd.ClassFolders(self._split_dir(self.args.train_dir)).class_counts()
        return metrics.lsd_metrics(np.full(len(targets), counts.argmax()), targets)


def make_task(args):
    return MTLTask(args) if args.track == "mtl" else LSDTask(args)
