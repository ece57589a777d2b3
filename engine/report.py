"""From a trained model to the files a user reads and hands in: predict validation and the test list (each where the
task has one), exactly once per sample whatever the number of processes, then let the task write its files
(``Task.write_outputs``: ``val_metrics.json``, ``val_predictions.txt``, ``test_predictions.txt`` when a test list is
available, ``test_metrics.json`` when test labels exist, and the figures)."""

from __future__ import annotations

from engine.evaluate import eval_loader, predict
from utils import dist


def write_evaluation(task, model, args, device, autocast, val_loader=None, checkpoint_path=None,
                     val_outputs=None, skip_val_prediction=False) -> dict | None:
    """Predict validation and test, write every output file; returns the validation metrics on rank 0.

    ``skip_val_prediction``: the caller already has the model's validation predictions (training keeps those of its
    best epoch) and passes them as ``val_outputs`` on rank 0; every rank must pass the same flag.
    """
    batch = args.eval_batch_size or 2 * args.batch_size
    transform = task.input_transform(model.config.get("img_size"))
    if not skip_val_prediction:
        val_set = task.val_split() if val_loader is None else val_loader.dataset
        if val_set is not None:
            if val_loader is None:
                val_loader = eval_loader(val_set, batch, args.num_workers, device, task.eval_collate)
            val_outputs, _ = predict(task, model, val_loader, transform, autocast, device, desc="validation")

    test_outputs = test_seen = None
    test_set = task.test_split()
    if test_set is not None:
        test_loader = eval_loader(test_set, batch, args.num_workers, device, task.eval_collate)
        test_outputs, test_seen = predict(task, model, test_loader, transform, autocast, device, desc="test",
                                          allow_missing=args.allow_missing)

    if not dist.is_main():
        return None
    return task.write_outputs(args.output_dir, val_outputs, test_outputs, test_seen, checkpoint_path)
