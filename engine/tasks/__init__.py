"""The stages this project runs, by the name of their entry point's track: ``main_mtl.py`` is "mtl", ``main_lsd.py``
is "lsd", ``main_pretrain.py`` "pretrain", ``main_temporal.py`` "temporal", ``main_video.py`` "video". Each is a
:class:`engine.task.Task`; a new stage adds its class here."""

from __future__ import annotations

from engine.tasks.ce import CETask
from engine.tasks.lsd import LSDTask
from engine.tasks.mtl import MTLTask
from engine.tasks.pretrain import PretrainTask
from engine.tasks.temporal import TemporalTask
from engine.tasks.video import VideoTask

TASKS = {task.name: task for task in (MTLTask, LSDTask, PretrainTask, TemporalTask, VideoTask, CETask)}


def task_class(track: str):
    try:
        return TASKS[track]
    except KeyError:
        raise ValueError(f"unknown track {track!r}; expected one of {sorted(TASKS)}") from None


def make_task(args):
    """The task of a parsed command line (``args.track``), reading the flags it defined."""
    return task_class(args.track)(args)
