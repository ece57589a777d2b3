"""What ``predict.py`` runs: inputs (videos, images, folders searched at any depth) to prediction files, figures and
annotated videos in ``--output-dir``, through :class:`engine.tasks.predict.Predictor`.

For each video ``OUT/<video>.csv`` (``Predictor.video``'s table) and ``OUT/<video>_timeline.png``
(``engine.tasks.predict.figures``), with ``--annotate`` also ``OUT/<video>_annotated.mp4``
(``engine.tasks.predict.annotate``); the images together in ``OUT/images.csv``. Every file is written whole or not at
all. An input that cannot be read costs one line naming it; the others are done, and the run ends with status 2 and the
list of what failed. A checkpoint that is not a model of this project stops the run with one line before any input is
read.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from datasets.images import IMAGE_EXTENSIONS
from datasets.media.video import VIDEO_EXTENSIONS, MediaError, video_name
from utils.errors import UserError

IMAGES_CSV = "images.csv"


def build_parser(description: str) -> argparse.ArgumentParser:
    from engine.cli import OneLineParser, positive_int

    parser = OneLineParser(prog="predict.py", description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="video files, image files, or folders searched at any depth for both")
    parser.add_argument("--ckpt", nargs="+", required=True, metavar="CKPT",
                        help="checkpoint(s) of main_mtl.py, or one of main_temporal.py (videos only): a file, or "
                             "hf-hub:owner/repo/file.pth (the Hugging Face cache; HF_HUB_OFFLINE=1 never goes "
                             "online); several: an ensemble, averaged as main_mtl.py --eval --ckpt A B")
    parser.add_argument("--backbone-ckpt", nargs="+", metavar="CKPT",
                        help="with a temporal checkpoint: its frame model (a file or hf-hub: reference) instead of the "
                             "one it records (default: the recorded path, else a file of that name beside the "
                             "checkpoint, or in its hub folder)")
    parser.add_argument("--output-dir", required=True, metavar="OUT", help="where the files are written")
    parser.add_argument("--annotate", action="store_true",
                        help="also write OUT/<video>_annotated.mp4: boxes, tracks, expression and a VA gauge on every "
                             "frame, with the source's timing and sound")
    parser.add_argument("--no-timeline", action="store_true", help="do not draw OUT/<video>_timeline.png")
    parser.add_argument("--no-smoothing", action="store_true",
                        help="each frame's own outputs: no averaging of a track's VA and expression probabilities "
                             "over neighbouring frames with the windows stored in the checkpoint (main_mtl.py "
                             "--smooth-va, --smooth-expr)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                        help="the models' precision (default auto: bf16 where the device computes it natively)")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="aligned faces per forward pass, across frames and people (default: %(default)s)")
    parser.add_argument("--detect-batch", type=positive_int, metavar="N",
                        help="frames per detector batch (default: main_prepare.py's --batch-size)")
    parser.add_argument("--detect-every", type=positive_int, metavar="K",
                        help="search the whole frame on every K-th frame, and between those only around the faces "
                             "they found (default: main_prepare.py's)")
    parser.add_argument("--min-face", type=positive_int, metavar="PX",
                        help="smallest face searched, in pixels (default: main_prepare.py's)")
    parser.add_argument("--min-track", type=positive_int, metavar="N",
                        help="tracks seen in fewer frames are dropped as spurious detections (default: "
                             "main_prepare.py's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(description: str, argv=None) -> None:
    args = build_parser(description).parse_args(argv)
    try:
        failures = run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    if failures:
        print(f"error: {len(failures)} input(s) failed: " + "; ".join(failures), file=sys.stderr, flush=True)
        sys.exit(2)


def collect(paths) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """((name, path) of each video, image paths, a line per input that is not usable), from files and folders
    searched at any depth. Two videos with one name (their outputs would collide) keep the first."""
    videos, images, failures, seen = [], [], [], {}
    for path in paths:
        if os.path.isdir(path):
            found = []
            for folder, subfolders, files in os.walk(path):
                subfolders.sort()
                found += [os.path.join(folder, name) for name in sorted(files) if not name.startswith(".")
                          and name.lower().endswith(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)]
            if not found:
                failures.append(f"{path}: a folder without any video or image file")
        elif os.path.isfile(path):
            found = [path]
        else:
            failures.append(f"{path}: no such file or folder")
            continue
        for file in found:
            if file.lower().endswith(IMAGE_EXTENSIONS):
                images.append(file)
                continue
            name = video_name(file)
            if name in seen and os.path.abspath(seen[name]) != os.path.abspath(file):
                failures.append(f"{file}: another video has the name {name} ({seen[name]}); rename one of them")
            elif name not in seen:
                seen[name] = file
                videos.append((name, file))
    return videos, images, failures


def run(args) -> list[str]:
    """Predict every input into ``args.output_dir``; returns the failed inputs' lines."""
    from tqdm import tqdm

    from engine.tasks.predict import Predictor
    from engine.tasks.predict.temporal import no_images
    from utils.lock import OutputDirLock

    videos, images, failures = collect(args.inputs)
    for line in failures:
        tqdm.write(f"error: {line}", file=sys.stderr)
    with OutputDirLock(args.output_dir, "predict.py"):
        predictor = Predictor(args.ckpt, device=args.device, precision=args.precision, batch_size=args.batch_size,
                              detect_batch=args.detect_batch, detect_every=args.detect_every, min_face=args.min_face,
                              min_track=args.min_track, progress=not args.no_progress,
                              smoothing=not args.no_smoothing, backbone=args.backbone_ckpt)
        windows = predictor.smoothing_windows
        if any(windows.values()):
            tqdm.write(f"videos smoothed per track with the checkpoint's windows: VA {windows['va']}, expression "
                       f"{windows['expr']} frames (--no-smoothing: each frame's own)")
        done = []
        for name, path in tqdm(videos, desc="videos", unit="video", disable=args.no_progress or len(videos) < 2,
                               dynamic_ncols=True):
            started = time.perf_counter()
            try:
                table = predictor.video(path)
                written = write_video_files(args, name, path, table)
            except (MediaError, OSError) as error:
                line = str(error) if isinstance(error, MediaError) else f"{path}: {error}"
                tqdm.write(f"error: {line}", file=sys.stderr)
                failures.append(line)
                continue
            seconds = time.perf_counter() - started
            frames = table["frame"].nunique()
            tracks = table["track"].nunique()
            done.append(f"{name}: {frames} frames, {tracks} track(s), {frames / max(seconds, 1e-9):.1f} frames/s "
                        f"-> {', '.join(written)}")
            tqdm.write(done[-1])
        if images and predictor.sequence is not None:  # a temporal model reads sequences of frames, not photos
            line = f"{len(images)} image(s) skipped: {no_images(predictor.task.prog)}"
            tqdm.write(f"error: {line}", file=sys.stderr)
            failures.append(line)
        elif images:
            table = predictor.images(images, skip_unreadable=True)
            unreadable = table[table["note"].fillna("").str.startswith("unreadable")]
            for note in unreadable["note"]:
                line = note[len("unreadable: "):]
                tqdm.write(f"error: {line}", file=sys.stderr)
                failures.append(line)
            path = os.path.join(args.output_dir, IMAGES_CSV)
            write_csv(table, path)
            faces = int(table["face"].notna().sum())
            print(f"{len(images)} images: {faces} faces -> {path}", flush=True)
    return failures


def write_video_files(args, name: str, path: str, table) -> list[str]:
    """A video's CSV, timeline and (``--annotate``) annotated copy; returns their paths."""
    from engine.tasks.predict.annotate import annotated_name, write_annotated
    from engine.tasks.predict.figures import save_timeline

    written = [os.path.join(args.output_dir, f"{name}.csv")]
    write_csv(table, written[0])
    if not args.no_timeline:
        written.append(os.path.join(args.output_dir, f"{name}_timeline.png"))
        save_timeline(table, written[-1], title=os.path.basename(path))
    if args.annotate:
        written.append(annotated_name(args.output_dir, name))
        write_annotated(path, table, written[-1])
    return written


def write_csv(table, path: str) -> None:
    """A prediction table as CSV (numbers to 6 decimals), atomically."""
    from utils.atomic import atomic_write

    with atomic_write(path) as handle:
        table.to_csv(handle, index=False, float_format="%.6f", lineterminator="\n")
