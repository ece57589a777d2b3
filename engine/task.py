"""The written contract between a training stage and the code that runs it.

A stage (EMMA on the MTL track, masked CoTEX on the LSD track, and the stages to come) is a :class:`Task`: its
flags, data, model, loss, predictions, metrics and files. The runner (``engine.runner``), the training loop
(``engine.train``), prediction (``engine.evaluate``), the report (``engine.report``), the command line
(``engine.cli``) and the demo (``engine.demo``) call only what is written here and never ask which stage they run.
A new stage adds an implementation and one line in ``engine.tasks.TASKS``.

Batches. A loader yields ``(inputs, *fields, dropped)``: ``inputs`` a tensor with the batch first, or a tuple of
such tensors (uint8 images; an MAE evaluation's images with their indices; ``None`` when no sample of the batch could
be read), ``fields`` the targets in training and the dataset indices in evaluation, ``dropped`` the indices of
unreadable samples. The loop moves the tensors to the device and applies :meth:`Task.input_transform` before
:meth:`Task.loss` or :meth:`Task.predict`.

The helpers below serve every implementation: the best-checkpoint rule, the model-flag check of a checkpoint, the
filling of unpredicted test rows, and saving the figures.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from utils.errors import UserError, flag_name
from utils.monitor import RunMonitor, log, warn, write_json


@dataclass(frozen=True)
class Selection:
    """Which validation metrics keep a best checkpoint (``best_<short>.pth`` for each ``short: key``), higher being
    better unless ``short`` is in ``minimise`` (a loss); the first is the main one: the files written after training
    come from its checkpoint."""

    metrics: dict[str, str]
    minimise: tuple[str, ...] = ()

    @property
    def main(self) -> str:
        return next(iter(self.metrics))

    def improved(self, values: dict, best: dict) -> list[str]:
        """The short names whose metric beats the best so far; ``best`` is updated in place."""
        better = []
        for short, key in self.metrics.items():
            if key not in values:
                continue
            sign = -1.0 if short in self.minimise else 1.0
            if sign * values[key] > sign * best.get(short, -sign * float("inf")):
                best[short] = values[key]
                better.append(short)
        return better


def to_device(inputs, device: torch.device):
    """A batch's inputs (a tensor, or a tuple of tensors) on ``device``."""
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(to_device(part, device) for part in inputs)
    return inputs.to(device, non_blocking=True)


def batch_count(inputs) -> int:
    """The number of samples of a batch's inputs (a tensor, or a tuple of tensors with the batch first)."""
    return (inputs[0] if isinstance(inputs, (tuple, list)) else inputs).shape[0]


class Task(Protocol):
    """What a stage provides. The class carries the stage's flags and settings; an instance is built from the parsed
    flags (``Task(args)``) and reads the flags it defined."""

    # ---- the stage's command line (class level)
    name: ClassVar[str]  # "mtl", "lsd": the entry point's track, also recorded in args.json
    prog: ClassVar[str]  # the entry script, for --help and error lines
    model_name: ClassVar[str]  # the model it trains ("emma"), as its checkpoints' model_config names it
    defaults: ClassVar[dict]  # the reference recipe's values of the shared flags (epochs, lr, batch, ...)
    demo_run: ClassVar[dict]  # flag values of --demo (typed flags win over them)
    # The demo's synthetic data set: {"synthetic": generator track, "full": parameters, "small": parameters}, and
    # optionally "folder": the image folder of the set that is the demo's --data-dir
    demo_data: ClassVar[dict]
    batch_size_help: ClassVar[str]  # --help of --batch-size, whose default may be derived (derived_defaults)
    many_data_dirs: ClassVar[bool]  # --data-dir takes several folders (a list) instead of one data root
    init_flag: ClassVar[str]  # the flag that starts a new run from a checkpoint's weights ("--mae-ckpt")

    @staticmethod
    def add_flags(groups: dict[str, argparse._ArgumentGroup]) -> None:
        """Add the stage's own flags to the shared groups ("data", "model", "optim", "evaluation")."""

    @staticmethod
    def derived_defaults(args: argparse.Namespace) -> dict:
        """Defaults that depend on other flags' values, for flags left untyped (e.g. LSD's batch from the mask
        ratio); the parser takes them as defaults and parses again, so parsed flags are never rewritten."""

    @staticmethod
    def check_flags(args: argparse.Namespace, error) -> None:
        """Reject inconsistent stage flags: ``error(message)`` exits with one line."""

    # ---- data
    def train_split(self) -> tuple[torch.utils.data.Dataset, Any]:
        """The training dataset and the names of its samples (for messages about unreadable ones)."""

    def val_split(self) -> torch.utils.data.Dataset | None:
        """The validation dataset (read once; later calls return the same), or None where the run has none (then
        no best checkpoint is kept and the files come from ``last.pth``)."""

    def test_split(self) -> torch.utils.data.Dataset | None:
        """The test list's dataset, or None when there is no test list."""

    def check_inputs(self) -> None:
        """Before the first training step: read what is otherwise read only after training (test lists, validation
        images), so that a bad input stops the run before it trains."""

    def train_augment(self, img_size: int):
        """Per-sample training augmentation to the model's input size (run in the loader workers), with a
        ``collate`` method that makes the batch."""

    def eval_collate(self, samples: list):
        """The collate of an evaluation batch."""

    def input_transform(self, img_size: int):
        """The device-side transform of a batch's inputs into model inputs."""

    def random_targets(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Valid random targets of ``count`` samples, as a training batch carries them (benchmarks, tests)."""

    # ---- model
    def model_config(self) -> dict:
        """The model's constructor config from the flags (``models.build_model`` builds it; checkpoints keep it)."""

    def load_pretrained(self, model) -> None:
        """Initialise a new model from the pretrained weights the flags name (warn where none are given)."""

    def load_for_eval(self, path: str):
        """The model of a checkpoint file, this project's or a released one, ready for :meth:`predict`."""

    def check_model_flags(self, config: dict, path: str) -> None:
        """A typed model flag that contradicts a checkpoint's config is a one-line :class:`UserError`."""

    def param_groups(self, model) -> list[dict]:
        """The optimiser's parameter groups (``lr_scale``, ``weight_decay``, optional ``fixed_lr``)."""

    def scales_lr(self) -> bool:
        """Whether the recipe scales ``--blr`` by the effective batch / 256."""

    # ---- training and prediction
    def loss(self, model, batch: tuple) -> tuple[torch.Tensor, dict]:
        """``(inputs, targets)`` on the device -> the loss to minimise and its detached parts for the logs."""

    def predict(self, model, inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs -> one output row of ``output_width`` values per sample."""

    output_width: int

    # ---- metrics and files
    selection: ClassVar[Selection]

    def val_metrics(self, outputs: np.ndarray) -> dict:
        """Scores of validation outputs (rank 0), including every key of :attr:`selection`."""

    def checkpoint_extras(self) -> dict:
        """Plain values a checkpoint carries for evaluation besides the weights (e.g. AU thresholds)."""

    def inference_settings(self) -> dict:
        """Rank 0, after training has written its files with the best checkpoint: the plain values that wrote them
        and that evaluating or predicting with that checkpoint should apply again (MTL: ``au_thresholds`` tuned on
        validation, ``smoothing`` windows; ``{}``: nothing). The runner writes them into the run's own
        ``best_<main>.pth`` (atomically); a checkpoint given to ``--eval`` is never rewritten."""

    # ---- ensembles: ``--eval --ckpt A B ...`` averages the members' outputs before post-processing
    ensembles: ClassVar[bool]  # whether --eval takes several --ckpt files (False: one)

    def ensemble_space(self, outputs: np.ndarray) -> np.ndarray:
        """Output rows -> the float64 values that members average (probabilities where the outputs are logits)."""

    def output_space(self, values: np.ndarray) -> np.ndarray:
        """Averaged values -> output rows in the layout the rest reads (post-processing, decoding, the writers).
        Every evaluation, of one model too, passes through ``output_space(ensemble_space(...))``, so that one
        checkpoint given twice writes the bytes it writes alone."""

    def use_ensemble_settings(self, first_path: str, first_extras: dict) -> None:
        """After every member of an ensemble is loaded (each :meth:`load_for_eval` sets its checkpoint's settings):
        the settings the ensemble evaluates with; ``first_extras`` is the first member's :meth:`checkpoint_extras`."""

    def write_outputs(self, out_dir: str, val_outputs: np.ndarray | None, test_outputs: np.ndarray | None,
                      test_seen: np.ndarray | None, checkpoint_path: str | list[str] | None) -> dict:
        """Rank 0, after training and in ``--eval``: post-process, write ``val_metrics.json``,
        ``val_predictions.txt``, ``test_predictions.txt`` (and ``test_metrics.json`` where test labels exist) and
        the figures; returns the validation metrics. ``checkpoint_path``: the members' paths for an ensemble."""

    def epoch_figures(self, model, device: torch.device, autocast) -> dict:
        """Rank 0, after each epoch's validation and in ``--eval``: figures of the model's work worth looking at as
        training goes (MAE: reconstructions of held-out faces), ``{name: matplotlib figure}``; may be empty."""

    def demo_score(self, out_dir: str) -> tuple[str, float, float] | None:
        """(what was scored, its score, score of constant predictions), e.g. ("synthetic test P_MTL", ...), or
        None without labels to score."""


# The model flags every stage shares, as entries of a saved model config -> the flags' destinations.
MODEL_FLAGS = {"vit_size": "vit", "img_size": "img_size", "patch_size": "patch_size", "patch_embed": "patch_embed",
               "stem_blocks": "stem_blocks", "global_pool": "global_pool"}


def stem_config(args) -> dict:
    """The model config's entry for ``--stem-blocks``: absent for ResNet-18's blocks, so that such configs stay as
    they were (the parser and the demo settings keep it None with the patchify layer)."""
    return {} if args.stem_blocks is None else {"stem_blocks": list(args.stem_blocks)}


def check_model_flags(config: dict, args, path: str, flags: dict = MODEL_FLAGS, saved_defaults: dict = None) -> None:
    """A checkpoint that carries its model config decides the model (input size included); a model flag typed on
    the command line that says otherwise is a user's mismatch, reported in one line.

    ``flags``: config entries -> flag destinations; ``saved_defaults``: values of entries a config may leave out.
    """
    from models.vit import VIT_PRESETS, stem_block_counts

    def resolved(key, value):  # patch size None means the size's own; stem blocks None ResNet-18's
        if key == "patch_size" and value is None:
            return VIT_PRESETS.get(config.get("vit_size"), {}).get("patch_size")
        if key == "stem_blocks" and config.get("patch_embed") == "hybrid":
            try:
                return stem_block_counts(resolved("patch_size", config.get("patch_size")), value)
            except UserError:
                return value
        return value

    saved = {"stem_blocks": None, **(saved_defaults or {}), **config}  # configs record stem blocks when not the default
    typed = getattr(args, "typed", ())
    conflicts = [f"{flag_name(dest)} {_shown(getattr(args, dest))} "
                 f"(the checkpoint: {_shown(resolved(key, saved[key]))})"
                 for key, dest in flags.items()
                 if dest in typed and key in saved and resolved(key, getattr(args, dest)) != resolved(key, saved[key])]
    if conflicts:
        raise UserError(f"{path} was trained with another model than your flags say: {', '.join(conflicts)}; drop "
                        f"those flags, the model is rebuilt from the checkpoint")


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def single_test_list(args) -> str | None:
    """The one ``--test-list`` file of a track with one test list (None when not given)."""
    if not args.test_list:
        return None
    if len(args.test_list) > 1:
        raise UserError(f"this track has one test list; got {len(args.test_list)} --test-list files")
    return args.test_list[0]


def require_present(images, present, root: str, allow_missing: bool) -> None:
    """A test list naming absent images is an error, unless ``--allow-missing`` (the rows are filled later)."""
    missing = images[~present]
    if len(missing) and not allow_missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise UserError(f"{len(missing)} test-list images are missing under {root}: {shown}; restore them, or pass "
                        f"--allow-missing to fill them from stand-ins")


def fill_unpredicted(outputs: np.ndarray, seen: np.ndarray, names, stand_in, filled=()) -> np.ndarray:
    """``--allow-missing``: rows that could not be predicted (absent or unreadable images) take
    ``stand_in(row, predicted_rows)``'s row; every filled row is listed in one warning (``filled``: rows already
    filled from stand-in images)."""
    filled = set(filled)
    unpredicted = np.flatnonzero(~seen)
    if len(unpredicted):
        predicted = np.flatnonzero(seen)
        if len(predicted) == 0:
            raise RuntimeError("no test image could be read")
        for row in unpredicted:
            outputs[row] = stand_in(row, predicted)
        filled |= {int(row) for row in unpredicted}
    if filled:
        rows = sorted(filled)
        shown = [str(names[row]) for row in rows]
        warn(f"--allow-missing: {len(rows)} test rows were filled from stand-ins: {', '.join(shown[:10])}"
             + (" ..." if len(rows) > 10 else ""))
    return outputs


class ImageTask:
    """What the stages over face images share: uint8 image batches, normalised and resized on the device, and the
    files of an evaluation, written through the hooks below (``val_names``, ``test_names``, ``write_predictions`` or
    ``write_split_predictions``, ``fill_test``, ``test_metrics``, ``figures``, and optionally ``postprocess``)."""

    def write_outputs(self, out_dir, val_outputs, test_outputs, test_seen, checkpoint_path) -> dict:
        test_names = self.test_names() if test_outputs is not None else None
        val_outputs, test_outputs, report = self.postprocess(out_dir, val_outputs, test_outputs, test_names,
                                                             checkpoint_path)
        val = {**self.val_metrics(val_outputs), **report}
        write_metrics(out_dir, "val", val)
        self.write_split_predictions(out_dir, "val", self.val_names(), val_outputs)
        if test_outputs is not None:
            test_outputs = self.fill_test(test_outputs, test_seen)
            for path, rows in self.write_split_predictions(out_dir, "test", test_names, test_outputs):
                log(f"wrote {path} ({rows} rows)")
            test = self.test_metrics(test_outputs, test_names)
            if test is not None:
                write_metrics(out_dir, "test", test)
        save_figures(self.figures(val_outputs), out_dir)
        return val

    init_flag: ClassVar[str] = "--mae-ckpt"
    many_data_dirs: ClassVar[bool] = False  # one data root in the ABAW layout

    # Config entries a checkpoint may leave out, with the value they then mean (``check_model_flags``).
    saved_model_defaults: ClassVar[dict] = {}

    def check_model_flags(self, config: dict, path: str) -> None:
        check_model_flags(config, self.args, path, self.model_flags, self.saved_model_defaults)

    def epoch_figures(self, model, device, autocast) -> dict:
        return {}

    def write_split_predictions(self, out_dir: str, split: str, names, outputs) -> list[tuple[str, int]]:
        """Write a split's prediction file(s) (``<split>_predictions.txt`` by default); returns (path, rows) each."""
        path = os.path.join(out_dir, f"{split}_predictions.txt")
        self.write_predictions(path, names, outputs)
        return [(path, len(outputs))]

    def postprocess(self, out_dir, val_outputs, test_outputs, test_names, checkpoint_path):
        """Outputs -> (validation outputs, test outputs, extra entries of val_metrics.json); by default unchanged."""
        return val_outputs, test_outputs, {}

    def inference_settings(self) -> dict:
        return {}

    ensembles: ClassVar[bool] = True

    def ensemble_space(self, outputs):
        return np.asarray(outputs, dtype=np.float64)

    def output_space(self, values):
        return values

    def use_ensemble_settings(self, first_path, first_extras) -> None:
        pass

    def eval_collate(self, samples):
        from datasets.images import collate_uint8

        return collate_uint8(samples)

    def input_transform(self, img_size: int):
        from datasets.transforms import BatchTransform

        return BatchTransform(img_size)


# Probabilities are kept this far from 0 and 1 before their logarithm: finite log-probabilities and logits.
PROBABILITY_FLOOR = 1e-12


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, in float64."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(1, keepdims=True)


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Class probabilities -> log-probabilities, which argmax and a softmax read as they read logits."""
    return np.log(np.clip(probabilities, PROBABILITY_FLOOR, 1.0))


def logits_of(probabilities: np.ndarray) -> np.ndarray:
    """Sigmoid probabilities -> their logits, log(p) - log(1 - p)."""
    clipped = np.clip(probabilities, PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
    return np.log(clipped) - np.log1p(-clipped)


def write_metrics(out_dir: str, split: str, values: dict) -> None:
    """``<out_dir>/<split>_metrics.json``, and the scalar scores in one line of the log."""
    write_json(os.path.join(out_dir, f"{split}_metrics.json"), values)
    name = "validation" if split == "val" else split
    log(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float)))


def save_figures(figures: dict, out_dir: str) -> None:
    """Each figure as ``<out_dir>/<name>.png`` and in TensorBoard under ``eval/<name>``."""
    from engine import plots

    monitor = RunMonitor(out_dir)
    try:
        for name, figure in figures.items():
            figure.savefig(os.path.join(out_dir, f"{name}.png"), dpi=110, bbox_inches="tight")
            monitor.figure(f"eval/{name}", figure, 0)
            plots.close(figure)
    finally:
        monitor.close()


def check_model_name(task, config: dict, path: str, model_name: str | None = None) -> None:
    """A checkpoint of another stage's model (its ``model_config`` names it) is a one-line error, before anything is
    built from it or checked against the flags."""
    name = config.get("name")
    if name != (model_name or task.model_name):
        raise UserError(f"{path} holds a {name} model, not one for this entry point ({task.prog})")


def model_from_checkpoint(task, checkpoint: dict, path: str, model_name: str):
    """The model of one of this project's checkpoints (which carry their model config), or None for a released file
    without one; a checkpoint of another model, or typed model flags that contradict it, are one-line errors."""
    from models import build_model
    from models.weights import load_exactly

    if "model_config" not in checkpoint:
        return None
    config = checkpoint["model_config"]
    check_model_name(task, config, path, model_name)
    task.check_model_flags(config, path)
    model = build_model(config)
    load_exactly(model, checkpoint["model"], path, f"{config['name']} ({config.get('vit_size')})")
    return model
