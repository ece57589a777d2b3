"""Memory of ``predict.py`` along a long video: does ``Predictor.video`` stream (flat memory) or keep frames?

Writes a long synthetic video with PyAV (one rendered face moving over a still background, low resolution so that
it is quick to write and to predict), runs ``Predictor.video`` on it with a checkpoint (the MTL demo's by default,
``python main_mtl.py --demo``) and samples the process's resident memory (VmRSS of ``/proc/self/status``) every
``frames / samples`` decoded frames. Prints one JSON line per sample, then a final line (``"final": true``) with the
frame and face counts, the RSS at 25/50/75/100 % of the video, the peak (VmHWM, which includes building the table at
the end), the growth of RSS over the second to last quarter in MB per 10k frames (least squares), and the output
table's own size in MB per 10k rows (``DataFrame.memory_usage(deep=True)``), from which a long video's total is
estimated: RSS at the start + rows x that size + what the loop keeps per face and frame.

    python benchmarks/predict_memory.py --frames 24000                       # about 10 minutes on 2 CPU cores
    python benchmarks/predict_memory.py --frames 600 --video /tmp/short.mp4  # a quick check that it runs

Linux only (``/proc``). Timings from it are incidental; the memory figures are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine.tasks.predict as predict_module  # noqa: E402
from engine.tasks.predict import Predictor  # noqa: E402


def status_mb(field: str) -> float:
    """A memory field of ``/proc/self/status`` (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} in /proc/self/status")


def face_tile(size: int) -> np.ndarray:
    """One frontal synthetic face (the project's renderer), RGB."""
    from datasets.synthetic.render import render_face, sample_identity, sample_look

    rng = np.random.default_rng(3)
    face, look = sample_identity(rng, "video"), sample_look(rng, "video")
    return render_face(face, np.zeros(15), (0.0, 1.0, 0.0, 0.0), look, size, rng)[:, :, ::-1].copy()


def write_long_video(path: str, frames: int, width: int, height: int, fps: int, tile_size: int) -> None:
    """H.264 at ``fps``: the face drifts on a slow Lissajous path over a gradient, so that it is detected and
    tracked in every frame as one person."""
    import av

    tile = face_tile(tile_size)
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack([60 + 80 * x / width, 70 + 60 * y / height, np.full_like(x, 90.0)], -1).astype(np.uint8)
    room_x, room_y = width - tile_size, height - tile_size
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(frames):
            left = int(room_x * (0.5 + 0.5 * np.sin(k / 97.0)))
            top = int(room_y * (0.5 + 0.5 * np.sin(k / 61.0)))
            image = background.copy()
            image[top:top + tile_size, left:left + tile_size] = tile
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=24000)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--face", type=int, default=96, help="the face tile's size in pixels")
    parser.add_argument("--samples", type=int, default=20, help="RSS samples along the video")
    parser.add_argument("--video", default=None, help="where the video is written (kept; reused if it exists with "
                                                      "the same frame count)")
    parser.add_argument("--ckpt", nargs="+", default=["runs/demo_mtl/checkpoints/best_mtl.pth"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    video = args.video or f"/tmp/predict_memory_{args.frames}_{args.width}x{args.height}.mp4"
    from datasets.media.video import estimate_frames

    if not os.path.isfile(video) or estimate_frames(video) != args.frames:
        started = time.perf_counter()
        write_long_video(video, args.frames, args.width, args.height, args.fps, args.face)
        print(json.dumps({"wrote": video, "frames": args.frames, "seconds": round(time.perf_counter() - started, 1)}),
              flush=True)

    predictor = Predictor(args.ckpt, device=args.device, precision=args.precision)
    every = max(1, args.frames // args.samples)
    samples = []
    started = time.perf_counter()
    original = predict_module.read_frames

    def sampled_frames(path, *rest, **options):
        """The video's frames, with the RSS sampled every ``every`` decoded frames (decoding runs at most a detector
        batch or two ahead of the model)."""
        for frame in original(path, *rest, **options):
            if frame.index == 1 or frame.index % every == 0:
                sample = {"frame": frame.index, "rss_mb": round(status_mb("VmRSS"), 1),
                          "seconds": round(time.perf_counter() - started, 1)}
                samples.append(sample)
                print(json.dumps(sample), flush=True)
            yield frame

    predict_module.read_frames = sampled_frames
    try:
        table = predictor.video(video)
    finally:
        predict_module.read_frames = original
    seconds = time.perf_counter() - started
    after = status_mb("VmRSS")
    frames = int(table["frame"].nunique())
    faces = int(table["track"].notna().sum())
    table_mb = table.memory_usage(deep=True).sum() / 2 ** 20

    def at(share):
        target = share * frames
        return min(samples, key=lambda s: abs(s["frame"] - target))["rss_mb"]

    tail = [s for s in samples if s["frame"] >= 0.25 * frames]
    slope = float(np.polyfit([s["frame"] for s in tail], [s["rss_mb"] for s in tail], 1)[0]) if len(tail) > 1 else 0.0
    print(json.dumps({
        "final": True, "frames": frames, "faces": faces, "rows": len(table), "seconds": round(seconds, 1),
        "frames_per_s": round(frames / seconds, 1), "rss_mb_start": samples[0]["rss_mb"],
        "rss_mb_25": at(0.25), "rss_mb_50": at(0.5), "rss_mb_75": at(0.75), "rss_mb_100": at(1.0),
        "rss_mb_after_table": round(after, 1), "peak_rss_mb": round(status_mb("VmHWM"), 1),
        "growth_mb_per_10k_frames": round(slope * 10000, 2),
        "table_mb": round(table_mb, 2), "table_mb_per_10k_rows": round(table_mb / len(table) * 10000, 2),
        "video": video, "size": f"{args.width}x{args.height}", "ckpt": args.ckpt, "device": args.device,
    }), flush=True)


if __name__ == "__main__":
    main()
