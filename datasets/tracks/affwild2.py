"""The single-task tracks of ABAW2-8 (Aff-Wild2 videos): one annotation file per video and task, read as released.

Layout (ABAW4.md, "Single-task tracks")::

    cropped_aligned/<video>/<5-digit frame>.jpg
    <N>th ABAW Annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt
    <N>th ABAW Annotations/EXPR_Classification_Challenge/...     (EXPR_Recognition_Challenge in some rounds)
    <N>th ABAW Annotations/AU_Detection_Challenge/...

A file's first line is its header; data line i (from 1) is frame ``<video>/%05d.jpg`` of i. Several tasks are joined
per frame into the MTL label rows of :mod:`datasets.mtl` (``[valence, arousal, expression, 12 AUs]`` with the missing
codes), so that one EMMA trains on all of them with the masked losses: a frame's label for a task comes from that
task's file, and is missing where the file or its line is absent. ``Test_Set/`` folders of the same format hold test
labels (only the synthetic generator writes them).

Test lists come in two forms: a sample file (header ``image_location,...`` naming the task's columns, then one
image location per row) and a list of video names (one per line, every frame 1..N of the video, N its last frame
with an image).
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass

import numpy as np

from datasets.images import list_image_folder
from datasets.mtl import IMAGE_DIR, Annotations, summarise_missing
from utils.abaw import (
    AU_MISSING,
    AU_NAMES,
    EXPR_MISSING,
    EXPR_NAMES,
    LABEL_AU,
    LABEL_COLUMNS,
    LABEL_EXPR,
    LABEL_VA,
    NUM_EXPR,
    VA_MISSING,
)
from utils.errors import UserError

TASKS = ("va", "expr", "au")
CHALLENGES = {"va": ("VA_Estimation_Challenge",),
              "expr": ("EXPR_Classification_Challenge", "EXPR_Recognition_Challenge"),
              "au": ("AU_Detection_Challenge",)}
SPLIT_DIRS = {"train": "Train_Set", "val": "Validation_Set", "test": "Test_Set"}
COLUMNS = {"va": ("valence", "arousal"), "expr": EXPR_NAMES, "au": AU_NAMES}
LABELS = {"va": LABEL_VA, "expr": slice(LABEL_EXPR, LABEL_EXPR + 1), "au": LABEL_AU}  # columns of an MTL label row
MISSING = {"va": VA_MISSING, "expr": EXPR_MISSING, "au": AU_MISSING}
WIDTHS = {"va": 2, "expr": 1, "au": len(AU_NAMES)}  # values per line (an EXPR line holds one class index)
SUBMISSION_HEADERS = {task: ",".join(("image_location", *COLUMNS[task])) for task in TASKS}
_FRAME_KEY = 10 ** 8  # key of a frame: video index * _FRAME_KEY + frame number


def parse_tasks(text: str) -> tuple[str, ...]:
    """``mtl``, or a comma list of va, expr, au (each once), in the canonical order va, expr, au."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if names == ["mtl"]:
        return ("mtl",)
    unknown = [name for name in names if name not in TASKS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"expected mtl or a comma list of {', '.join(TASKS)} (each once), got {text!r}")
    return tuple(task for task in TASKS if task in names)


def has_label(task: str, targets: np.ndarray) -> np.ndarray:
    """Rows of MTL label rows that carry a label for ``task`` (for AU: at least one AU)."""
    return (targets[:, LABELS[task]] != MISSING[task]).any(axis=1)


# ---- finding the folders

def find_challenge_dirs(roots, tasks) -> dict[str, str]:
    """The challenge folder of each task, searched at any depth under ``roots`` (the image folder is not entered).
    A task without a folder, or with several, is a UserError."""
    wanted = {name: task for task in tasks for name in CHALLENGES[task]}
    found: dict[str, list[str]] = {task: [] for task in tasks}
    for root in roots:
        if not os.path.isdir(root):
            raise UserError(f"annotation folder not found: {root}")
        for folder, subfolders, _ in os.walk(root):
            keep = []
            for name in sorted(subfolders):
                if name in wanted:
                    found[wanted[name]].append(os.path.join(folder, name))
                elif name != IMAGE_DIR and not name.startswith("."):
                    keep.append(name)
            subfolders[:] = keep  # a challenge folder's own contents and the frames are not searched
    for task, paths in found.items():
        names = " or ".join(CHALLENGES[task])
        if not paths:
            raise UserError(f"no {names} folder under {', '.join(roots)}; pass --annotation-dir")
        if len(set(paths)) > 1:
            raise UserError(f"several {names} folders under {', '.join(roots)} ({', '.join(sorted(set(paths)))}); "
                            f"pass the one to use with --annotation-dir")
    return {task: paths[0] for task, paths in found.items()}


# ---- reading one annotation file

def _bad_line(path: str, line: int, reason: str) -> UserError:
    return UserError(f"{path}, line {line}: {reason}; fix or remove that line")


def _read_lines(path: str, what: str) -> list[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8-sig").splitlines()
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not a UTF-8 text file ({err.reason} at byte {err.start})") from None


def _fields(line: str) -> list[str]:
    return [field.strip() for field in line.strip().rstrip(",").split(",")]


def _header_task(fields: list[str]) -> str | None:
    """The task whose column names these are (case and spaces ignored), or None."""
    lowered = [field.replace(" ", "").lower() for field in fields]
    for task, columns in COLUMNS.items():
        if lowered == [column.lower() for column in columns]:
            return task
    return None


def read_track_file(path: str, task: str) -> np.ndarray:
    """The labels of a per-video annotation file, float32 (lines, 2 | 1 | 12), row i = frame i + 1.

    Windows line endings, a byte-order mark, spaces around fields, a trailing comma and blank lines at the end are
    accepted; any other malformed line is a UserError naming the file, the line and the reason. A VA line with -5 in
    either value is not annotated (both become -5).
    """
    lines = _read_lines(path, "annotation file")
    if not lines or _header_task(_fields(lines[0])) != task:
        expected = ",".join(COLUMNS[task])
        raise _bad_line(path, 1, f"header {lines[0].strip()[:80]!r} is not {expected!r}" if lines
                        else f"empty file (expected the header {expected!r})")
    data = lines[1:]
    while data and not data[-1].strip():
        data.pop()
    width = WIDTHS[task]
    rows = [line.strip().rstrip(",") for line in data]
    flat = ",".join(rows).split(",") if rows else []
    try:
        if len(flat) != width * len(rows):
            raise ValueError
        values = np.array(flat, dtype=np.float64).reshape(len(rows), width)
    except ValueError:
        raise _first_bad_line(path, rows, width) from None
    if task == "va":
        values[(values == VA_MISSING).any(axis=1)] = VA_MISSING
        bad = ~(((values >= -1.0) & (values <= 1.0)) | (values == VA_MISSING))
        reason = "{} {:g} is outside [-1, 1] and not the missing code -5"
    elif task == "expr":
        bad = ~(np.isin(values, np.arange(NUM_EXPR)) | (values == EXPR_MISSING))
        reason = "{} {:g} is not an integer in 0..7 or the missing code -1"
    else:
        bad = ~np.isin(values, (0, 1, AU_MISSING))
        reason = "{} is {:g}, not 0, 1 or the missing code -1"
    if bad.any():
        row, col = np.argwhere(bad)[0]
        what = "expression" if task == "expr" else COLUMNS[task][col]
        raise _bad_line(path, int(row) + 2, reason.format(what, values[row, col]))
    return values.astype(np.float32)


def _first_bad_line(path: str, rows: list[str], width: int) -> UserError:
    for number, row in enumerate(rows, start=2):
        fields = [field.strip() for field in row.split(",")]
        if not row:
            return _bad_line(path, number, "blank line (every line is a frame)")
        if len(fields) != width:
            return _bad_line(path, number, f"{len(fields)} fields instead of {width}")
        for field in fields:
            try:
                float(field)
            except ValueError:
                return _bad_line(path, number, f"{field!r} is not a number")
    return UserError(f"{path}: cannot parse")


# ---- a split of several tasks, joined per frame

@dataclass
class _TaskFiles:
    videos: list[str]  # one per file
    values: list[np.ndarray]


def _split_files(challenge_dir: str, split: str) -> list[str] | None:
    """The annotation files (``<video>.txt``) of a split folder, sorted; None when the folder is absent. A folder
    named like one is a UserError."""
    folder = os.path.join(challenge_dir, SPLIT_DIRS[split])
    if not os.path.isdir(folder):
        return None
    with os.scandir(folder) as listing:
        entries = sorted((entry for entry in listing if entry.name.endswith(".txt")), key=lambda entry: entry.name)
    for entry in entries:
        if not entry.is_file():
            raise UserError(f"{entry.path} is not a file: a split folder holds one annotation file per video; move "
                            f"it out of {folder}")
    return [entry.name for entry in entries]


def _read_split(challenge_dir: str, split: str, task: str) -> _TaskFiles | None:
    names = _split_files(challenge_dir, split)
    if names is None:
        return None
    folder = os.path.join(challenge_dir, SPLIT_DIRS[split])
    return _TaskFiles([name[:-len(".txt")] for name in names],
                      [read_track_file(os.path.join(folder, name), task) for name in names])


def shared_videos(challenge_dirs: dict[str, str]) -> list[str]:
    """Videos of one task's Train_Set that are in another task's Validation_Set (the joined model trains on their
    frames, so those tasks' validation scores frames it has seen). A video in both splits of one task is a
    UserError: that task's validation would score its own training frames."""
    videos = {}
    for task, path in challenge_dirs.items():
        for split in ("train", "val"):
            names = _split_files(path, split) or []
            videos[task, split] = {name[:-len(".txt")] for name in names}
        both = sorted(videos[task, "train"] & videos[task, "val"])
        if both:
            raise UserError(f"{len(both)} videos are in both {SPLIT_DIRS['train']} and {SPLIT_DIRS['val']} of {path} "
                            f"(e.g. {', '.join(both[:3])}): validation would score frames the model trains on; "
                            f"keep each video in one split")
    trained = set().union(*(videos[task, "train"] for task in challenge_dirs))
    validated = set().union(*(videos[task, "val"] for task in challenge_dirs))
    return sorted(trained & validated)


def frame_listing(image_root: str, video: str) -> dict[int, str]:
    """Frame number -> image file name of one video folder (one listing; empty when the folder is absent)."""
    folder = os.path.join(image_root, video)
    if not os.path.isdir(folder):
        return {}
    listing = {}
    for name in list_image_folder(folder):
        stem = os.path.splitext(name)[0]
        if stem.isdigit():
            listing[int(stem)] = name
    return listing


@dataclass
class JoinedSplit:
    """Every frame of a split that a task's file has a line for, in (video, frame) order, with its joined labels."""

    videos: list[str]
    frames: np.ndarray  # video index * _FRAME_KEY + frame number
    targets: np.ndarray  # (N, 15) MTL label rows
    tasks: tuple[str, ...]  # the tasks with files in this split

    def names(self, rows=slice(None)) -> np.ndarray:
        """``video/%05d.jpg`` of the frames (as the challenge names them)."""
        frames = self.frames[rows]
        return np.array([f"{self.videos[key // _FRAME_KEY]}/{key % _FRAME_KEY:05d}.jpg" for key in frames],
                        dtype=object)


def join_split(challenge_dirs: dict[str, str], split: str) -> JoinedSplit | None:
    """The tasks' files of ``split`` joined per frame (a frame's label for a task is missing where that task's file
    or line is absent); None when no task has files for the split."""
    per_task = {task: _read_split(path, split, task) for task, path in challenge_dirs.items()}
    per_task = {task: files for task, files in per_task.items() if files is not None and files.videos}
    if not per_task:
        return None
    videos = sorted({video for files in per_task.values() for video in files.videos})
    index = {video: i for i, video in enumerate(videos)}
    keys = {}
    for task, files in per_task.items():
        keys[task] = np.concatenate([index[video] * _FRAME_KEY + np.arange(1, len(values) + 1, dtype=np.int64)
                                     for video, values in zip(files.videos, files.values)])
    frames = np.unique(np.concatenate(list(keys.values())))
    targets = np.empty((len(frames), LABEL_COLUMNS), dtype=np.float32)
    for task in TASKS:
        targets[:, LABELS[task]] = MISSING[task]
    for task, files in per_task.items():
        targets[np.searchsorted(frames, keys[task]), LABELS[task]] = np.concatenate(files.values)
    return JoinedSplit(videos, frames, targets, tuple(task for task in TASKS if task in per_task))


def load_split(challenge_dirs: dict[str, str], image_root: str, split: str, log=print) -> Annotations:
    """The frames of ``split`` that any of the tasks labels and that have an image, as MTL label rows joined per
    frame, in (video, frame) order. Labelled frames whose image is absent are left out with one summary line (each
    video folder is listed once)."""
    joined = join_split(challenge_dirs, split)
    where = ", ".join(os.path.join(path, SPLIT_DIRS[split]) for path in challenge_dirs.values())
    if joined is None:
        raise UserError(f"no annotation files in {where}")
    without = [task for task in challenge_dirs if task not in joined.tasks]
    if without:
        folders = ", ".join(os.path.join(challenge_dirs[task], SPLIT_DIRS[split]) for task in without)
        raise UserError(f"no annotation files in {folders}: the {split} split has no {' or '.join(without)} label; "
                        f"add them, or leave {', '.join(without)} out of --task")
    listings = [frame_listing(image_root, video) for video in joined.videos]
    video_of, number_of = joined.frames // _FRAME_KEY, joined.frames % _FRAME_KEY
    names = np.array([listings[v].get(int(n)) for v, n in zip(video_of, number_of)], dtype=object)
    present = names != None  # noqa: E711 - elementwise on an object array
    labelled = np.zeros(len(names), dtype=bool)
    for task in joined.tasks:
        labelled |= has_label(task, joined.targets)
    summarise_missing(f"{split} annotations", joined.names(labelled & ~present), log=log)
    keep = labelled & present
    if not keep.any():
        raise UserError(f"no annotated frame of {where} has an image under {image_root}; check --data-dir")
    images = np.array([f"{joined.videos[v]}/{name}" for v, name in zip(video_of[keep], names[keep])], dtype=object)
    return Annotations(images=images, targets=joined.targets[keep], lines=number_of[keep] + 1,
                       source=", ".join(sorted(challenge_dirs.values())))


# ---- test lists

@dataclass
class TestList:
    """The frames a task's submission lists, in list order (``video/%05d.jpg`` names as the challenge expects)."""

    task: str
    images: np.ndarray
    source: str


def _list_header(path: str) -> tuple[bool, str | None]:
    """(is a sample file, the task its header names or None) of a test list, from its first line."""
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        first = _fields(handle.readline())
    sample = bool(first) and first[0].lower() == "image_location"
    return sample, (_header_task(first[1:]) if sample and len(first) > 1 else None)


def test_list_task(item: str, tasks) -> tuple[str, str, bool]:
    """(task, path, is a sample file) of a ``--test-list`` entry ``[TASK=]FILE``, from its prefix or its header; only
    the first line is read, so that a run checks its test lists before training."""
    prefix, sep, path = item.partition("=")
    task = prefix.strip().lower()
    if not sep or not task.isidentifier() or os.path.isfile(item):  # a path holding "="
        task, path = None, item
    elif task not in TASKS:
        raise UserError(f"--test-list {item}: unknown task {prefix.strip()!r} (the tasks: {', '.join(TASKS)})")
    if not os.path.isfile(path):
        raise UserError(f"test list not found: {path}")
    sample, named = _list_header(path)
    if task is None and named is None:
        what = "its header does not say which task it lists" if sample else "is a list of video names"
        raise UserError(f"{path}: {what}; say which task it is for: --test-list va={path} (or expr=, au=)")
    if task is not None and named is not None and named != task:
        raise UserError(f"{path}: --test-list {task}= names a {named} sample file")
    task = task or named
    if task not in tasks:
        raise UserError(f"{path} is a test list of the {task} task, which --task does not include")
    return task, path, sample


def read_test_list(item: str, image_root: str, tasks) -> TestList:
    """``[TASK=]FILE`` of ``--test-list``: a sample file (its header names the task) or a list of video names (needs
    ``TASK=``; every frame 1..N of each video, N its last frame with an image)."""
    task, path, sample = test_list_task(item, tasks)
    lines = _read_lines(path, "test list")
    if sample:
        images = [line.strip().split(",")[0].strip() for line in lines[1:] if line.strip()]
    else:
        images = []
        for video in (line.strip().rstrip(",") for line in lines):
            if not video:
                continue
            listing = frame_listing(image_root, video)
            if not listing:
                raise UserError(f"{path}: test video {video} has no frame under {os.path.join(image_root, video)}")
            images.extend(f"{video}/{number:05d}.jpg" for number in range(1, max(listing) + 1))
    if not images:
        raise UserError(f"{path}: the test list names no frame")
    return TestList(task, np.array(images, dtype=object), path)


# Words in the file names of the released lists of test video names -> their task.
_NAME_LIST_TASKS = {"valence_arousal": "va", "expression": "expr", "action_unit": "au"}


def find_test_lists(roots, tasks) -> list[str]:
    """The default of ``--test-list``: for each task, its sample file (``*test_set_sample.txt``, the task named by the
    header), else its released list of video names (``*_test_set_release.txt`` whose name says the task, e.g.
    ``Action_Unit_Detection_Challenge_test_set_release.txt``, given as ``TASK=FILE``), searched at any depth outside
    the image and challenge folders. A task with several candidates of the same kind is a UserError."""
    samples: dict[str, list[str]] = {}
    name_lists: dict[str, list[str]] = {}
    skipped = {IMAGE_DIR, *(name for names in CHALLENGES.values() for name in names)}
    for root in roots:
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = [name for name in subfolders if name not in skipped and not name.startswith(".")]
            for name in sorted(files):
                path, lowered = os.path.join(folder, name), name.lower()
                if lowered.endswith("test_set_sample.txt"):
                    task = _list_header(path)[1]
                    if task in tasks:
                        samples.setdefault(task, []).append(path)
                elif lowered.endswith("_test_set_release.txt"):
                    task = next((task for word, task in _NAME_LIST_TASKS.items() if word in lowered), None)
                    if task in tasks:
                        name_lists.setdefault(task, []).append(f"{task}={path}")
    chosen = []
    for task in TASKS:
        candidates = samples.get(task) or name_lists.get(task) or []
        if len(candidates) > 1:
            raise UserError(f"several {task} test lists under {', '.join(roots)} ({', '.join(candidates)}); pass the "
                            f"ones to use with --test-list")
        chosen += candidates
    return chosen


@dataclass
class TestFrames:
    """The frames to predict for the test lists: ``images`` (unique, with an image, in first-listed order) and, per
    task, the row of ``images`` each listed frame takes its prediction from (the nearest frame of its video with an
    image when it has none)."""

    images: np.ndarray
    rows: dict[str, np.ndarray]
    lists: dict[str, TestList]
    filled: dict[str, int]


def test_frames(lists: list[TestList], image_root: str) -> TestFrames:
    """Resolve the test lists against the image folder (each video folder listed once). A listed frame of a video
    with no image at all is a UserError: filling never crosses videos."""
    by_task = {}
    for test_list in lists:
        if test_list.task in by_task:
            raise UserError(f"two --test-list files for {test_list.task}: {by_task[test_list.task].source} and "
                            f"{test_list.source}")
        by_task[test_list.task] = test_list
    listings: dict[str, dict[int, str]] = {}
    numbers: dict[str, list[int]] = {}  # each video's frame numbers with an image, sorted
    order: dict[str, int] = {}
    images: list[str] = []
    rows, filled = {}, {}
    for task, test_list in by_task.items():
        task_rows = np.empty(len(test_list.images), dtype=np.int64)
        count = 0
        for i, image in enumerate(test_list.images):
            video, _, name = image.rpartition("/")
            if video not in listings:
                listings[video] = frame_listing(image_root, video)
                numbers[video] = sorted(listings[video])
            listing = listings[video]
            if not listing:
                raise UserError(f"{test_list.source}: {image} has no image, and its video has no frame under "
                                f"{os.path.join(image_root, video)} to take it from")
            stem = os.path.splitext(name)[0]
            number = int(stem) if stem.isdigit() else None
            if number not in listing:
                count += 1
                number = _nearest(numbers[video], number or 0)
            source = f"{video}/{listing[number]}"
            if source not in order:
                order[source] = len(images)
                images.append(source)
            task_rows[i] = order[source]
        rows[task], filled[task] = task_rows, count
    return TestFrames(np.array(images, dtype=object), rows, by_task, filled)


def _nearest(sorted_numbers: list[int], number: int) -> int:
    """The closest of the sorted frame numbers to ``number`` (the lower one of two equally close)."""
    at = bisect.bisect_left(sorted_numbers, number)
    candidates = sorted_numbers[max(at - 1, 0):at + 1]
    return min(candidates, key=lambda other: (abs(other - number), other))
