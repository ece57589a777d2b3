"""The life cycle of a run, for every stage: set-up, resume, the epoch loop with validation and best checkpoints,
signals, and the files written at the end; and evaluation-only runs (``--eval``).

The stage is a task (``engine.task.Task``); the helpers around the life cycle (loaders, precision, optimiser) are in
``engine.runtime``. Everything a run leaves goes to ``--output-dir`` (docs/training.md, "Watching a run, and what it
leaves"); only rank 0 writes.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager

import torch
from torch.nn.parallel import DistributedDataParallel

from engine.evaluate import eval_loader, predict
from engine.report import (
    adapt_to_validation,
    bn_adapt_applies,
    eval_loaders,
    member_score,
    predict_splits,
    write_evaluation,
    write_members,
)
from engine.runtime import (
    Optimisation,
    build_optimisation,
    choose_attention_kernel,
    describe_precision,
    keep_freed_memory,
    make_autocast,
    make_train_loader,
    resolve_precision,
    seed_everything,
    unwrap,
)
from engine.task import check_model_name
from engine.tasks import TASKS, make_task, task_class
from engine.train import LoopConfig, TrainState, train_one_epoch
from models import build_model
from models.weights import load_exactly, strip_prefix
from utils import dist
from utils.checkpoint import (
    IDLE_SCALER_STATE,
    capture_rng,
    checkpoint_content,
    load_checkpoint,
    restore_rng,
    save_atomic,
)
from utils.errors import UserError
from utils.lock import OutputDirLock
from utils.monitor import RunMonitor, log, warn, write_json


def checkpoint_dir(args) -> str:
    return os.path.join(args.output_dir, "checkpoints")


@contextmanager
def owned_output_dir(args):
    """The whole run holds ``--output-dir``'s lock (``utils.lock``): a second run into the same folder is refused
    before it writes or removes anything there. Rank 0 holds it (``RANK``, known before the process group exists);
    the other ranks write nothing of their own there."""
    if int(os.environ.get("RANK", "0") or 0) != 0:
        yield
        return
    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write to --output-dir {args.output_dir}: {err.strerror or err}") from None
    with OutputDirLock(args.output_dir, task_class(args.track).prog):
        yield


def prepare_output_dir(args) -> None:
    if dist.is_main():
        try:
            os.makedirs(checkpoint_dir(args), exist_ok=True)
            for name in os.listdir(checkpoint_dir(args)):  # left by a process killed while saving
                if name.startswith(".tmp-"):
                    os.remove(os.path.join(checkpoint_dir(args), name))
            probe = os.path.join(args.output_dir, ".write-test")
            with open(probe, "w") as handle:
                handle.write("ok")
            os.remove(probe)
        except OSError as err:
            raise UserError(f"cannot write to --output-dir {args.output_dir}: {err.strerror or err}") from None
    dist.barrier()


def plain_args(args) -> dict:
    return {key: value for key, value in vars(args).items() if isinstance(value, (str, int, float, bool, list,
                                                                                    type(None)))}


class StopOnSignal:
    """SIGTERM/SIGINT ask the training loop to stop at the next update; a second signal stops at once."""

    def __init__(self, state: TrainState):
        self.state = state
        self.previous = {}

    def __enter__(self):
        self.pid = os.getpid()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if os.getpid() != self.pid:  # a forked loader worker (Ctrl-C reaches the whole process group): the run decides
            return
        if self.state.stop_requested:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.state.stop_requested = True
        self.signum = signum
        log(f"\n{signal.Signals(signum).name} received: saving last.pth at the next update, then exiting "
            f"(send it again to stop at once)")

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def start_run(args, per_rank_seed: bool):
    """What every run does first: memory policy, process group and device, task, output directory, seed, precision."""
    keep_freed_memory()
    device = dist.setup(args.device)
    task = make_task(args)
    prepare_output_dir(args)
    seed_everything(args.seed + (dist.rank() if per_rank_seed else 0))
    return device, task, resolve_precision(args.precision, device)


def train(args):
    """Train (or continue training) the stage's model; at the end, write the files of its best checkpoint.
    Returns the task."""
    with owned_output_dir(args):
        return _train(args)


def _train(args):
    device, task, dtype = start_run(args, per_rank_seed=True)
    autocast = make_autocast(device, dtype)
    # A checkpoint of another stage is refused before any data is read or features extracted.
    resume_path = _resume_path(args)
    checkpoint = _load_resumable(resume_path, args, task) if resume_path else None
    task.check_inputs()

    train_set, train_names = task.train_split()
    val_set = task.val_split()
    log(f"training samples: {len(train_set)}, validation samples: "
        f"{len(val_set) if val_set is not None else 'none (no best checkpoint; the files come from last.pth)'}")

    config = checkpoint["model_config"] if checkpoint else task.model_config()
    if checkpoint:
        task.check_model_flags(config, resume_path)
        _check_resumed_seed(checkpoint, args, resume_path)
    model = build_model(config)
    adapt_bn = bn_adapt_applies(model, val_set, args)
    if checkpoint:
        load_exactly(unwrap(model), strip_prefix(checkpoint["model"], "module."), resume_path,
                     f"{config['name']} model ({config.get('vit_size')})")
    else:
        task.load_pretrained(model)
    model.to(device)
    choose_attention_kernel(model, device, dtype)

    optimisation = build_optimisation(task, model, args, device, dtype)
    log(f"lr = {optimisation.lr:.3e} ({optimisation.lr_rule}); {describe_precision(args.precision, dtype, device)}")
    state, best = TrainState(), {}
    if checkpoint:
        best = _restore(checkpoint, optimisation, state, args)
        log(f"resumed from {resume_path}: epoch {state.epoch}, batch {state.batch_in_epoch}, update {state.step}")

    if args.compile:
        model = torch.compile(model)
    if dist.is_distributed():
        # EMMA's only buffers are the frozen DAN's BatchNorm statistics, identical on every rank.
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    train_loader, sampler = make_train_loader(train_set, task.train_augment(config.get("img_size")), args.batch_size,
                                              args.num_workers, device, args.seed)
    val_loader = None if val_set is None else eval_loader(
        val_set, args.eval_batch_size or 2 * args.batch_size, args.num_workers, device, task.eval_collate)
    if len(train_loader) == 0 and state.batch_in_epoch == 0:
        raise UserError(f"the training set ({len(train_set)} samples) is smaller than one batch of "
                        f"{args.batch_size} x {dist.world_size()} processes; lower --batch-size")

    input_transform = task.input_transform(config.get("img_size"))
    loop = LoopConfig(accum_iter=args.accum_iter, clip_grad=args.clip_grad, log_interval=args.log_interval,
                      max_bad_fraction=args.max_bad_images, max_steps=args.max_steps)
    monitor = RunMonitor(args.output_dir)
    write_json(os.path.join(args.output_dir, "args.json"),
               dict(plain_args(args), lr=optimisation.lr, world_size=dist.world_size(), model_config=config))
    saver = CheckpointSaver(args, task, model, config, optimisation, state, best)

    # validation outputs of the best epoch, when this process ran it (not when it resumed after it); rank 0 holds them
    best_val_known, best_val_outputs = False, None
    with StopOnSignal(state) as stopper:
        while state.epoch < args.epochs:
            sampler.skip = state.batch_in_epoch * args.batch_size
            sampler.set_epoch(state.epoch)
            stats = train_one_epoch(task, model, train_loader, input_transform, optimisation.optimizer,
                                    optimisation.scaler, optimisation.schedule, autocast, device, state, loop,
                                    monitor=monitor, image_names=train_names)
            if state.stop_requested:
                saver.save("last.pth")
                log(f"stopped in epoch {state.epoch} after {state.batch_in_epoch} batches; saved "
                    f"{os.path.join(checkpoint_dir(args), 'last.pth')}; continue with --resume auto")
                monitor.close()
                dist.cleanup()
                sys.exit(128 + getattr(stopper, "signum", signal.SIGTERM))
            outputs = None
            if val_loader is not None:
                if adapt_bn:
                    adapt_to_validation(task, unwrap(model), val_set, args, device, autocast, input_transform)
                outputs, _ = predict(task, model, val_loader, input_transform, autocast, device, desc="validate")
            record, improved = _validate(task, outputs, stats, state, optimisation, best, monitor)
            if task.selection.main in improved:
                best_val_known, best_val_outputs = True, outputs
            save_epoch_figures(task, model, device, autocast, args.output_dir, monitor, state.epoch)
            state.epoch += 1
            state.batch_in_epoch = 0
            saver.save("last.pth", record.get("val"))
            for short in improved:
                saver.save(f"best_{short}.pth", record.get("val"), resumable=False)
    monitor.close()

    # The files a user hands in come from the best checkpoint of the main metric, exactly as --eval would make them.
    best_path = os.path.join(checkpoint_dir(args), f"best_{task.selection.main}.pth")
    dist.barrier()
    has_best = os.path.isfile(best_path)
    final = load_checkpoint(best_path if has_best else os.path.join(checkpoint_dir(args), "last.pth"))
    unwrap(model).load_state_dict(final["model"])
    log(f"writing the evaluation files with {os.path.basename(best_path) if has_best else 'last.pth'} "
        f"(epoch {final['epoch']})")
    reuse = best_val_known and has_best
    write_evaluation(task, unwrap(model), args, device, autocast, val_loader=val_loader,
                     val_outputs=best_val_outputs if reuse else None, skip_val_prediction=reuse)
    if has_best and dist.is_main():
        store_inference_settings(task, best_path)
    dist.cleanup()
    return task


def store_inference_settings(task, path: str) -> None:
    """Rank 0, after training: the settings that wrote the run's files (``Task.inference_settings``: e.g. tuned AU
    thresholds, smoothing windows) into its own best checkpoint, rewritten atomically, so that ``--eval`` and
    ``predict.py`` apply them again. Only a checkpoint this run wrote is ever rewritten."""
    settings = task.inference_settings()
    if not settings:
        return
    content = load_checkpoint(path)
    content.update(settings)
    save_atomic(content, path)
    log(f"{path}: stored the settings its files were written with ({', '.join(settings)})")


def save_epoch_figures(task, model, device, autocast, out_dir: str, monitor, epoch: int | None) -> None:
    """Rank 0: the task's figures of the model (``Task.epoch_figures``) as ``<out_dir>/<name>_epoch<NNN>.png`` and in
    TensorBoard under ``epoch/<name>``; in ``--eval`` (``epoch`` None) as ``<out_dir>/<name>.png``."""
    if not dist.is_main():
        return
    from engine import plots

    figures = task.epoch_figures(unwrap(model), device, autocast)
    for name, figure in figures.items():
        file_name = f"{name}.png" if epoch is None else f"{name}_epoch{epoch:03d}.png"
        figure.savefig(os.path.join(out_dir, file_name), dpi=110, bbox_inches="tight")
        if monitor is not None:
            monitor.figure(f"epoch/{name}", figure, 0 if epoch is None else epoch + 1)
        plots.close(figure)


def _validate(task, outputs, stats, state: TrainState, optimisation: Optimisation, best: dict, monitor):
    """The epoch's record (log.jsonl, TensorBoard, the epoch line) and the best metrics it improved, on every rank."""
    record = {"epoch": state.epoch, "lr": optimisation.optimizer.param_groups[0]["lr"], "step": state.step,
              "train": stats["losses"], "images_per_s": stats["images_per_s"], "seconds": stats["seconds"],
              "skipped_updates": state.skipped_updates, "bad_images": state.bad_images}
    improved = []
    if dist.is_main():
        summary = "no validation set"
        if outputs is not None:
            val = task.val_metrics(outputs)
            record["val"] = {k: v for k, v in val.items() if not isinstance(v, (list, dict))}
            improved = task.selection.improved(val, best)
            monitor.scalars("val", record["val"], state.epoch + 1)
            summary = "val " + ", ".join(f"{k} {v:.4f}" for k, v in record["val"].items() if isinstance(v, float))
        monitor.scalars("train_epoch", stats["losses"], state.epoch + 1)
        monitor.epoch_record(record)
        log(f"epoch {state.epoch}: loss {stats['losses'].get('loss', float('nan')):.4f}, "
            f"{stats['images_per_s']:.0f} img/s, {stats['seconds']:.0f} s; {summary}")
    return record, dist.broadcast_object(improved)


class CheckpointSaver:
    """Writes the run's checkpoints (rank 0; the RNG states of every rank are gathered first).

    ``last.pth`` holds all a resume needs; a best checkpoint only what evaluation needs (no optimizer state, which is
    two thirds of a ViT-B file). The content is ``utils.checkpoint.checkpoint_content``'s.
    """

    def __init__(self, args, task, model, config: dict, optimisation: Optimisation, state: TrainState, best: dict):
        self.args, self.task, self.model, self.config = args, task, model, config
        self.optimisation, self.state, self.best = optimisation, state, best

    def save(self, name: str, metrics=None, resumable: bool = True) -> None:
        rng = _gather_rng() if resumable else None
        if not dist.is_main():
            return
        training = None
        if resumable:
            scaler = self.optimisation.scaler
            training = dict(optimizer=self.optimisation.optimizer.state_dict(),
                            scaler=scaler.state_dict() if scaler.is_enabled() else dict(IDLE_SCALER_STATE),
                            train_state=self.state.to_dict(), best=self.best, rng=rng)
        content = checkpoint_content(unwrap(self.model).state_dict(), self.config, plain_args(self.args),
                                     epochs_done=self.state.epoch, step=self.state.step, metrics=metrics,
                                     extras=self.task.checkpoint_extras(), training=training)
        save_atomic(content, os.path.join(checkpoint_dir(self.args), name))


def _resume_path(args) -> str | None:
    if args.resume == "none":
        return None
    if args.resume == "auto":
        path = os.path.join(checkpoint_dir(args), "last.pth")
        return path if os.path.isfile(path) else None
    return args.resume


def _load_resumable(path: str, args, task) -> dict:
    """A checkpoint to continue training from: this project's ``last.pth``, or a training checkpoint of
    facebookresearch/mae's layout (``model``, ``optimizer``, ``epoch``, ``scaler``), whose model the flags describe."""
    checkpoint = load_checkpoint(path)
    if "model_config" in checkpoint:
        check_model_name(task, checkpoint["model_config"], f"--resume {path}")
    if "train_state" in checkpoint:
        absent = [key for key in ("model", "model_config", "optimizer") if key not in checkpoint]
        if absent or not isinstance(checkpoint["train_state"], dict):
            raise UserError(f"--resume {path}: a training state without {', '.join(absent) or 'its loop position'}; "
                            f"the file was not written by this project's training")
        return checkpoint
    if isinstance(checkpoint, dict) and {"model", "optimizer", "epoch"} <= set(checkpoint):
        log(f"--resume {path}: a facebookresearch/mae training checkpoint (epoch {checkpoint['epoch']}); the model "
            f"is built from the flags, the loop continues at epoch {int(checkpoint['epoch']) + 1}")
        return dict(checkpoint, model_config=task.model_config(), best={},
                    train_state={"epoch": int(checkpoint["epoch"]) + 1, "batch_in_epoch": 0, "step": 0})
    raise UserError(f"--resume {path}: this file holds weights for evaluation, not a training state; "
                    f"resume from {os.path.join(checkpoint_dir(args), 'last.pth')}, or start a new run from "
                    f"its weights ({task.init_flag})")


def _check_resumed_seed(checkpoint: dict, args, path: str) -> None:
    """A resume continues the checkpoint's random streams, so its run's ``--seed`` is the one in force: an untyped
    ``--seed`` takes it (``args.json`` and the next checkpoints record it), a typed one that differs would be ignored
    without a word (a second demo at ``--seed 1`` would re-report seed 0's run) and is a one-line error."""
    saved_args = checkpoint.get("args")  # a dict in this project's checkpoints (facebookresearch/mae's: a Namespace)
    saved = saved_args.get("seed") if isinstance(saved_args, dict) else None
    if saved is None or saved == args.seed:
        return
    if "seed" in args.typed:
        raise UserError(f"--seed {args.seed}: {path} continues a run with --seed {saved}; give a new run its own "
                        f"--output-dir (or --resume none to start over in {args.output_dir})")
    args.seed = saved


def _restore(checkpoint: dict, optimisation: Optimisation, state: TrainState, args) -> dict:
    """Optimiser, scaler, loop position and RNG states from a resumable checkpoint; returns its best metrics."""
    try:
        optimisation.optimizer.load_state_dict(checkpoint["optimizer"])
    except ValueError as err:  # torch: another number or size of parameter groups
        raise UserError(f"--resume: the checkpoint's optimizer state does not fit this model's parameter groups "
                        f"({err}); check the model flags") from None
    if checkpoint.get("scaler"):
        optimisation.scaler.load_state_dict(checkpoint["scaler"])
    for key, value in checkpoint["train_state"].items():
        setattr(state, key, value)
    rng_states = checkpoint.get("rng", [])
    if len(rng_states) == dist.world_size():
        restore_rng(rng_states[dist.rank()])
    else:
        warn(f"checkpoint has RNG states of {len(rng_states)} processes, this run has {dist.world_size()}: "
             f"the continuation is not bit-exact")
        seed_everything(args.seed + dist.rank() + 1000 * state.epoch)
    return dict(checkpoint.get("best", {}))


def _gather_rng() -> list:
    state = capture_rng()
    if not dist.is_distributed():
        return [state]
    gathered = [None] * dist.world_size()
    torch.distributed.all_gather_object(gathered, state)
    return gathered


def evaluate_only(args):
    """``--eval``: a checkpoint (this project's or the authors' released files) to metrics and submission files.
    Several ``--ckpt`` files are an ensemble: each member is loaded with its own model and input size, predicts
    validation and the test list, and is freed before the next; the files come from the mean of their outputs in
    the task's ensemble space (``engine.report``). Returns the task."""
    with owned_output_dir(args):
        return _evaluate_only(args)


def _evaluate_only(args):
    stage = task_class(args.track)
    if args.ckpt and len(args.ckpt) > 1 and not stage.ensembles:
        able = " and ".join(task.prog for task in TASKS.values() if task.ensembles)
        raise UserError(f"{stage.prog} --eval takes one --ckpt, got {len(args.ckpt)}; ensembles are supported by "
                        f"{able}")
    device, task, dtype = start_run(args, per_rank_seed=False)
    paths = args.ckpt or [_default_eval_checkpoint(args, task)]
    for path in paths[1:]:  # a member of another stage fails now, not after the others have predicted
        content = load_checkpoint(path, mmap=True)
        if "model_config" in content:
            check_model_name(task, content["model_config"], path)
        del content
    autocast = make_autocast(device, dtype)
    loaders, members, scores, first_extras = None, [], [], {}
    for index, path in enumerate(paths):
        model = task.load_for_eval(path)
        if index == 0:
            first_extras = task.checkpoint_extras()
        model.to(device)
        choose_attention_kernel(model, device, dtype)
        member = f" (member {index + 1} of {len(paths)})" if len(paths) > 1 else ""
        log(f"evaluating {path}{member}; {describe_precision(args.precision, dtype, device)}")
        if loaders is None:  # after the first checkpoint is loaded, which may decide the splits (temporal features)
            loaders = eval_loaders(task, args, device)
        if loaders[0] is None:
            bn_adapt_applies(model, None, args)  # a typed --bn-adapt without a validation split is an error
        predictions = predict_splits(task, model, loaders, args, device, autocast)
        if index == 0:
            save_epoch_figures(task, model, device, autocast, args.output_dir, None, None)
        del model  # before the next member is loaded
        if len(paths) > 1 and dist.is_main():  # scored now, with the settings its own checkpoint brought
            scores.append(member_score(task, predictions))
            log(f"member {index + 1} ({path}): validation {task.selection.metrics[task.selection.main]} "
                f"{'none' if scores[-1] is None else f'{scores[-1]:.4f}'}")
        members.append(predictions)
    if len(paths) > 1:
        task.use_ensemble_settings(paths[0], first_extras)
    if dist.is_main():
        write_members(task, args, members, paths, scores)
    dist.cleanup()
    return task


def _default_eval_checkpoint(args, task) -> str:
    for name in (f"best_{task.selection.main}.pth", "last.pth"):
        path = os.path.join(checkpoint_dir(args), name)
        if os.path.isfile(path):
            return path
    raise UserError(f"no --ckpt given and no checkpoint in {checkpoint_dir(args)}; pass --ckpt PATH")
