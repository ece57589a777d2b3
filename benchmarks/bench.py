"""Speed of the hot paths: training steps of the real models, the MTL data pipeline, and inference.

Each measurement prints one JSON line with at least ``img_per_s``; the last line is the final result (with
``--repeat R``, the best of R measurements and their spread, since CPU timings on a shared machine are noisy).
Warm-up steps run first and are not measured.

    python benchmarks/bench.py train --model emma --vit base --batch-size 8 --steps 3 --threads 2 --precision fp32
    python benchmarks/bench.py train --model cotex --vit base --batch-size 8 --steps 3 --mask-ratio 0.75
    python benchmarks/bench.py pretrain --vit base --batch-size 8 --steps 3 --threads 2
    python -m datasets.synthetic mtl /tmp/benchdata --videos 40 --frames 50
    python benchmarks/bench.py data --data-dir /tmp/benchdata --batch-size 64 --workers 2
    python benchmarks/bench.py eval --model emma --vit base --batch-size 64 [--ckpt FILE] [--data-dir DIR]
    python benchmarks/bench.py extract --model emma --vit base --batch-size 64
    python benchmarks/bench.py temporal --threads 1 --in-dim 798 --window 100 --batch-size 32
    python benchmarks/bench.py audio --encoder logmel --seconds 600
    python benchmarks/bench.py audio --encoder wav2vec2-base --seconds 60 --threads 2
    python benchmarks/bench.py tracks --lines 3000000 --videos 594
    python benchmarks/bench.py prepare --threads 2 --frames 96

Every measurement runs the project's own code, not a copy of it: ``train`` calls the training loop
(``engine.train.train_one_epoch``) with the task's model, loss, parameter groups, AdamW, schedule, autocast and
input transform, on random uint8 crops of the model's size (what the training loader delivers), and ``pretrain``
the same with MAE's task (``engine.tasks.pretrain``: the MAE, its parameter groups and betas); ``data`` iterates the
training loader of ``engine.runtime`` over an MTL data directory (decoding and augmentation in its workers) and applies
the input transform, counting the normalised float batches on the device; ``eval`` runs ``engine.evaluate.predict``
with the input transform, which resizes the frames; ``extract`` runs the same prediction with the temporal stage's
feature extraction (``engine.features``: the model's ``features``) and reports its speed as a ratio to ``eval`` on
the same batches; ``temporal`` calls the training loop with the temporal stage's task and model on random features
(windows/s, and the time of an epoch over the ABAW4 MTL training frames at that speed); ``tracks`` reads and joins
a per-video VA track of the single-task layout with ``datasets.tracks.affwild2`` (lines/s); ``prepare`` runs
``main_prepare.py``'s work on one 640 x 360 video (decode, detect, track, align, write the crops, the sound and the
faces) beside decoding plus facenet-pytorch's MTCNN at its default settings batched 16 on the same frames (frames/s).

Fast paths can be switched off to measure what they gain: ``--precision fp32`` (bf16 autocast is the default where
the device computes it), ``--attention fused|plain`` (the entry points pick per device and precision),
``--default-malloc`` (glibc's own memory thresholds instead of ``keep_freed_memory``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.images import collate_uint8  # noqa: E402
from datasets.transforms import sample_rng  # noqa: E402
from engine.cli import build_parser  # noqa: E402
from engine.evaluate import eval_loader, predict  # noqa: E402
from engine.runtime import (  # noqa: E402
    build_optimisation,
    choose_attention_kernel,
    keep_freed_memory,
    make_autocast,
    make_train_loader,
    resolve_precision,
    seed_everything,
)
from engine.task import batch_count, to_device  # noqa: E402
from engine.tasks import task_class  # noqa: E402
from engine.train import LoopConfig, TrainState, train_one_epoch  # noqa: E402
from models import build_model  # noqa: E402

# --model -> the entry point's track, and the benchmark's flags that model's entry point also takes
TRACKS = {"emma": "mtl", "cotex": "lsd", "mae": "pretrain", "temporal": "temporal"}
MODEL_FLAGS = {"emma": (), "cotex": ("mask_ratio", "vit_num"), "temporal": (),
               "mae": ("mask_ratio", "decoder_dim", "decoder_depth", "decoder_heads")}
# Dense bf16 peak of the GPUs we compute MFU for (TFLOP/s); --peak-tflops covers the others.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def project_args(opts, extra: list[str]) -> argparse.Namespace:
    """The flags of ``main_mtl.py``/``main_lsd.py`` with their defaults (the reference recipe) plus ``extra`` and the
    benchmark's model-specific flags."""
    stage = task_class(TRACKS[opts.model])
    for dest in MODEL_FLAGS[opts.model]:
        if hasattr(opts, dest):
            extra = [*extra, "--" + dest.replace("_", "-"), str(getattr(opts, dest))]
    parser = build_parser(stage, "")
    parser.set_defaults(track=stage.name, typed=[])
    args = parser.parse_args(extra)
    parser.set_defaults(**stage.derived_defaults(args))
    return parser.parse_args(extra)


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return torch.device("cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on the CPU (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def run_settings(opts, device: torch.device) -> dict:
    """What every measurement records about where it ran (the load average tells whether the machine was shared)."""
    return dict(device=device_name(device), threads=torch.get_num_threads(), torch=torch.__version__,
                malloc="default" if opts.default_malloc else "keep_freed", load_avg_1m=round(os.getloadavg()[0], 2))


def precision_name(dtype) -> str:
    return "fp32" if dtype is None else str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace(
        "float16", "fp16")


def random_frames(task, batch_size: int, frame_size: int, first_index: int, generator, train: bool = False) -> tuple:
    """One loader batch ``(inputs, targets, indices, dropped)`` of random frames with valid random labels, from
    (3, H, W) views of height-width-channel arrays, as decoded: a training batch made by the task's own augmentation
    and collate (``train``; what the training loader delivers), else stacked by the evaluation collate of images."""
    targets = task.random_targets(batch_size, generator)
    augment = task.train_augment(frame_size) if train else None
    samples = []
    for offset in range(batch_size):
        image = torch.randint(0, 256, (frame_size, frame_size, 3), dtype=torch.uint8, generator=generator)
        image = image.permute(2, 0, 1)
        if augment is not None:
            image = (image, augment.params(sample_rng(0, 0, first_index + offset)))
        samples.append((image, targets[offset], first_index + offset))
    return augment.collate(samples) if augment is not None else collate_uint8(samples)


class RepeatedBatches:
    """A stand-in loader yielding ``length`` batches, each with its own sample indices (``predict`` needs them)."""

    def __init__(self, batch: tuple, length: int, pin: bool):
        images, *fields, dropped = batch
        if pin:
            images = pinned(images)
        self.images, self.fields, self.length = images, fields, length
        self.dataset = range(length * batch_count(images))

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        size = batch_count(self.images)
        for step in range(self.length):
            fields = list(self.fields)
            fields[-1] = torch.arange(step * size, (step + 1) * size)
            yield (self.images, *fields, [])


def pinned(inputs):
    return tuple(map(pinned, inputs)) if isinstance(inputs, tuple) else inputs.pin_memory()


def pick_attention(opts, model, device: torch.device, dtype) -> bool:
    """The entry points' choice of attention kernel, or the one --attention forces; returns whether it is fused."""
    if opts.attention == "auto":
        return choose_attention_kernel(model, device, dtype)
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = opts.attention == "fused"
    return opts.attention == "fused"


def count_train_flops(task, model, transform, batch: tuple, autocast, device) -> float:
    """Floating-point operations of one training forward and backward per image (matrix products and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    def first_two(inputs):
        return tuple(map(first_two, inputs)) if isinstance(inputs, tuple) else inputs[:2]

    images, targets = to_device(first_two(batch[0]), device), batch[1][:2].to(device)
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast():
            loss, _ = task.loss(model, (transform(images), targets))
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch_count(images)


def summarise(records: list[dict]) -> None:
    """The final line: the best measurement, with every run's speed and the spread between them."""
    speeds = [record["img_per_s"] for record in records]
    best = max(records, key=lambda record: record["img_per_s"])
    spread = (max(speeds) - min(speeds)) / max(speeds) * 100 if max(speeds) > 0 else 0.0
    emit(dict(best, run="best", final=True, runs=len(records), img_per_s_runs=[round(s, 3) for s in speeds],
              spread_pct=round(spread, 1)))


def prepare_run(opts, extra: list[str]) -> tuple:
    """What a model measurement starts with: the device, the entry point's flags (``extra`` and ``--patch-size``),
    the seeded task, and the precision with its autocast."""
    device = pick_device(opts.device)
    if opts.patch_size:
        extra = [*extra, "--patch-size", str(opts.patch_size)]
    args = project_args(opts, extra)
    seed_everything(0)
    task = task_class(args.track)(args)
    dtype = resolve_precision(args.precision, device)
    return device, args, task, dtype, make_autocast(device, dtype)


def bench_train(opts) -> None:
    # No warm-up: the lr of the middle of a run (the optimizer does the same arithmetic at any lr).
    extra = ["--vit", opts.vit, "--img-size", str(opts.img_size), "--batch-size", str(opts.batch_size),
             "--precision", opts.precision, "--accum-iter", str(opts.accum_iter), "--warmup-epochs", "0"]
    device, args, task, dtype, autocast = prepare_run(opts, extra)
    model = build_model(task.model_config()).to(device)
    fused_attention = pick_attention(opts, model, device, dtype)
    optimisation = build_optimisation(task, model, args, device, dtype, world_size=1)
    optimizer, scaler, schedule = optimisation.optimizer, optimisation.scaler, optimisation.schedule
    transform = task.input_transform(args.img_size)
    # what the training loader delivers: uint8 crops of the model's size, augmented in its workers
    batch = random_frames(task, args.batch_size, args.img_size, 0, torch.Generator().manual_seed(0), train=True)
    gflop = count_train_flops(task, model, transform, batch, autocast, device) / 1e9 if opts.flops else None
    if opts.compile:
        model = torch.compile(model)
    loop = LoopConfig(accum_iter=opts.accum_iter, clip_grad=args.clip_grad, log_interval=10**9, max_bad_fraction=1.0)
    state = TrainState()

    def run_steps(steps: int) -> float:
        loader = RepeatedBatches(batch, steps, pin=device.type == "cuda")
        synchronize(device)
        start = time.perf_counter()
        train_one_epoch(task, model, loader, transform, optimizer, scaler, schedule, autocast, device, state, loop)
        synchronize(device)
        return time.perf_counter() - start

    if opts.warmup:
        run_steps(opts.warmup)  # compilation, allocator growth, oneDNN kernel selection
    peak_tflops = opts.peak_tflops or next((peak for name, peak in PEAK_BF16_TFLOPS.items()
                                            if device.type == "cuda" and name in device_name(device)), None)
    settings = dict(bench=opts.command, model=opts.model, vit=opts.vit, batch_size=args.batch_size,
                    accum_iter=opts.accum_iter, steps=opts.steps, warmup=opts.warmup,
                    mask_ratio=getattr(args, "mask_ratio", None), vit_num=getattr(args, "vit_num", None),
                    img_size=args.img_size,
                    precision=precision_name(dtype), compile=opts.compile,
                    fused_attention=fused_attention, **run_settings(opts, device))
    records = []
    for run in range(opts.repeat):
        reset_peak_memory(device)
        seconds = run_steps(opts.steps)
        img_per_s = opts.steps * args.batch_size / seconds
        record = dict(settings, run=run, img_per_s=round(img_per_s, 3), step_s=round(seconds / opts.steps, 4),
                      peak_mem_mb=round(peak_memory_mb(device), 1))
        if gflop is not None:
            record["train_gflop_per_img"] = round(gflop, 2)
            if peak_tflops:
                record["mfu"] = round(img_per_s * gflop / 1e3 / peak_tflops, 4)
        records.append(record)
        emit(record)
    summarise(records)


def bench_data(opts) -> None:
    device = pick_device(opts.device)
    opts.model = "emma"
    args = project_args(opts, ["--data-dir", opts.data_dir, "--img-size", str(opts.img_size)])
    task = task_class(args.track)(args)
    train_set, _ = task.train_split()
    augment = task.train_augment(args.img_size)
    loader, sampler = make_train_loader(train_set, augment, opts.batch_size, opts.workers, device, seed=0)
    if len(loader) == 0:
        raise SystemExit(f"error: {opts.data_dir} has fewer training frames than one batch of {opts.batch_size}")
    transform = task.input_transform(args.img_size)
    epoch = 0

    def batches():
        nonlocal epoch
        while True:
            sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    stream = batches()

    def run_batches(count: int) -> tuple[float, int]:
        synchronize(device)
        start = time.perf_counter()
        images_done = 0
        for _ in range(count):
            images = next(stream)[0]
            model_input = transform(images.to(device, non_blocking=True))
            images_done += model_input.shape[0]
        synchronize(device)
        return time.perf_counter() - start, images_done

    run_batches(opts.warmup)  # starts the workers and fills their prefetch queues
    settings = dict(bench="data", batch_size=opts.batch_size, workers=opts.workers, batches=opts.batches,
                    img_size=args.img_size, frames=len(train_set), augment=repr(augment),
                    **run_settings(opts, device))
    records = []
    for run in range(opts.repeat):
        seconds, images_done = run_batches(opts.batches)
        record = dict(settings, run=run, img_per_s=round(images_done / seconds, 1),
                      batch_ms=round(seconds / opts.batches * 1e3, 2))
        records.append(record)
        emit(record)
    summarise(records)


def timed_predict(hooks, model, loader, transform, autocast, device) -> tuple[float, int]:
    """Seconds of ``engine.evaluate.predict`` over the loader (``hooks``: a task, or feature extraction's), and the
    rows it gave."""
    synchronize(device)
    start = time.perf_counter()
    outputs, _ = predict(hooks, model, loader, transform, autocast, device)
    synchronize(device)
    return time.perf_counter() - start, outputs.shape[0]


def bench_eval(opts) -> None:
    extra = ["--vit", opts.vit, "--img-size", str(opts.img_size), "--precision", opts.precision]
    if opts.data_dir:
        extra += ["--data-dir", opts.data_dir]
    device, args, task, dtype, autocast = prepare_run(opts, extra)
    model = task.load_for_eval(opts.ckpt) if opts.ckpt else build_model(task.model_config())
    model.to(device)
    fused_attention = pick_attention(opts, model, device, dtype)
    if opts.compile:
        model = torch.compile(model)
    transform = task.input_transform(args.img_size)

    def make_loader(batches: int):
        if opts.data_dir:
            return eval_loader(task.val_split(), opts.batch_size, opts.workers, device, task.eval_collate)
        batch = random_frames(task, opts.batch_size, opts.frame_size, 0, torch.Generator().manual_seed(0))
        images, _, indices, dropped = batch  # a test list's batches: images and their row indices
        return RepeatedBatches((images, indices, dropped), batches, pin=device.type == "cuda")

    def run(batches: int) -> tuple[float, int]:
        return timed_predict(task, model, make_loader(batches), transform, autocast, device)

    if opts.warmup:
        run(opts.warmup)
    settings = dict(bench="eval", model=opts.model, vit=opts.vit, batch_size=opts.batch_size, img_size=args.img_size,
                    data=opts.data_dir or "random", checkpoint=opts.ckpt, precision=precision_name(dtype),
                    compile=opts.compile, fused_attention=fused_attention, **run_settings(opts, device))
    records = []
    for index in range(opts.repeat):
        reset_peak_memory(device)
        seconds, images_done = run(opts.steps)
        record = dict(settings, run=index, img_per_s=round(images_done / seconds, 2), images=images_done,
                      peak_mem_mb=round(peak_memory_mb(device), 1))
        records.append(record)
        emit(record)
    summarise(records)


def bench_extract(opts) -> None:
    """Feature extraction against plain inference of the same model on the same batches."""
    from engine.features import Extraction, offered_parts

    extra = ["--vit", opts.vit, "--img-size", str(opts.img_size), "--precision", opts.precision]
    device, args, task, dtype, autocast = prepare_run(opts, extra)
    model = build_model(task.model_config()).to(device).eval()
    fused_attention = pick_attention(opts, model, device, dtype)
    transform = task.input_transform(args.img_size)
    parts = offered_parts(model.config)
    with torch.inference_mode():
        probe = model.features(torch.zeros(1, 3, args.img_size, args.img_size, device=device))
    extraction = Extraction(parts, sum(probe[part].shape[1] for part in parts))
    images, _, indices, dropped = random_frames(task, opts.batch_size, opts.frame_size, 0,
                                                torch.Generator().manual_seed(0))

    def run(hooks, batches: int) -> tuple[float, int]:
        loader = RepeatedBatches((images, indices, dropped), batches, pin=device.type == "cuda")
        return timed_predict(hooks, model, loader, transform, autocast, device)

    if opts.warmup:
        run(extraction, opts.warmup)
        run(task, opts.warmup)
    settings = dict(bench="extract", model=opts.model, vit=opts.vit, batch_size=opts.batch_size,
                    img_size=args.img_size, parts=parts, feature_dim=extraction.output_width,
                    precision=precision_name(dtype), fused_attention=fused_attention, **run_settings(opts, device))
    records = []
    for index in range(opts.repeat):
        extract_s, frames = run(extraction, opts.steps)
        eval_s, _ = run(task, opts.steps)
        record = dict(settings, run=index, img_per_s=round(frames / extract_s, 2),
                      eval_img_per_s=round(frames / eval_s, 2), ratio_to_eval=round(eval_s / extract_s, 3))
        records.append(record)
        emit(record)
    summarise(records)


# Training frames of the ABAW4 MTL track (s-Aff-Wild2), for the epoch time of ``temporal``.
ABAW4_TRAIN_FRAMES = 142_333


def bench_temporal(opts) -> None:
    """Training steps of the temporal model on random features, through the project's training loop."""
    extra = ["--precision", opts.precision, "--batch-size", str(opts.batch_size), "--window", str(opts.window),
             "--temporal", opts.temporal, "--layers", str(opts.layers), "--width", str(opts.width),
             "--heads", str(opts.heads), "--warmup-epochs", "0"]
    device, args, task, dtype, autocast = prepare_run(opts, extra)
    config = dict(name="temporal", in_dim=opts.in_dim, kind=args.temporal, width=args.width, layers=args.layers,
                  heads=args.heads, dropout=args.dropout, positions=args.positions, window=args.window,
                  kernel=args.tcn_kernel)
    model = build_model(config).to(device)
    optimisation = build_optimisation(task, model, args, device, dtype, world_size=1)
    generator = torch.Generator().manual_seed(0)
    inputs = (torch.randn(args.batch_size, args.window, opts.in_dim, generator=generator),
              torch.ones(args.batch_size, args.window), torch.ones(args.batch_size, args.window, dtype=torch.bool))
    batch = (inputs, task.random_targets(args.batch_size, generator), torch.arange(args.batch_size), [])
    loop = LoopConfig(accum_iter=1, clip_grad=args.clip_grad, log_interval=10**9, max_bad_fraction=1.0)
    state = TrainState()

    def run_steps(steps: int) -> float:
        loader = RepeatedBatches(batch, steps, pin=device.type == "cuda")
        synchronize(device)
        start = time.perf_counter()
        train_one_epoch(task, model, loader, task.input_transform(None), optimisation.optimizer, optimisation.scaler,
                        optimisation.schedule, autocast, device, state, loop)
        synchronize(device)
        return time.perf_counter() - start

    if opts.warmup:
        run_steps(opts.warmup)
    windows_per_epoch = -(-ABAW4_TRAIN_FRAMES // args.stride)  # at least this many (and one more per video)
    settings = dict(bench="temporal", temporal=args.temporal, in_dim=opts.in_dim, window=args.window,
                    stride=args.stride, layers=args.layers, width=args.width, heads=args.heads,
                    batch_size=args.batch_size, steps=opts.steps, precision=precision_name(dtype),
                    **run_settings(opts, device))
    records = []
    for index in range(opts.repeat):
        seconds = run_steps(opts.steps)
        windows_per_s = opts.steps * args.batch_size / seconds
        record = dict(settings, run=index, img_per_s=round(windows_per_s * args.window, 1),
                      windows_per_s=round(windows_per_s, 2),
                      abaw4_epoch_s=round(windows_per_epoch / windows_per_s, 1))
        records.append(record)
        emit(record)
    summarise(records)


def bench_audio(opts) -> None:
    """Audio feature extraction of the temporal stage in seconds of sound per second: the log-mel
    (``datasets.media.audio.LogMel``) or a speech encoder with Wav2Vec2-base's sizes and random weights built from its
    config (``models.speech.SpeechEncoder``: chunks, batches, autocast), over one recording of ``--seconds``."""
    from datasets.media.audio import SAMPLE_RATE, LogMel

    device = pick_device(opts.device)
    dtype = resolve_precision(opts.precision, device)
    autocast = make_autocast(device, dtype)
    samples = np.random.default_rng(0).normal(0.0, 0.1, int(opts.seconds * SAMPLE_RATE)).astype(np.float32)
    if opts.encoder == "logmel":
        encoder = LogMel()
        settings = dict(encoder="logmel", precision="fp32")

        def run() -> None:
            encoder.encode(samples, device)
    else:
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        from models.speech import SpeechEncoder

        torch.manual_seed(0)
        encoder = SpeechEncoder(Wav2Vec2Model(Wav2Vec2Config()), opts.layer, "wav2vec2-base (random)",
                                batch_size=opts.batch_size)
        settings = dict(encoder=opts.encoder, layer=encoder.layer, batch_size=opts.batch_size,
                        chunk_s=encoder.chunk / SAMPLE_RATE, precision=precision_name(dtype))

        def run() -> None:
            encoder.encode(samples, device, autocast)

    for _ in range(opts.warmup):
        run()
    settings = dict(bench="audio", seconds=opts.seconds, **settings, **run_settings(opts, device))
    records = []
    for index in range(opts.repeat):
        reset_peak_memory(device)
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        audio_per_s = opts.seconds / (time.perf_counter() - start)
        # img_per_s counts seconds of sound here; aff_wild2_s: Aff-Wild2's ~30 hours of sound at this speed
        record = dict(settings, run=index, img_per_s=round(audio_per_s, 1), audio_s_per_s=round(audio_per_s, 1),
                      aff_wild2_s=round(30 * 3600 / audio_per_s, 1), peak_memory_mb=round(peak_memory_mb(device)))
        records.append(record)
        emit(record)
    summarise(records)


def bench_tracks(opts) -> None:
    """Reading a per-video VA track (ABAW2-8 layout): ``--lines`` annotation lines over ``--videos`` files, written
    once into ``--dir`` (random values, 5 % not annotated), then parsed, validated and joined per frame by
    ``datasets.tracks.affwild2.join_split`` (what training and validation read before matching the frames to images)."""
    import tempfile

    from datasets.tracks import affwild2 as tracks

    root = opts.dir or os.path.join(tempfile.gettempdir(), f"abaw_va_track_{opts.lines}x{opts.videos}")
    folder = os.path.join(root, "VA_Estimation_Challenge", "Train_Set")
    if not os.path.isdir(folder) or len(os.listdir(folder)) != opts.videos:
        os.makedirs(folder, exist_ok=True)
        rng = np.random.default_rng(0)
        sizes = np.diff(np.linspace(0, opts.lines, opts.videos + 1).astype(int))
        for index, size in enumerate(sizes):
            values = rng.uniform(-1, 1, (size, 2))
            values[rng.random(size) < 0.05] = -5
            rows = "\n".join(f"{v:.3f},{a:.3f}" if v != -5 else "-5,-5" for v, a in values)
            with open(os.path.join(folder, f"video{index}.txt"), "w") as handle:
                handle.write("valence,arousal\n" + rows + "\n")
    dirs = {"va": os.path.join(root, "VA_Estimation_Challenge")}
    records = []
    for index in range(opts.repeat):
        start = time.perf_counter()
        joined = tracks.join_split(dirs, "train")
        seconds = time.perf_counter() - start
        record = dict(bench="tracks", lines=len(joined.frames), videos=len(joined.videos), run=index,
                      seconds=round(seconds, 2), img_per_s=round(len(joined.frames) / seconds, 1),
                      **run_settings(opts, torch.device("cpu")))
        records.append(record)
        emit(record)
    summarise(records)



def bench_video(opts, work: str) -> str:
    """``--video``, or a synthetic one person's video of ``--frames`` at ``--width`` x ``--height`` rendered into
    ``work`` (the prepare and predict benchmarks time the same video)."""
    if opts.video is not None:
        return opts.video
    from datasets.synthetic.videos import generate_videos

    generate_videos(os.path.join(work, "source"), videos=1, frames=opts.frames, width=opts.width, height=opts.height,
                    seed=0)
    return os.path.join(work, "source", "videos", "synth000.mp4")


def bench_prepare(opts) -> None:
    """``main_prepare.py`` end to end on one video (``--video``, default a synthetic 640 x 360 one with one person and
    sound) against decoding plus facenet-pytorch's MTCNN with its default settings (20 px minimum face), 16 frames a
    batch; ``img_per_s`` counts frames. The final line gives the ratio and both faces counts (no face lost)."""
    import shutil
    import tempfile

    from facenet_pytorch import MTCNN

    from datasets.media.faces import make_detector
    from datasets.media.video import read_frames, video_name
    from engine.tasks.prepare import build_parser as prepare_parser
    from engine.tasks.prepare import prepare_video

    device = pick_device(opts.device)
    work = tempfile.mkdtemp(prefix="bench_prepare_")
    try:
        video = bench_video(opts, work)
        baseline_model = MTCNN(device=device, keep_all=True)

        def baseline() -> tuple[int, int]:
            frames = faces = 0
            batch = []
            for frame in read_frames(video):
                batch.append(frame.image)
                if len(batch) == opts.batch_size:
                    faces += _count_faces(baseline_model.detect(batch)[0])
                    frames, batch = frames + len(batch), []
            if batch:
                faces += _count_faces(baseline_model.detect(batch)[0])
                frames += len(batch)
            return frames, faces

        detector = make_detector("mtcnn", device, 40)
        args = prepare_parser("").parse_args(["--videos", video, "--output-dir", os.path.join(work, "out"),
                                              "--batch-size", str(opts.batch_size)])

        def ours() -> tuple[int, int]:
            shutil.rmtree(args.output_dir, ignore_errors=True)
            stats = prepare_video(video_name(video), video, args, detector)
            return stats["frames"], stats["faces"]

        records = []
        for index in range(opts.repeat + opts.warmup):
            for name, run in (("decode + facenet-pytorch MTCNN defaults", baseline), ("main_prepare", ours)):
                synchronize(device)
                start = time.perf_counter()
                frames, faces = run()
                synchronize(device)
                seconds = time.perf_counter() - start
                record = dict(bench="prepare", pipeline=name, frames=frames, faces=faces, run=index,
                              seconds=round(seconds, 2), img_per_s=round(frames / seconds, 1),
                              **run_settings(opts, device))
                if index >= opts.warmup:
                    records.append(record)
                    emit(record)
        best = {name: max((r for r in records if r["pipeline"] == name), key=lambda r: r["img_per_s"])
                for name in ("decode + facenet-pytorch MTCNN defaults", "main_prepare")}
        ours_best, base_best = best["main_prepare"], best["decode + facenet-pytorch MTCNN defaults"]
        emit(dict(bench="prepare", final=True, runs=opts.repeat, pipeline="main_prepare vs decode + MTCNN defaults",
                  width=opts.width,
                  height=opts.height, img_per_s=ours_best["img_per_s"], baseline_img_per_s=base_best["img_per_s"],
                  speedup=round(ours_best["img_per_s"] / base_best["img_per_s"], 2), faces=ours_best["faces"],
                  baseline_faces=base_best["faces"], **run_settings(opts, device)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _count_faces(boxes) -> int:
    return sum(0 if frame_boxes is None else len(frame_boxes) for frame_boxes in boxes)


def bench_predict(opts) -> None:
    """``predict.py`` end to end (``engine.tasks.predict.Predictor.video``: decoding, the face pipeline, EMMA on every
    aligned face, the table) on one video (``--video``, default a synthetic 640 x 360 one with one person), with the
    demo's EMMA (``--model demo``) or the reference's ViT-B one (``--model base``), random weights, against
    ``main_prepare.py`` alone on the same video; ``img_per_s`` counts frames. The final line gives the ratio."""
    import shutil
    import tempfile

    from datasets.media.faces import make_detector
    from datasets.media.video import video_name
    from engine.cli import parse_args
    from engine.tasks import task_class
    from engine.tasks.predict import Predictor
    from engine.tasks.prepare import build_parser as prepare_parser
    from engine.tasks.prepare import check_args as check_prepare_args
    from engine.tasks.prepare import prepare_video
    from models import build_model

    device = pick_device(opts.device)
    work = tempfile.mkdtemp(prefix="bench_predict_")
    try:
        video = bench_video(opts, work)
        # the model of main_mtl.py --demo, or of the reference recipe (its flags' defaults), saved as a checkpoint
        flags = ["--demo"] if opts.model == "demo" else ["--data-dir", work]
        task = task_class("mtl")(parse_args("mtl", "", flags))
        config = task.model_config()
        checkpoint = os.path.join(work, "emma.pth")
        torch.save({"model": build_model(config).state_dict(), "model_config": config}, checkpoint)
        predictor = Predictor(checkpoint, device=str(device), precision=opts.precision, batch_size=opts.batch_size)
        prepare_args = prepare_parser("").parse_args(["--videos", video, "--output-dir", os.path.join(work, "out")])
        check_prepare_args(prepare_args)
        detector = make_detector("mtcnn", device, prepare_args.min_face)

        def predict() -> int:
            return int(predictor.video(video)["frame"].nunique())

        def prepare() -> int:
            shutil.rmtree(prepare_args.output_dir, ignore_errors=True)
            return prepare_video(video_name(video), video, prepare_args, detector)["frames"]

        records = []
        for index in range(opts.repeat + opts.warmup):
            for name, run in (("main_prepare", prepare), ("predict", predict)):
                synchronize(device)
                start = time.perf_counter()
                frames = run()
                synchronize(device)
                seconds = time.perf_counter() - start
                record = dict(bench="predict", pipeline=name, model=f"emma {config['vit_size']} {config['img_size']}px",
                              frames=frames, run=index, seconds=round(seconds, 2),
                              img_per_s=round(frames / seconds, 1), precision=precision_name(predictor.dtype),
                              **run_settings(opts, device))
                if index >= opts.warmup:
                    records.append(record)
                    emit(record)
        best = {name: max((r for r in records if r["pipeline"] == name), key=lambda r: r["img_per_s"])
                for name in ("main_prepare", "predict")}
        emit(dict(bench="predict", pipeline="predict vs main_prepare", model=best["predict"]["model"],
                  width=opts.width, height=opts.height, img_per_s=best["predict"]["img_per_s"],
                  prepare_img_per_s=best["main_prepare"]["img_per_s"],
                  ratio=round(best["predict"]["img_per_s"] / best["main_prepare"]["img_per_s"], 2),
                  **run_settings(opts, device)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def model_flags(parser: argparse.ArgumentParser, models: bool = True) -> None:
    if models:
        parser.add_argument("--model", choices=["cotex", "emma"], default="emma")
    parser.add_argument("--vit", choices=["nano", "tiny", "small", "base", "large", "huge"], default="base")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=None)
    parser.add_argument("--vit-num", type=int, default=2, help="CoTEX's number of ViTs (default: %(default)s)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (compiled in the warm-up)")
    parser.add_argument("--attention", choices=["auto", "fused", "plain"], default="auto",
                        help="timm's attention kernel; auto: as the entry points choose (default: %(default)s)")


def common_flags(parser: argparse.ArgumentParser, warmup: int) -> None:
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    parser.add_argument("--warmup", type=int, default=warmup, help="unmeasured steps first (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="measurements; the final line is the best")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's memory thresholds as they are (measures what keep_freed_memory gains)")


def build_cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="training steps of EMMA or masked CoTEX on random frames")
    model_flags(train)
    common_flags(train, warmup=1)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--steps", type=int, default=3, help="measured optimizer steps (default: %(default)s)")
    train.add_argument("--accum-iter", type=int, default=1, help="micro-batches per optimizer step")
    train.add_argument("--mask-ratio", type=float, default=0.75, help="CoTEX's mask ratio (default: %(default)s)")
    train.add_argument("--peak-tflops", type=float, default=None,
                       help="the device's peak for MFU (default: known GPUs' dense bf16 peak)")
    train.add_argument("--no-flops", dest="flops", action="store_false",
                       help="skip counting the FLOPs of a step (and the MFU)")

    pretrain = commands.add_parser("pretrain", help="MAE pretraining steps on random images")
    model_flags(pretrain, models=False)
    common_flags(pretrain, warmup=1)
    pretrain.add_argument("--batch-size", type=int, default=8)
    pretrain.add_argument("--steps", type=int, default=3, help="measured optimizer steps (default: %(default)s)")
    pretrain.add_argument("--accum-iter", type=int, default=1, help="micro-batches per optimizer step")
    pretrain.add_argument("--mask-ratio", type=float, default=0.75, help="MAE's mask ratio (default: %(default)s)")
    pretrain.add_argument("--decoder-dim", type=int, default=512)
    pretrain.add_argument("--decoder-depth", type=int, default=8)
    pretrain.add_argument("--decoder-heads", type=int, default=16)
    pretrain.add_argument("--peak-tflops", type=float, default=None,
                          help="the device's peak for MFU (default: known GPUs' dense bf16 peak)")
    pretrain.add_argument("--no-flops", dest="flops", action="store_false",
                          help="skip counting the FLOPs of a step (and the MFU)")
    pretrain.set_defaults(model="mae")

    data = commands.add_parser("data", help="the MTL training loader and transform")
    data.add_argument("--data-dir", required=True, help="an MTL data directory (python -m datasets.synthetic mtl DIR)")
    data.add_argument("--batch-size", type=int, default=64)
    data.add_argument("--workers", type=int, default=2)
    data.add_argument("--batches", type=int, default=100, help="measured batches (default: %(default)s)")
    data.add_argument("--img-size", type=int, default=224)
    common_flags(data, warmup=10)

    evaluate = commands.add_parser("eval", help="inference of a submission's model")
    model_flags(evaluate)
    common_flags(evaluate, warmup=1)
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--steps", type=int, default=3, help="measured batches without --data-dir")
    evaluate.add_argument("--ckpt", default=None, help="a checkpoint to evaluate (default: random weights)")
    evaluate.add_argument("--data-dir", default=None, help="predict the validation split of this data directory "
                                                           "instead of random frames")
    evaluate.add_argument("--workers", type=int, default=2)
    evaluate.add_argument("--frame-size", type=int, default=112,
                        help="side of the random uint8 frames, resized on the device (default: %(default)s, as "
                             "s-Aff-Wild2's cropped-aligned frames)")

    extract = commands.add_parser("extract", help="per-frame feature extraction of the temporal stage")
    model_flags(extract)
    common_flags(extract, warmup=1)
    extract.add_argument("--batch-size", type=int, default=64)
    extract.add_argument("--steps", type=int, default=3, help="measured batches (default: %(default)s)")
    extract.add_argument("--frame-size", type=int, default=112, help="side of the random uint8 frames")

    temporal = commands.add_parser("temporal", help="training steps of the temporal model on random features "
                                                    "(img_per_s counts frames)")
    common_flags(temporal, warmup=2)
    temporal.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    temporal.add_argument("--temporal", choices=["transformer", "tcn"], default="transformer")
    temporal.add_argument("--in-dim", type=int, default=798,
                          help="feature width (default: %(default)s, EMMA ViT-B's vit + heads + dan)")
    temporal.add_argument("--window", type=int, default=100)
    temporal.add_argument("--layers", type=int, default=4)
    temporal.add_argument("--width", type=int, default=128)
    temporal.add_argument("--heads", type=int, default=4)
    temporal.add_argument("--batch-size", type=int, default=32)
    temporal.add_argument("--steps", type=int, default=10, help="measured optimizer steps (default: %(default)s)")
    temporal.set_defaults(model="temporal", patch_size=None)

    sound = commands.add_parser("audio", help="audio feature extraction of the temporal stage (img_per_s counts "
                                              "seconds of sound)")
    common_flags(sound, warmup=1)
    sound.add_argument("--encoder", choices=["logmel", "wav2vec2-base"], default="logmel")
    sound.add_argument("--seconds", type=float, default=120.0, help="length of the recording (default: %(default)s)")
    sound.add_argument("--layer", type=int, default=None, help="the encoder's hidden state (default: the middle)")
    sound.add_argument("--batch-size", type=int, default=8, help="chunks per batch (default: %(default)s)")
    sound.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto")

    reading = commands.add_parser("tracks", help="reading and joining a per-video VA track (img_per_s counts lines)")
    common_flags(reading, warmup=0)
    reading.add_argument("--lines", type=int, default=3_000_000, help="annotation lines (default: %(default)s)")
    reading.add_argument("--videos", type=int, default=594, help="annotation files (default: %(default)s)")
    reading.add_argument("--dir", default=None, help="where the track is written (default: a temporary folder)")

    media = commands.add_parser("prepare", help="main_prepare.py on a 640 x 360 video against decoding + MTCNN "
                                                "defaults (img_per_s counts frames)")
    common_flags(media, warmup=1)
    media.add_argument("--video", default=None, help="a video file (default: a synthetic one, rendered once)")
    media.add_argument("--frames", type=int, default=96, help="frames of the synthetic video (default: %(default)s)")
    media.add_argument("--width", type=int, default=640, help="synthetic video width (default: %(default)s)")
    media.add_argument("--height", type=int, default=360, help="synthetic video height (default: %(default)s)")
    media.add_argument("--batch-size", type=int, default=16, help="frames per detector batch (default: %(default)s)")
    users = commands.add_parser("predict", help="predict.py end to end on a 640 x 360 video against main_prepare.py "
                                                "alone (img_per_s counts frames)")
    common_flags(users, warmup=1)
    users.add_argument("--model", choices=["demo", "base"], default="demo",
                       help="the demo's EMMA or the reference's ViT-B one (default: %(default)s)")
    users.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    users.add_argument("--video", default=None, help="a video file (default: a synthetic one, rendered once)")
    users.add_argument("--frames", type=int, default=96, help="frames of the synthetic video (default: %(default)s)")
    users.add_argument("--width", type=int, default=640, help="synthetic video width (default: %(default)s)")
    users.add_argument("--height", type=int, default=360, help="synthetic video height (default: %(default)s)")
    users.add_argument("--batch-size", type=int, default=64, help="faces per forward pass (default: %(default)s)")
    return parser


def main(argv=None) -> None:
    opts = build_cli().parse_args(argv)
    if not opts.default_malloc:
        keep_freed_memory()  # as the entry points do
    if opts.threads:
        torch.set_num_threads(opts.threads)
    {"train": bench_train, "pretrain": bench_train, "data": bench_data, "eval": bench_eval, "extract": bench_extract,
     "audio": bench_audio, "predict": bench_predict,
     "temporal": bench_temporal, "tracks": bench_tracks, "prepare": bench_prepare}[opts.command](opts)


if __name__ == "__main__":
    main()
