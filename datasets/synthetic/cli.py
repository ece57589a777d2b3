"""Command line of the synthetic data generator: parse the flags, write one data set, print a one-line summary.

    python -m datasets.synthetic mtl OUT_DIR [--videos 40] [--frames 50] [--size 112] [--seed 0] [--workers N]
    python -m datasets.synthetic tracks OUT_DIR [--videos 40] [--frames 50] [--size 112] [--seed 0] [--workers N]
    python -m datasets.synthetic lsd OUT_DIR [--per-class 200] [--size 112] [--seed 0] [--workers N]
    python -m datasets.synthetic faces OUT_DIR [--count 2000] [--size 112] [--seed 0] [--workers N]
    python -m datasets.synthetic videos OUT_DIR [--videos 6] [--frames 60] [--width 640] [--height 360] [--seed 0]
    python -m datasets.synthetic emi|ah|ce OUT_DIR [flags of the track's generator; --help lists them]

Exit status 0 when the set is written, 2 for a bad flag or a folder the generator must not write to.
"""

from __future__ import annotations

import argparse
import sys

from datasets import synthetic
from datasets.synthetic import DEFAULTS, MAX_SIZE, MIN_SIZE, bounded_int
from datasets.synthetic.videos import DEFAULTS as VIDEO_DEFAULTS
from utils.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    # --help opens with the first line of the generator's docstring.
    parser = argparse.ArgumentParser(prog="python -m datasets.synthetic",
                                     description=synthetic.__doc__.split("\n")[0])
    tracks = parser.add_subparsers(dest="track", required=True)
    mtl = tracks.add_parser("mtl", help="multi-task learning track: videos of frames with VA, EXPR and AU labels")
    single = tracks.add_parser("tracks", help="single-task VA, EXPR and AU tracks (ABAW2-8 layout): the mtl videos, "
                                              "one annotation file per video and track")
    for sub, track in ((mtl, "mtl"), (single, "tracks")):
        sub.add_argument("out_dir")
        sub.add_argument("--videos", type=bounded_int(3), default=DEFAULTS[track]["videos"],
                         help="number of videos, split about 60/20/20 into train/validation/test (default 40)")
        sub.add_argument("--frames", type=bounded_int(1), default=DEFAULTS[track]["frames"],
                         help="face crops per video (default 50)")
    lsd = tracks.add_parser("lsd", help="learning-from-synthetic-data track: six expression classes")
    lsd.add_argument("out_dir")
    lsd.add_argument("--per-class", type=bounded_int(1), default=DEFAULTS["lsd"]["per_class"],
                     help="training images per class; validation and test get about a quarter (default 200)")
    faces = tracks.add_parser("faces", help="unlabelled faces for MAE pretraining, one folder")
    faces.add_argument("out_dir")
    faces.add_argument("--count", type=bounded_int(1), default=DEFAULTS["faces"]["count"],
                       help="number of images (default 2000)")
    raw = tracks.add_parser("videos", help="raw MP4 recordings of synthetic people with sound, their MTL annotations "
                                           "and the true boxes and landmarks (datasets.synthetic.videos)")
    raw.add_argument("out_dir")
    raw.add_argument("--videos", type=bounded_int(1), default=VIDEO_DEFAULTS["videos"],
                     help=f"number of videos (default {VIDEO_DEFAULTS['videos']})")
    raw.add_argument("--frames", type=bounded_int(2), default=VIDEO_DEFAULTS["frames"],
                     help=f"frames per video (default {VIDEO_DEFAULTS['frames']})")
    raw.add_argument("--width", type=bounded_int(MIN_SIZE, 3840), default=VIDEO_DEFAULTS["width"],
                     help=f"frame width in pixels (default {VIDEO_DEFAULTS['width']})")
    raw.add_argument("--height", type=bounded_int(MIN_SIZE, 2160), default=VIDEO_DEFAULTS["height"],
                     help=f"frame height in pixels (default {VIDEO_DEFAULTS['height']})")
    raw.add_argument("--seed", type=bounded_int(0), default=VIDEO_DEFAULTS["seed"], help="same seed, same bytes")
    for track in synthetic.TRACK_MODULES:  # each adds its own flags
        module = synthetic.track_module(track)
        sub = tracks.add_parser(track, help=module.__doc__.strip().split("\n")[0])
        sub.add_argument("out_dir")
        module.add_arguments(sub)
    for sub, track in ((mtl, "mtl"), (single, "tracks"), (lsd, "lsd"), (faces, "faces")):
        sub.add_argument("--size", type=bounded_int(MIN_SIZE, MAX_SIZE), default=DEFAULTS[track]["size"],
                         help="image side in pixels")
        sub.add_argument("--seed", type=bounded_int(0), default=DEFAULTS[track]["seed"],
                         help="same seed, same bytes (default 0)")
        sub.add_argument("--workers", type=bounded_int(1), default=None, help="processes (default: all cores)")
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.track == "videos":
        from datasets.synthetic.videos import generate_videos

        summary = generate_videos(args.out_dir, videos=args.videos, frames=args.frames, width=args.width,
                                  height=args.height, seed=args.seed)
        print(f"synthetic videos: wrote {summary['videos']} videos of {args.frames} frames at {args.width}x"
              f"{args.height} to {args.out_dir} in {summary['seconds']:.1f} s")
        return 0
    if args.track in synthetic.TRACK_MODULES:
        params = {key: value for key, value in vars(args).items() if key not in ("track", "out_dir")}
        try:
            summary = synthetic.generate(args.track, args.out_dir, **params)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        counts = ", ".join(f"{value} {key}" for key, value in summary.get("counts", summary).items()
                           if isinstance(value, int))
        print(f"synthetic {args.track}: wrote {counts} to {args.out_dir}")
        return 0
    common = {"size": args.size, "seed": args.seed, "workers": args.workers, "progress": not args.no_progress}
    try:
        if args.track == "mtl":
            summary = synthetic.generate_mtl(args.out_dir, videos=args.videos, frames=args.frames, **common)
            detail = ", ".join(f"{summary['counts']['videos'][s]} {s} videos" for s in ("train", "val", "test"))
        elif args.track == "tracks":
            summary = synthetic.generate_tracks(args.out_dir, videos=args.videos, frames=args.frames, **common)
            detail = "; ".join(f"{track} " + "/".join(str(n) for n in per_split.values())
                               for track, per_split in summary["counts"]["videos"].items()) + " train/val/test videos"
        elif args.track == "lsd":
            summary = synthetic.generate_lsd(args.out_dir, per_class=args.per_class, **common)
            detail = ", ".join(f"{summary['counts']['split'][s]} {s}" for s in ("train", "val", "test"))
        else:
            summary = synthetic.generate_faces(args.out_dir, count=args.count, **common)
            detail = ", ".join(f"{n} {style}" for style, n in summary["counts"]["styles"].items())
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"synthetic {args.track}: wrote {summary['counts']['images']} images ({detail}) at {args.size} px to "
          f"{args.out_dir} in {summary['seconds']:.1f} s: {summary['images_per_s']:.0f} images/s "
          f"with {summary['workers']} workers")
    return 0

