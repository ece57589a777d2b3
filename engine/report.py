"""From trained models to the files a user reads and hands in: predict validation and the test list (each where the
task has one), exactly once per sample whatever the number of processes, then let the task write its files
(``Task.write_outputs``: ``val_metrics.json``, ``val_predictions.txt``, ``test_predictions.txt`` when a test list is
available, ``test_metrics.json`` when test labels exist, and the figures).

The files come from one model or from an ensemble (``--eval --ckpt A B ...``): the members' outputs are averaged in
the task's ensemble space (probabilities; ``Task.ensemble_space``) and turned back into outputs
(``Task.output_space``) before post-processing. One model takes the same round trip, so that training, ``--ckpt A``
and ``--ckpt A A`` write the same bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from engine.evaluate import ADAPT_IMAGES, adapt_batchnorm, eval_loader, hybrid_stems, predict
from utils import dist
from utils.errors import UserError
from utils.monitor import log, write_json


@dataclass
class Predictions:
    """One model's outputs on rank 0 (None on the other ranks, and for a split the task does not have)."""

    val: np.ndarray | None
    test: np.ndarray | None
    test_seen: np.ndarray | None  # the test rows that could be predicted (``--allow-missing`` fills the others)


def eval_loaders(task, args, device, val_loader=None, with_val: bool = True) -> tuple:
    """The loaders of validation (``val_loader`` where the caller has one) and of the test list; None for a split
    the task does not have, and for validation when ``with_val`` is False."""
    batch = args.eval_batch_size or 2 * args.batch_size
    if with_val and val_loader is None:
        val_set = task.val_split()
        if val_set is not None:
            val_loader = eval_loader(val_set, batch, args.num_workers, device, task.eval_collate)
    test_set = task.test_split()
    test_loader = None if test_set is None else eval_loader(test_set, batch, args.num_workers, device,
                                                            task.eval_collate)
    return (val_loader if with_val else None), test_loader


def predict_splits(task, model, loaders: tuple, args, device, autocast, val_outputs=None) -> Predictions:
    """The model's outputs over the loaders of :func:`eval_loaders` (every rank takes part; rank 0 gets them), at its
    own input size; ``val_outputs`` stand where there is no validation loader."""
    val_loader, test_loader = loaders
    transform = task.input_transform(model.config.get("img_size"))
    if val_loader is not None and bn_adapt_applies(model, val_loader.dataset, args):
        adapt_to_validation(task, model, val_loader.dataset, args, device, autocast, transform)
    if val_loader is not None:
        val_outputs, _ = predict(task, model, val_loader, transform, autocast, device, desc="validation")
    test_outputs = test_seen = None
    if test_loader is not None:
        test_outputs, test_seen = predict(task, model, test_loader, transform, autocast, device, desc="test",
                                          allow_missing=args.allow_missing)
    return Predictions(val_outputs, test_outputs, test_seen)


def bn_adapt_applies(model, val_set, args) -> bool:
    """Whether ``--bn-adapt`` acts on this model: it needs a hybrid patch embedding and a validation split to adapt
    it on. Typed without them, it is a one-line error; as a default (``--demo``), it is off for such a run."""
    if not args.bn_adapt:
        return False
    if not hybrid_stems(model):
        missing = ("--bn-adapt re-estimates the BatchNorm statistics of the hybrid patch embedding, and this model "
                   "has none (it needs --patch-embed hybrid); drop --bn-adapt")
    elif val_set is None:
        missing = "--bn-adapt adapts the model to the validation images, and this run has no validation split"
    else:
        return True
    if "bn_adapt" in args.typed:
        raise UserError(missing)
    return False


def adapt_to_validation(task, model, val_set, args, device, autocast, transform) -> None:
    """``--bn-adapt``: the hybrid stems' BatchNorm statistics from the validation images (at most ``ADAPT_IMAGES``,
    evenly spaced; :func:`engine.evaluate.adapt_batchnorm`), the same on every rank."""
    count = adapt_batchnorm(model, val_set, transform, args.eval_batch_size or 2 * args.batch_size, args.num_workers,
                            device, autocast, task.eval_collate, max_images=ADAPT_IMAGES)
    log(f"--bn-adapt: BatchNorm statistics of the hybrid patch embedding from {count} validation images")


def average(task, outputs: list) -> np.ndarray | None:
    """Rank 0: ``output_space(mean of ensemble_space(member))`` in float64, as float32 outputs; None without any.
    The mean of identical members is exact, so a checkpoint given twice gives what it gives alone."""
    present = [member for member in outputs if member is not None]
    if not present:
        return None
    total = task.ensemble_space(present[0])
    for member in present[1:]:
        total = total + task.ensemble_space(member)
    return np.asarray(task.output_space(total / len(present)), dtype=np.float32)


def member_score(task, predictions: Predictions) -> float | None:
    """Rank 0: the validation score of one member (the selection's main metric of its own outputs, before
    post-processing), with the settings the task holds for it; None without validation."""
    if predictions.val is None:
        return None
    return float(task.val_metrics(average(task, [predictions.val]))[task.selection.metrics[task.selection.main]])


def write_members(task, args, members: list[Predictions], paths: list, scores=None) -> dict:
    """Rank 0: the files of one model or of an ensemble (``paths``: the checkpoints; ``scores``: each member's
    :func:`member_score`, listed in ``val_metrics.json`` as ``members`` when there are several); returns the
    validation metrics."""
    if task.ensembles:
        val, test = average(task, [m.val for m in members]), average(task, [m.test for m in members])
    else:
        (single,) = members
        val, test = single.val, single.test
    seen = None if members[0].test_seen is None else np.logical_and.reduce([m.test_seen for m in members])
    result = task.write_outputs(args.output_dir, val, test, seen, paths[0] if len(paths) == 1 else list(paths))
    if len(members) > 1:
        key = task.selection.metrics[task.selection.main]
        result = dict(result, members=[{"ckpt": path, key: score} for path, score in zip(paths, scores)])
        write_json(os.path.join(args.output_dir, "val_metrics.json"), result)
        log(f"ensemble of {len(members)} checkpoints: {key} {_shown(result.get(key))} (members: "
            + ", ".join(f"{_shown(score)}" for score in scores) + ")")
    return result


def _shown(score) -> str:
    return "none" if score is None else f"{score:.4f}"


def write_evaluation(task, model, args, device, autocast, val_loader=None, checkpoint_path=None,
                     val_outputs=None, skip_val_prediction=False) -> dict | None:
    """Predict validation and test with one model, write every output file; returns the validation metrics on
    rank 0.

    ``skip_val_prediction``: the caller already has the model's validation predictions (training keeps those of its
    best epoch) and passes them as ``val_outputs`` on rank 0; every rank must pass the same flag.
    """
    loaders = eval_loaders(task, args, device, val_loader, with_val=not skip_val_prediction)
    predictions = predict_splits(task, model, loaders, args, device, autocast, val_outputs)
    if not dist.is_main():
        return None
    return write_members(task, args, [predictions], [checkpoint_path])
