"""What ``main_prepare.py`` runs: raw videos in, the prepared Aff-Wild2 layout out (``datasets.media.prepared``).

Each process takes every ``world``-th video of the sorted list (rank r: videos r, r + world, ...), so the files do
not depend on the number of processes: a video is prepared the same way wherever it runs. A video's files are made
in ``OUT/.staging/<video>/`` and then moved into place; the plan of that move is written first, so a run killed in
the middle of it finishes the move on the next run, and a video's record in ``OUT/.prepared/<video>.json``, written
last, marks it finished: a rerun skips finished videos and redoes the one in progress. Rank 0 then writes
``videos.json`` from the records of every finished video.

A video that cannot be read costs one line naming it; the others are prepared in full, and the run ends with status 2
and the list of what failed.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import sys
import threading
import time
import wave

import cv2
import numpy as np

from datasets.media import prepared
from datasets.media.faces import DETECTORS, FacePipeline, Tracker, align, make_detector
from datasets.media.video import (
    MediaError,
    estimate_frames,
    find_videos,
    first_frame_time,
    probe,
    read_audio,
    read_frames,
    video_name,
)
from utils import dist
from utils.atomic import atomic_write, move_atomic, write_text_atomic
from utils.errors import UserError

STAGING = ".staging"
RECORDS = ".prepared"
PREVIEW = "preview"
PREVIEW_FRAMES = 12
MIN_CROP, MAX_CROP = 16, 1024


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main_prepare.py", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="+", metavar="PATH",
                        help="video files, or folders searched at any depth for video files")
    parser.add_argument("--output-dir", help="the prepared layout is written here (default for --demo: "
                                             "runs/prepare_demo)")
    parser.add_argument("--crop-size", type=int, default=112, help="side of the aligned face crops in pixels "
                                                                   "(default 112, as Aff-Wild2's)")
    parser.add_argument("--min-face", type=int, default=40,
                        help="smallest face searched, in pixels of the upright frame (default 40; facenet-pytorch's "
                             "MTCNN default is 20: smaller finds smaller faces, and costs more)")
    parser.add_argument("--detector", choices=sorted(DETECTORS), default="mtcnn",
                        help="face detector (default mtcnn, whose weights come with facenet-pytorch)")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per detector batch (default 16)")
    parser.add_argument("--detect-every", type=int, default=None, metavar="K",
                        help="search the whole frame on every K-th frame and, between those, only around the faces "
                             "they found (default 4, or --min-track when smaller; 1: every frame; at most "
                             "--min-track, so that no face that can make a track is skipped)")
    parser.add_argument("--min-track", type=int, default=5,
                        help="tracks with fewer faces are dropped (and counted) as spurious detections (default 5)")
    parser.add_argument("--max-gap", type=int, default=12,
                        help="frames a track may miss its face and still continue (default 12)")
    parser.add_argument("--jpeg-quality", type=int, default=95, help="quality of the crop JPEGs (default 95)")
    parser.add_argument("--audio-only", action="store_true",
                        help="write the sound, frame times and videos.json without detecting faces")
    parser.add_argument("--preview", action="store_true",
                        help="also write preview/<video>.png: frames with boxes, landmarks and track names")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="where the detector runs (default auto: a GPU when there is one)")
    parser.add_argument("--demo", action="store_true",
                        help="render a few synthetic videos, prepare them and score the result against the truth")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def check_args(args) -> None:
    if not (MIN_CROP <= args.crop_size <= MAX_CROP):
        raise UserError(f"--crop-size must be between {MIN_CROP} and {MAX_CROP} pixels, got {args.crop_size}")
    for name, low in (("min_face", 12), ("batch_size", 1), ("min_track", 1), ("max_gap", 0)):
        if getattr(args, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    if not 1 <= detect_every(args) <= args.min_track:
        raise UserError(f"--detect-every must be between 1 and --min-track ({args.min_track}), got "
                        f"{args.detect_every}")
    if not 1 <= args.jpeg_quality <= 100:
        raise UserError(f"--jpeg-quality must be between 1 and 100, got {args.jpeg_quality}")
    if not args.demo and (not args.videos or not args.output_dir):
        raise UserError("give --videos PATH [PATH ...] and --output-dir OUT (or --demo)")


def detect_every(args) -> int:
    """``--detect-every``, or its default: 4, or ``--min-track`` when that is smaller."""
    return args.detect_every if args.detect_every is not None else min(4, args.min_track)


def main(description: str, argv=None) -> None:
    args = build_parser(description).parse_args(argv)
    try:
        check_args(args)
        if args.demo:
            run_demo(args)
            return
        failures = prepare(args)
    except UserError as error:
        if _first_process():
            print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    if failures:
        if _first_process():
            print(f"error: {len(failures)} input(s) failed (each named above): "
                  + ", ".join(path for path, _ in failures), file=sys.stderr, flush=True)
        sys.exit(2)


def _first_process() -> bool:
    """Rank 0 of a torchrun launch, or a single process (asked after the process group has ended)."""
    return int(os.environ.get("RANK", "0")) == 0


# ---------------------------------------------------------------------------------------------------------------------
# The run


def prepare(args) -> list[tuple[str, str]]:
    """Prepare ``args.videos`` into ``args.output_dir``; returns ``(path, message)`` of each failed input (empty
    when all went well)."""
    from utils.lock import OutputDirLock

    device = dist.setup(args.device)
    try:
        videos, failures = _collect(args.videos)
        lock = OutputDirLock(args.output_dir, "main_prepare.py") if dist.is_main() else None
        refused = None
        if lock is not None:
            try:
                lock.acquire()
                os.makedirs(os.path.join(args.output_dir, RECORDS), exist_ok=True)
            except (UserError, OSError) as error:
                refused = str(error) if isinstance(error, UserError) else f"cannot write to {args.output_dir}: {error}"
                lock.release()
        refused = dist.broadcast_object(refused)  # every rank stops when rank 0 cannot hold the folder
        if refused:
            raise UserError(refused)
        try:
            mine = videos[dist.rank()::dist.world_size()]
            detector = None if args.audio_only else make_detector(args.detector, device, args.min_face)
            stats, failed = _prepare_share(mine, args, detector)
            everything = _gather((stats, failed))
            if dist.is_main():
                failures += [failure for _, failed_here in everything for failure in failed_here]
                all_stats = [s for part, _ in everything for s in part]
                prepared.write_videos(args.output_dir, _records(args.output_dir))
                _summary(all_stats, len(videos), failures, args)
        finally:
            dist.barrier()
            if lock is not None:
                lock.release()
    finally:
        dist.cleanup()
    return failures


def _collect(paths) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(name, path) of every video found, sorted by name, and (path, message) of each path that is not usable
    (said on rank 0)."""
    failures, seen, videos = [], {}, []
    for path in paths:
        try:
            found = find_videos([path])
        except MediaError as error:
            failures.append((path, str(error)))
            continue
        for video in found:
            name = video_name(video)
            if name in seen and os.path.abspath(seen[name]) != os.path.abspath(video):
                failures.append((video, f"{video}: another video has the name {name} ({seen[name]}); rename one"))
                continue
            if name not in seen:
                seen[name] = video
                videos.append((name, video))
    if dist.is_main():
        for _, message in failures:
            _say(message, error=True)
    return sorted(videos), failures


def _gather(value):
    if not dist.is_distributed():
        return [value]
    import torch.distributed

    parts = [None] * dist.world_size()
    torch.distributed.all_gather_object(parts, value)
    return parts


def _say(message: str, error: bool = False) -> None:
    """A line from any rank (each rank's own videos), above the progress bar."""
    from tqdm import tqdm

    tqdm.write(("error: " if error else "") + message, file=sys.stderr if error else sys.stdout)


def _record_path(root: str, name: str) -> str:
    return os.path.join(root, RECORDS, f"{name}.json")


def _read_record(root: str, name: str):
    try:
        with open(_record_path(root, name), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _records(root: str) -> dict:
    folder = os.path.join(root, RECORDS)
    videos = {}
    for entry in sorted(os.listdir(folder)):
        if entry.endswith(".json") and not entry.startswith("."):
            record = _read_record(root, entry[:-5])
            if record is not None:
                videos[entry[:-5]] = record["video"]
    return videos


class _Progress:
    """One bar on rank 0 over its frames (the total estimated from the containers), with videos done and ETA."""

    def __init__(self, videos, enabled: bool):
        self.bar = None
        if enabled and dist.is_main():
            from tqdm import tqdm

            total = 0
            for _, path in videos:
                total += estimate_frames(path)
            self.bar = tqdm(total=total or None, unit="frame", dynamic_ncols=True, smoothing=0.1)
            self.count = len(videos)
            self.done = 0
            self.bar.set_postfix_str(f"videos 0/{self.count}")

    def frames(self, count: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def video_done(self) -> None:
        if self.bar is not None:
            self.done += 1
            self.bar.set_postfix_str(f"videos {self.done}/{self.count}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _prepare_share(videos, args, detector) -> tuple[list[dict], list[tuple[str, str]]]:
    stats, failed = [], []
    progress = _Progress(videos, not args.no_progress)
    try:
        for name, path in videos:
            record = _read_record(args.output_dir, name)
            if record is not None and (args.audio_only or record.get("faces")):
                # a run killed between writing the record and cleaning up left its staging folder
                shutil.rmtree(os.path.join(args.output_dir, STAGING, name), ignore_errors=True)
                stats.append(dict(record["stats"], skipped=True))
                progress.frames(record["video"]["frames"])
                progress.video_done()
                continue
            try:
                stats.append(prepare_video(name, path, args, detector, progress))
            except (MediaError, OSError) as error:
                message = str(error) if isinstance(error, MediaError) else f"{path}: {error}"
                _say(message, error=True)
                failed.append((path, message))
                shutil.rmtree(os.path.join(args.output_dir, STAGING, name), ignore_errors=True)
            progress.video_done()
    finally:
        progress.close()
    return stats, failed


# ---------------------------------------------------------------------------------------------------------------------
# One video


class _JpegWriter:
    """Aligns and writes crops in a background thread (OpenCV releases the GIL), a bounded queue ahead."""

    def __init__(self, quality: int, crop_size: int):
        self.quality, self.crop_size = quality, crop_size
        self.jobs: queue.Queue = queue.Queue(maxsize=32)
        self.error = None
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def put(self, image, landmarks, path) -> None:
        if self.error is not None:
            raise self.error
        self.jobs.put((image, landmarks, path))

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is not None:
                continue
            image, landmarks, path = job
            try:
                crop = cv2.cvtColor(align(image, landmarks, self.crop_size), cv2.COLOR_RGB2BGR)
                ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                if not ok:
                    raise OSError(f"cannot encode {path}")
                with open(path, "wb") as handle:
                    handle.write(data.tobytes())
            except BaseException as error:  # handed to the producer
                self.error = error

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def prepare_video(name: str, path: str, args, detector, progress=None) -> dict:
    """Prepare one video into the output folder (its files become final together); returns its statistics."""
    root = args.output_dir
    staging = os.path.join(root, STAGING, name)
    plan_file = os.path.join(staging, "commit.json")
    if os.path.exists(plan_file):  # killed while moving a finished video into place: finish the move
        with open(plan_file, encoding="utf-8") as handle:
            plan = json.load(handle)
        _commit(root, name, plan)
        return dict(plan["record"]["stats"], skipped=True)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    started = time.perf_counter()
    info = probe(path)
    times_file = os.path.join(staging, "times.txt")
    faces_raw = os.path.join(staging, "faces.raw.csv")
    preview = _Preview(args.preview)
    join_gap = max(1, int(round(3 * (info.fps or 25))))  # a person back in the frame within 3 s stays one track
    tracker = Tracker(max_gap=args.max_gap, min_length=args.min_track, join_gap=join_gap)
    frames = last = 0
    with open(times_file, "w", encoding="utf-8", newline="\n") as times_out:
        if args.audio_only:
            for frame in read_frames(path, rgb=False):
                times_out.write(f"{frame.time:.6f}\n")
                frames, last = frame.index, frame
                if progress is not None:
                    progress.frames()
        else:
            crops = os.path.join(staging, "tracks")
            os.makedirs(crops)
            made = set()
            writer = _JpegWriter(args.jpeg_quality, args.crop_size)
            pipeline = FacePipeline(detector, args.batch_size, tracker, detect_every(args))
            try:
                with open(faces_raw, "w", encoding="utf-8", newline="\n") as faces_out:
                    for frame, faces in pipeline.run(read_frames(path)):
                        times_out.write(f"{frame.time:.6f}\n")
                        frames, last = frame.index, frame
                        if not faces:
                            faces_out.write(prepared.format_face_row(frame.index, frame.time, None) + "\n")
                        for face in faces:
                            folder = os.path.join(crops, str(face.track))
                            if face.track not in made:
                                os.makedirs(folder)
                                made.add(face.track)
                            writer.put(frame.image, face.landmarks, os.path.join(folder, f"{frame.index:05d}.jpg"))
                            faces_out.write(prepared.format_face_row(frame.index, frame.time, str(face.track),
                                                                     face.score, face.box, face.landmarks) + "\n")
                        preview.offer(frame, faces)
                        if progress is not None:
                            progress.frames()
            finally:
                writer.close()
    audio_seconds = None
    if info.has_audio:
        audio_seconds = _write_audio(path, os.path.join(staging, "audio.wav"))
    duration = last.time + last.duration
    record = dict(fps=round(float(info.fps), 6), frames=frames, width=info.width, height=info.height,
                  rotation=info.rotation, duration=round(duration, 6), audio_seconds=audio_seconds, tracks={})
    stats = dict(video=name, frames=frames, faces=0, tracks=0, dropped_tracks=0, frames_without_face=frames,
                 has_audio=audio_seconds is not None, seconds=0.0, skipped=False)
    moves = [("times.txt", prepared.times_path(root, name))]
    if audio_seconds is not None:
        moves.append(("audio.wav", prepared.wav_path(root, name)))
    if not args.audio_only:
        person, order, dropped = tracker.finish()
        folders = dict(zip(order, prepared.track_folders(name, len(order))))
        folder_of = {track: folders[owner] for track, owner in person.items()}
        counts, faces_total, empty = _finish_faces(faces_raw, os.path.join(staging, "faces.csv"), folder_of)
        _gather_crops(staging, folder_of)
        record["tracks"] = {folder: counts.get(folder, 0) for folder in folders.values()}
        stats.update(faces=faces_total, tracks=len(folders), dropped_tracks=dropped, frames_without_face=empty)
        moves.append(("faces.csv", prepared.faces_path(root, name)))
        moves += [(os.path.join("crops", folder), prepared.crop_dir(root, folder)) for folder in folders.values()]
        if args.preview:
            preview.write(os.path.join(staging, "preview.png"), folder_of)
            moves.append(("preview.png", os.path.join(root, PREVIEW, f"{name}.png")))
    stats["seconds"] = round(time.perf_counter() - started, 3)
    plan = dict(record=dict(video=record, faces=not args.audio_only, stats=stats),
                moves=[(source, os.path.relpath(target, root)) for source, target in moves])
    with atomic_write(plan_file) as handle:
        json.dump(plan, handle)
    _commit(root, name, plan)
    return stats


def _write_audio(path: str, target: str) -> float | None:
    """The video's sound as a 16 kHz mono WAV at ``target``, streamed; its length in seconds (None: no sample)."""
    origin = first_frame_time(path)
    count = 0
    with wave.open(target, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(prepared.SAMPLE_RATE)
        for chunk in read_audio(path, origin):
            writer.writeframes(np.round(np.clip(chunk, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())
            count += len(chunk)
    if count == 0:
        os.remove(target)
        return None
    return round(count / prepared.SAMPLE_RATE, 6)


def _finish_faces(raw: str, target: str, folder_of: dict) -> tuple[dict, int, int]:
    """Rewrite the provisional face rows with the tracks' folder names, dropping the faces of dropped tracks (a frame
    left without a face keeps one empty row); returns (faces per folder, faces, frames without a face)."""
    counts: dict[str, int] = {}
    total = empty = 0
    with open(raw, encoding="utf-8") as rows, open(target, "w", encoding="utf-8", newline="\n") as out:
        out.write(",".join(prepared.FACE_COLUMNS) + "\n")
        current, kept, frame_time = None, 0, None

        def close_frame():
            nonlocal empty
            if current is not None and kept == 0:
                out.write(prepared.format_face_row(current, frame_time, None) + "\n")
                empty += 1

        for line in rows:
            fields = line.rstrip("\n").split(",")
            frame = int(fields[0])
            if frame != current:
                close_frame()
                current, kept, frame_time = frame, 0, float(fields[1])
            if fields[2] == "" or int(fields[2]) not in folder_of:
                continue
            folder = folder_of[int(fields[2])]
            fields[2] = folder
            out.write(",".join(fields) + "\n")
            counts[folder] = counts.get(folder, 0) + 1
            kept += 1
            total += 1
        close_frame()
    return counts, total, empty


def _gather_crops(staging: str, folder_of: dict) -> None:
    """Move the provisional tracks' crops into their folders (joined tracks never share a frame); drop the rest."""
    tracks = os.path.join(staging, "tracks")
    for entry in sorted(os.listdir(tracks), key=int):
        source = os.path.join(tracks, entry)
        folder = folder_of.get(int(entry))
        if folder is None:
            continue
        target = os.path.join(staging, "crops", folder)
        os.makedirs(target, exist_ok=True)
        for name in os.listdir(source):
            os.rename(os.path.join(source, name), os.path.join(target, name))  # within the staging folder
    shutil.rmtree(tracks)


def _commit(root: str, name: str, plan: dict) -> None:
    """Move a finished video's staged files into place (again where a killed run left off), then write its record."""
    staging = os.path.join(root, STAGING, name)
    for source, target in plan["moves"]:
        source, target = os.path.join(staging, source), os.path.join(root, target)
        if not os.path.exists(source):
            continue  # moved before the kill
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(source) and os.path.exists(target):
            shutil.rmtree(target)  # a crop folder left by an earlier, different preparation of this video
        move_atomic(source, target)
    write_text_atomic(_record_path(root, name), json.dumps(plan["record"], sort_keys=True) + "\n")
    shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# Preview and summary


class _Preview:
    """Keeps up to 12 frames spread over the video (small copies with their faces) for a contact sheet."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.kept: list = []
        self.every = 1
        self.width = 320

    def offer(self, frame, faces) -> None:
        if not self.enabled or (frame.index - 1) % self.every:
            return
        scale = self.width / frame.image.shape[1]
        small = cv2.resize(frame.image, (self.width, max(1, int(round(frame.image.shape[0] * scale)))),
                           interpolation=cv2.INTER_AREA)
        self.kept.append((frame.index, small, scale, [(f.track, f.box.copy(), f.landmarks.copy()) for f in faces]))
        if len(self.kept) == 2 * PREVIEW_FRAMES:  # keep every other one, sample half as often from now on
            self.kept = self.kept[::2]
            self.every *= 2

    def write(self, path: str, folder_of: dict) -> None:
        picks = np.unique(np.linspace(0, len(self.kept) - 1, PREVIEW_FRAMES).round().astype(int)) if self.kept else []
        shown = [self.kept[i] for i in picks]
        if not shown:
            return
        tiles = []
        for index, image, scale, faces in shown:
            tile = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            for track, box, landmarks in faces:
                colour = (0, 220, 0) if track in folder_of else (0, 0, 255)
                x1, y1, x2, y2 = (box * scale).round().astype(int)
                cv2.rectangle(tile, (x1, y1), (x2, y2), colour, 1)
                for x, y in landmarks * scale:
                    cv2.circle(tile, (int(round(x)), int(round(y))), 2, (255, 200, 0), -1)
                cv2.putText(tile, folder_of.get(track, "dropped"), (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                            0.35, colour, 1)
            cv2.putText(tile, f"frame {index}", (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
            tiles.append(tile)
        columns = 4
        blank = np.zeros_like(tiles[0])
        tiles += [blank] * (-len(tiles) % columns)
        rows = [np.hstack(tiles[k:k + columns]) for k in range(0, len(tiles), columns)]
        ok, data = cv2.imencode(".png", np.vstack(rows))
        with open(path, "wb") as handle:
            handle.write(data.tobytes())


def _summary(stats: list[dict], total: int, failures: list, args) -> None:
    done = [s for s in stats if not s.get("skipped")]
    frames = sum(s["frames"] for s in done)
    seconds = sum(s["seconds"] for s in done)
    line = (f"prepared {len(done)} of {total} videos into {args.output_dir} ({len(stats) - len(done)} already done, "
            f"{len(failures)} failed): {frames} frames")
    if not args.audio_only:
        line += (f", {sum(s['faces'] for s in done)} faces in {sum(s['tracks'] for s in done)} tracks "
                 f"({sum(s['dropped_tracks'] for s in done)} short tracks dropped), "
                 f"{sum(s['frames_without_face'] for s in done)} frames without a face")
    line += f", {sum(1 for s in done if not s['has_audio'])} videos without sound"
    if seconds > 0:
        line += f"; {frames / seconds:.1f} frames/s per process"
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Demo


def run_demo(args) -> None:
    """Render a few synthetic videos (cached), prepare them and score the result against the renderer's truth."""
    from datasets.synthetic import videos as synthetic_videos

    started = time.perf_counter()
    out = args.output_dir or os.path.join("runs", "prepare_demo")
    source = os.path.join(out, "videos")
    synthetic_videos.generate_videos(source, **synthetic_videos.DEMO)
    args.videos, args.output_dir = [os.path.join(source, "videos")], os.path.join(out, "prepared")
    failures = prepare(args)
    if failures:
        raise UserError("the demo's videos failed: " + "; ".join(message for _, message in failures))
    scores = synthetic_videos.score_prepared(source, args.output_dir)
    scores["seconds"] = round(time.perf_counter() - started, 1)
    print(synthetic_videos.describe_scores(scores), flush=True)
    write_text_atomic(os.path.join(out, "demo_scores.json"), json.dumps(scores, indent=1) + "\n")
