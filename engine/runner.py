"""The run driver shared by ``main_mtl.py`` and ``main_lsd.py``: training with resume, and evaluation-only runs.

Everything a run leaves goes to ``--output-dir`` (README, "The output directory"); only rank 0 writes.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import sys

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from datasets.transforms import AugmentedDataset, EpochKeys
from engine.cli import flag_name
from engine.evaluate import eval_loader, predict
from engine.report import read_au_thresholds, write_evaluation
from engine.tasks import make_task
from engine.train import LoopConfig, TrainState, train_one_epoch
from models import build_model
from utils import dist
from utils.checkpoint import capture_rng, load_checkpoint, restore_rng, save_atomic
from utils.errors import UserError
from utils.monitor import RunMonitor, log, warn, write_json
from utils.optim import WarmupCosine, build_optimizer, scaled_lr


def make_train_loader(train_set, augment, batch_size: int, num_workers: int, device: torch.device, seed: int,
                      shard: bool = True) -> tuple[DataLoader, EpochKeys]:
    """The training loader: this rank's shuffled shard (the whole set without ``shard``), augmented by ``augment``
    in the workers, as uint8 batches of the model's size (pinned for a GPU); returns it and its sampler
    (``set_epoch``, and ``skip`` for a mid-epoch resume).

    Workers stay alive across epochs (an epoch of small frames is short, and starting workers costs a fork and
    imports each time) and keep four batches ready each.
    """
    replicas, rank = (dist.world_size(), dist.rank()) if shard else (1, 0)
    sampler = EpochKeys(DistributedSampler(train_set, num_replicas=replicas, rank=rank, shuffle=True, seed=seed,
                                           drop_last=True))
    loader_kwargs = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=augment.collate,
                         pin_memory=device.type == "cuda", drop_last=True,
                         # worker seeds from the loader's own generator: creating an iterator (again after a resume)
                         # leaves the global one, and with it the rest of the run, untouched
                         generator=torch.Generator().manual_seed(seed + rank))
    if num_workers > 0:
        loader_kwargs.update(persistent_workers=True, prefetch_factor=4)
    return DataLoader(AugmentedDataset(train_set, augment, seed), sampler=sampler, **loader_kwargs), sampler


def resolve_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32. auto: bf16 where the device computes it natively, else fp32."""
    if choice == "fp32":
        return None
    if choice == "fp16":
        return torch.float16
    if choice == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if _cpu_has_native_bf16() else None


# CPU flags (as /proc/cpuinfo names them) of instructions that compute bf16 products natively: x86's AVX512_BF16 and
# AMX, Arm's BF16 extension. oneDNN also "supports" bf16 on plain AVX-512 by emulation, 3x slower than fp32.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags of the first CPU listed in ``path`` (empty where there is no such file)."""
    try:
        with open(path) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def _cpu_has_native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in NATIVE_BF16_CPU_FLAGS)


def describe_precision(choice: str, dtype: torch.dtype | None, device: torch.device) -> str:
    """E.g. 'precision fp32 (auto: this CPU has no native bf16); device cpu'."""
    name = "fp32" if dtype is None else str(dtype).replace("torch.", "").replace("bfloat16", "bf16")
    if choice == "auto":
        where = "this GPU" if device.type == "cuda" else "this CPU"
        name += f" (auto: {where} {'computes bf16 natively' if dtype else 'has no native bf16'})"
    return f"precision {name}; device {device}"


def make_autocast(device: torch.device, dtype: torch.dtype | None):
    def autocast():
        return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
    return autocast


def choose_attention_kernel(model, device: torch.device, dtype: torch.dtype | None) -> bool:
    """Use timm's fused attention (``scaled_dot_product_attention``) where it is the faster kernel; returns whether.

    Everywhere but bf16 on a CPU: there PyTorch's flash kernel is slower than timm's explicit product, softmax and
    product (with the latter, EMMA ViT-B trains 9% and masked CoTEX 12% more images/s on two cores; measured with
    ``benchmarks/bench.py --attention``). Both compute the same attention.
    """
    fused = not (device.type == "cpu" and dtype == torch.bfloat16)
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    return fused


def keep_freed_memory() -> bool:
    """Let this process (and its loader workers) reuse freed memory instead of returning it to the system.

    glibc gives every block over 32 MiB (a batch of 64 float images is 38 MiB) its own mapping and unmaps it when
    freed, so each new large tensor is zero-filled page by page: on a CPU run that costs more than the image transform
    itself. Raising the mapping and trimming thresholds keeps such blocks for reuse, as a caching allocator would.
    Returns whether it applied (glibc only).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters, glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, (1 << 31) - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model):
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def checkpoint_dir(args) -> str:
    return os.path.join(args.output_dir, "checkpoints")


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
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
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


def train(args) -> None:
    device, task, dtype = start_run(args, per_rank_seed=True)
    autocast = make_autocast(device, dtype)

    train_set, train_names = task.train_split()
    val_set = task.val_split()
    log(f"training frames: {len(train_set)}, validation frames: {len(val_set)}")

    resume_path = _resume_path(args)
    checkpoint = load_checkpoint(resume_path) if resume_path else None
    if checkpoint is not None and "train_state" not in checkpoint:
        raise UserError(f"--resume {resume_path}: this file holds weights for evaluation, not a training state; "
                        f"resume from {os.path.join(checkpoint_dir(args), 'last.pth')}, or start a new run from "
                        f"weights with --mae-ckpt")
    config = checkpoint["model_config"] if checkpoint else task.model_config()
    if checkpoint:
        check_model_flags(config, args, resume_path)
    model = build_model(config)
    if checkpoint:
        unwrap(model).load_state_dict(checkpoint["model"])
    else:
        task.load_pretrained(model)
    model.to(device)
    choose_attention_kernel(model, device, dtype)

    param_groups = task.param_groups(model)
    scale = args.track == "mtl" or args.scale_lr  # the reference LSD recipe used blr itself as the lr
    lr = args.lr if args.lr is not None else (
        scaled_lr(args.blr, args.batch_size, args.accum_iter, dist.world_size()) if scale else args.blr)
    rule = "scaled" if scale else "unscaled, as the reference LSD recipe"
    log(f"lr = {lr:.3e} (blr {args.blr:g}, batch {args.batch_size} x accum {args.accum_iter} x world "
        f"{dist.world_size()}, {rule}); {describe_precision(args.precision, dtype, device)}")
    optimizer = build_optimizer(param_groups, lr, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    schedule = WarmupCosine(lr, args.min_lr, args.warmup_epochs, args.epochs)

    state = TrainState()
    best = {}
    if checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        for key, value in checkpoint["train_state"].items():
            setattr(state, key, value)
        best = dict(checkpoint.get("best", {}))
        rng_states = checkpoint.get("rng", [])
        if len(rng_states) == dist.world_size():
            restore_rng(rng_states[dist.rank()])
        else:
            warn(f"checkpoint has RNG states of {len(rng_states)} processes, this run has {dist.world_size()}: "
                 f"the continuation is not bit-exact")
            seed_everything(args.seed + dist.rank() + 1000 * state.epoch)
        log(f"resumed from {resume_path}: epoch {state.epoch}, batch {state.batch_in_epoch}, update {state.step}")

    if args.compile:
        model = torch.compile(model)
    if dist.is_distributed():
        # EMMA's only buffers are the frozen DAN's BatchNorm statistics, identical on every rank.
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    train_loader, sampler = make_train_loader(train_set, task.train_augment(config["img_size"]), args.batch_size,
                                              args.num_workers, device, args.seed)
    val_loader = eval_loader(val_set, args.eval_batch_size or 2 * args.batch_size, args.num_workers, device)
    if len(train_loader) == 0 and state.batch_in_epoch == 0:
        raise UserError(f"the training set ({len(train_set)} frames) is smaller than one batch of "
                        f"{args.batch_size} x {dist.world_size()} processes; lower --batch-size")

    input_transform = task.input_transform(config["img_size"])
    loop = LoopConfig(accum_iter=args.accum_iter, clip_grad=args.clip_grad, log_interval=args.log_interval,
                      max_bad_fraction=args.max_bad_images, max_steps=args.max_steps)
    monitor = RunMonitor(args.output_dir)
    write_json(os.path.join(args.output_dir, "args.json"), dict(plain_args(args), lr=lr, world_size=dist.world_size(),
                                                                 model_config=config))

    def save(name: str, metrics=None, resumable: bool = True) -> None:
        """``last.pth`` holds all a resume needs; a best checkpoint only what evaluation needs (no optimizer state,
        which is two thirds of a ViT-B file)."""
        rng = _gather_rng() if resumable else None
        if not dist.is_main():
            return
        content = {"model": unwrap(model).state_dict(), "epoch": state.epoch, "step": state.step,
                   "args": plain_args(args), "model_config": config, "metrics": metrics or {},
                   "au_thresholds": getattr(task, "au_thresholds", None)}
        if resumable:
            content.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict() if scaler.is_enabled() else {},
                           train_state=state.to_dict(), best=best, rng=rng)
        save_atomic(content, os.path.join(checkpoint_dir(args), name))

    main_metric = next(iter(task.best_metrics))
    # validation outputs of the best epoch, when this process ran it (not when it resumed after it); rank 0 holds them
    best_val_known, best_val_outputs = False, None
    with StopOnSignal(state) as stopper:
        while state.epoch < args.epochs:
            sampler.skip = state.batch_in_epoch * args.batch_size
            sampler.set_epoch(state.epoch)
            stats = train_one_epoch(task, model, train_loader, input_transform, optimizer, scaler, schedule,
                                    autocast, device, state, loop, monitor=monitor, image_names=train_names)
            if state.stop_requested:
                save("last.pth")
                log(f"stopped in epoch {state.epoch} after {state.batch_in_epoch} batches; saved "
                    f"{os.path.join(checkpoint_dir(args), 'last.pth')}; continue with --resume auto")
                monitor.close()
                dist.cleanup()
                sys.exit(128 + getattr(stopper, "signum", signal.SIGTERM))
            outputs, _ = predict(task, model, val_loader, input_transform, autocast, device, desc="validate")
            record = {"epoch": state.epoch, "lr": optimizer.param_groups[0]["lr"], "step": state.step,
                      "train": stats["losses"], "images_per_s": stats["images_per_s"], "seconds": stats["seconds"],
                      "skipped_updates": state.skipped_updates, "bad_images": state.bad_images}
            improved = []
            if dist.is_main():
                val = task.val_metrics(outputs)
                record["val"] = {k: v for k, v in val.items() if not isinstance(v, (list, dict))}
                for short, key in task.best_metrics.items():
                    if key in val and val[key] > best.get(short, -float("inf")):
                        best[short] = val[key]
                        improved.append(short)
                monitor.scalars("val", record["val"], state.epoch + 1)
                monitor.scalars("train_epoch", stats["losses"], state.epoch + 1)
                monitor.epoch_record(record)
                summary = ", ".join(f"{k} {v:.4f}" for k, v in record["val"].items() if isinstance(v, float))
                log(f"epoch {state.epoch}: loss {stats['losses'].get('loss', float('nan')):.4f}, "
                    f"{stats['images_per_s']:.0f} img/s, {stats['seconds']:.0f} s; val {summary}")
            improved = dist.broadcast_object(improved)
            if main_metric in improved:
                best_val_known, best_val_outputs = True, outputs
            state.epoch += 1
            state.batch_in_epoch = 0
            save("last.pth", record.get("val"))
            for short in improved:
                save(f"best_{short}.pth", record.get("val"), resumable=False)
    monitor.close()

    # The files a user hands in come from the best checkpoint of the main metric, exactly as --eval would make them.
    best_path = os.path.join(checkpoint_dir(args), f"best_{main_metric}.pth")
    dist.barrier()
    has_best = os.path.isfile(best_path)
    final = load_checkpoint(best_path if has_best else os.path.join(checkpoint_dir(args), "last.pth"))
    unwrap(model).load_state_dict(final["model"])
    log(f"writing predictions with {os.path.basename(best_path)} (epoch {final['epoch'] - 1})")
    reuse = best_val_known and has_best
    write_evaluation(task, unwrap(model), args, device, autocast, val_loader=val_loader,
                     val_outputs=best_val_outputs if reuse else None, skip_val_prediction=reuse)
    dist.cleanup()


def _resume_path(args) -> str | None:
    if args.resume == "none":
        return None
    if args.resume == "auto":
        path = os.path.join(checkpoint_dir(args), "last.pth")
        return path if os.path.isfile(path) else None
    return args.resume


def _gather_rng() -> list:
    state = capture_rng()
    if not dist.is_distributed():
        return [state]
    gathered = [None] * dist.world_size()
    torch.distributed.all_gather_object(gathered, state)
    return gathered


def evaluate_only(args) -> None:
    """``--eval``: a checkpoint (this project's or the authors' released files) to metrics and submission files."""
    device, task, dtype = start_run(args, per_rank_seed=False)
    path = args.ckpt or _default_eval_checkpoint(args, task)
    model = load_for_eval(task, path, args)
    model.to(device)
    choose_attention_kernel(model, device, dtype)
    log(f"evaluating {path}; {describe_precision(args.precision, dtype, device)}")
    write_evaluation(task, model, args, device, make_autocast(device, dtype), checkpoint_path=path)
    dist.cleanup()


def _default_eval_checkpoint(args, task) -> str:
    main_metric = next(iter(task.best_metrics))
    for name in (f"best_{main_metric}.pth", "last.pth"):
        path = os.path.join(checkpoint_dir(args), name)
        if os.path.isfile(path):
            return path
    raise UserError(f"no --ckpt given and no checkpoint in {checkpoint_dir(args)}; pass --ckpt PATH")


# Entries of a saved model config and the flags that set them when a model is built from the flags.
MODEL_FLAGS = {"vit_size": "vit", "img_size": "img_size", "patch_size": "patch_size", "patch_embed": "patch_embed",
               "global_pool": "global_pool", "vit_num": "vit_num", "dan": "dan"}


def check_model_flags(config: dict, args, path: str) -> None:
    """A checkpoint that carries its model config decides the model (input size included); a model flag typed on
    the command line that says otherwise is a user's mismatch, reported in one line."""
    from models.vit import VIT_PRESETS

    def resolved(key, value):  # patch size None means the size's own
        if key == "patch_size" and value is None:
            return VIT_PRESETS.get(config.get("vit_size"), {}).get("patch_size")
        return value

    saved = {"dan": "frozen", **config}  # configs record the DAN setting only when it is not the reference's
    conflicts = [f"{flag_name(dest)} {getattr(args, dest)} (the checkpoint: {saved[key]})"
                 for key, dest in MODEL_FLAGS.items()
                 if dest in getattr(args, "typed", ()) and key in saved
                 and resolved(key, getattr(args, dest)) != resolved(key, saved[key])]
    if conflicts:
        raise UserError(f"{path} was trained with another model than your flags say: {', '.join(conflicts)}; drop "
                        f"those flags, the model is rebuilt from the checkpoint")


def load_for_eval(task, path: str, args):
    """Rebuild the model from a checkpoint: this project's carry their model config; released files use the flags."""
    from models.cotex import load_cotex_checkpoint
    from models.emma import load_emma_checkpoint
    from models.weights import load_exactly

    checkpoint = load_checkpoint(path)
    if "model_config" in checkpoint:
        config = checkpoint["model_config"]
        if config.get("name") != ("emma" if args.track == "mtl" else "cotex"):
            raise UserError(f"{path} holds a {config.get('name')} model, not one for this entry point")
        check_model_flags(config, args, path)
        model = build_model(config)
        load_exactly(model, checkpoint["model"], path, f"{config['name']} ({config.get('vit_size')})")
        if args.track == "mtl" and checkpoint.get("au_thresholds"):
            task.au_thresholds = list(checkpoint["au_thresholds"])
    else:
        config = task.model_config()
        if args.track == "lsd" and "state_dicts" in checkpoint:
            config["vit_num"] = len(checkpoint["state_dicts"])
        model = build_model(config)
        loader = load_emma_checkpoint if args.track == "mtl" else load_cotex_checkpoint
        loader(model, path, log=log)  # by path, so that errors name the file
    if getattr(args, "au_thresholds", None):
        task.au_thresholds = read_au_thresholds(args.au_thresholds)
        log(f"AU thresholds from {args.au_thresholds}: " + " ".join(f"{t:.2f}" for t in task.au_thresholds))
    return model
