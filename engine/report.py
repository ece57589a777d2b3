"""From a trained model to the files a user reads and hands in.

Writes ``val_metrics.json``, ``val_predictions.txt``, ``test_predictions.txt`` (when a test list is available),
``test_metrics.json`` (when test labels exist) and the pictures. MTL extras, both off by default so that a plain
evaluation reports the model itself: per-AU thresholds tuned on validation, and temporal smoothing of VA (and
expression probabilities) chosen on validation.
"""

from __future__ import annotations

import json
import os

import numpy as np

from datasets import mtl
from engine import plots
from engine.evaluate import eval_loader, predict
from utils import dist, metrics
from utils.errors import UserError
from utils.monitor import RunMonitor, log, warn, write_json

AU_THRESHOLDS_FILE = "au_thresholds.json"


def write_evaluation(task, model, args, device, autocast, val_loader=None, checkpoint_path=None,
                     val_outputs=None, skip_val_prediction=False) -> dict | None:
    """Predict validation and test, write every output file; returns the validation metrics on rank 0.

    ``skip_val_prediction``: the caller already has the model's validation predictions (training keeps those of its
    best epoch) and passes them as ``val_outputs`` on rank 0; every rank must pass the same flag.
    """
    batch = args.eval_batch_size or 2 * args.batch_size
    transform = task.input_transform(model.config["img_size"])
    if not skip_val_prediction:
        if val_loader is None:
            val_loader = eval_loader(task.val_split(), batch, args.num_workers, device)
        val_outputs, _ = predict(task, model, val_loader, transform, autocast, device, desc="validation")

    test_list = task.test_list()
    test_outputs = test_seen = None
    if test_list:
        test_set = task.test_split(test_list)
        test_loader = eval_loader(test_set, batch, args.num_workers, device)
        test_outputs, test_seen = predict(task, model, test_loader, transform, autocast, device, desc="test",
                                          allow_missing=args.allow_missing)
    else:
        log("no test list found (pass --test-list): test_predictions.txt not written")

    if not dist.is_main():
        return None
    out = args.output_dir
    report = {}
    if task.name == "mtl":
        val_outputs, test_outputs, report = _mtl_postprocess(task, args, val_outputs, test_outputs, checkpoint_path)
    val = task.val_metrics(val_outputs)
    val.update(report)
    write_json(os.path.join(out, "val_metrics.json"), val)
    task.write_val_predictions(os.path.join(out, "val_predictions.txt"), val_outputs)
    log("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float)))

    if test_outputs is not None:
        test_outputs = _fill_unpredicted(task, test_outputs, test_seen)
        task.write_test_predictions(os.path.join(out, "test_predictions.txt"), test_outputs)
        log(f"wrote {os.path.join(out, 'test_predictions.txt')} ({len(test_outputs)} rows)")
        test = task.test_metrics(test_outputs)
        if test is not None:
            write_json(os.path.join(out, "test_metrics.json"), test)
            log("test: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float)))
    _draw(task, val_outputs, out)
    return val


def read_au_thresholds(path: str) -> list[float]:
    """Per-AU thresholds from a JSON file with an ``au_thresholds`` list of 12 (``au_thresholds.json`` or
    ``val_metrics.json`` of an earlier run)."""
    try:
        with open(path) as handle:
            thresholds = json.load(handle)["au_thresholds"]
        thresholds = [float(value) for value in thresholds]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--au-thresholds {path}: not a JSON file with an au_thresholds list ({err})") from None
    if len(thresholds) != mtl.NUM_AU or not all(0.0 <= value <= 1.0 for value in thresholds):
        raise UserError(f"--au-thresholds {path}: expected {mtl.NUM_AU} thresholds in [0, 1], got {thresholds}")
    return thresholds


def _fill_unpredicted(task, outputs: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """``--allow-missing``: rows that could not be predicted (absent or unreadable images) take a stand-in."""
    filled = set(getattr(task, "filled_rows", []))
    unpredicted = np.flatnonzero(~seen)
    if len(unpredicted):
        predicted = np.flatnonzero(seen)
        if len(predicted) == 0:
            raise RuntimeError("no test image could be read")
        if task.name == "mtl":
            videos, frames = mtl.video_and_frame(task.test_images)
            for row in unpredicted:
                same = predicted[videos[predicted] == videos[row]]
                pool = same if len(same) else predicted
                outputs[row] = outputs[pool[np.argmin(np.abs(frames[pool] - frames[row]))]]
        else:
            outputs[unpredicted] = outputs[predicted].mean(0)
        filled |= set(int(r) for r in unpredicted)
    if filled:
        rows = sorted(filled)
        names = [str(task.test_images[r]) for r in rows]
        warn(f"--allow-missing: {len(rows)} test rows were filled from stand-ins: {', '.join(names[:10])}"
             + (" ..." if len(rows) > 10 else ""))
    return outputs


def _mtl_postprocess(task, args, val_outputs, test_outputs, checkpoint_path):
    report = {"au_thresholds": list(task.au_thresholds)}
    labels = task.val_annotations.targets
    if args.tune_au_thresholds:
        probs = 1.0 / (1.0 + np.exp(-val_outputs[:, 10:22].astype(np.float64)))
        thresholds, before, after = metrics.tune_au_thresholds(probs, labels[:, 3:])
        task.au_thresholds = thresholds
        report.update(au_thresholds=thresholds, f1_au_before_tuning=before, f1_au_after_tuning=after)
        path = os.path.join(args.output_dir, AU_THRESHOLDS_FILE)
        write_json(path, {"au_thresholds": thresholds, "f1_au_before_tuning": before, "f1_au_after_tuning": after,
                          "checkpoint": checkpoint_path})
        log(f"AU thresholds tuned on validation: F1_AU {before:.4f} -> {after:.4f}; saved in {path} "
            f"(--eval --au-thresholds {path} applies them again)")
    videos, frames = mtl.video_and_frame(task.val_annotations.images)
    for flag, columns, what in ((args.smooth_va, slice(0, 2), "va"), (args.smooth_expr, slice(2, 10), "expr")):
        if flag == 0:
            continue
        if flag == "auto":
            if what == "va":
                window, scores = metrics.choose_smoothing(val_outputs[:, columns], labels[:, :2], videos, frames)
            else:
                window, scores = _choose_expr_window(task, val_outputs, labels, videos, frames)
            log(f"--smooth-{what} auto: window {window} chosen on validation ({_fmt(scores)})")
        else:
            window = int(flag)
        report[f"smooth_{what}_window"] = window
        if window > 1:
            val_outputs = val_outputs.copy()
            val_outputs[:, columns] = _smooth(val_outputs[:, columns], videos, frames, window, what)
            if test_outputs is not None:
                test_videos, test_frames = mtl.video_and_frame(task.test_images)
                test_outputs = test_outputs.copy()
                test_outputs[:, columns] = _smooth(test_outputs[:, columns], test_videos, test_frames, window, what)
    return val_outputs, test_outputs, report


def _smooth(values, videos, frames, window, what):
    if what == "expr":  # average probabilities, then back to log space so that argmax still applies
        shifted = values - values.max(1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
        return np.log(np.maximum(metrics.smooth_by_video(probs, videos, frames, window), 1e-12))
    return metrics.smooth_by_video(values, videos, frames, window)


def _choose_expr_window(task, outputs, labels, videos, frames, windows=(0, 3, 5, 9, 15, 25, 45)):
    known = labels[:, 2] >= 0
    scores = {}
    for window in windows:
        smoothed = _smooth(outputs[:, 2:10], videos, frames, window, "expr") if window > 1 else outputs[:, 2:10]
        expr = smoothed.argmax(1)
        scores[window] = metrics.mtl_metrics(outputs[:, :2], expr, np.zeros((len(outputs), 12), int),
                                             labels)["f1_expr"] if known.any() else 0.0
    best = max(scores, key=lambda w: (scores[w] > scores[0], scores[w], -w))
    return (best if scores[best] > scores[0] else 0), scores


def _fmt(scores: dict) -> str:
    return ", ".join(f"{window}: {score:.4f}" for window, score in scores.items())


def _draw(task, val_outputs, out_dir) -> None:
    monitor = RunMonitor(out_dir)
    try:
        if task.name == "mtl":
            figures = plots.mtl_figures(task, val_outputs)
        else:
            figures = plots.lsd_figures(task, val_outputs)
        for name, figure in figures.items():
            figure.savefig(os.path.join(out_dir, f"{name}.png"), dpi=110, bbox_inches="tight")
            monitor.figure(f"eval/{name}", figure, 0)
            plots.close(figure)
    finally:
        monitor.close()
