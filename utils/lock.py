"""One process owns an output folder: an exclusive ``flock`` on ``<folder>/.lock`` for as long as the run lasts.

Two runs writing into one folder would interleave their logs, resume from each other's half-finished checkpoints
and report each other's scores; the second one is refused with one line naming the holder instead. The kernel
drops the lock when its process ends in any way (``kill -9`` included), so a killed run never blocks its resume.
The file keeps the holder's pid, host, program and start time (one JSON line) for that message.

    with OutputDirLock(args.output_dir, "main_mtl.py"):
        ...  # the run

or ``lock = OutputDirLock(path, program); lock.acquire(); ...; lock.release()``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from utils.errors import UserError

LOCK_NAME = ".lock"

# Descriptors of the locks this process holds. A forked child (a DataLoader worker) inherits them, and a flock lasts
# while any copy is open: the child closes its copies at once, so a worker that outlives a killed run for a few
# seconds does not hold the folder. /dev/null replaces the copy rather than closing it: the number stays valid for
# the inherited file object, and flock(LOCK_UN) would release the parent's lock too.
_HELD: set[int] = set()


def _close_in_child() -> None:
    if not _HELD:
        return
    null = os.open(os.devnull, os.O_RDWR)
    for descriptor in _HELD:
        os.dup2(null, descriptor)
    os.close(null)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class OutputDirLock:
    """An exclusive lock on the output folder ``path`` for ``program`` (named in the message another run gets)."""

    def __init__(self, path: str, program: str):
        self.path = path
        self.program = program
        self._handle = None

    @property
    def file(self) -> str:
        return os.path.join(self.path, LOCK_NAME)

    def acquire(self) -> OutputDirLock:
        """Take the lock (creating the folder); a ``UserError`` when another process holds it or the folder cannot
        be written."""
        if self._handle is not None:
            return self
        try:
            os.makedirs(self.path, exist_ok=True)
            # "a+" neither truncates nor moves anything until the lock is ours: the holder's line stays readable
            handle = open(self.file, "a+", encoding="utf-8")
        except OSError as err:
            raise UserError(f"cannot write to the output folder {self.path}: {err.strerror or err}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = describe_holder(handle.read())
            handle.close()
            raise UserError(f"the output folder {self.path} is in use by another run ({holder}); wait for it to "
                            f"end, or give this run another output folder") from None
        except OSError as err:  # a file system without locks
            handle.close()
            raise UserError(f"cannot lock the output folder {self.path}: {err.strerror or err}") from None
        record = dict(pid=os.getpid(), host=socket.gethostname(), program=self.program,
                      started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        self._handle = handle
        _HELD.add(handle.fileno())
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        _HELD.discard(handle.fileno())
        try:
            handle.seek(0)
            handle.truncate()  # the file stays (removing it would race with a run opening it); the holder goes
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        finally:
            handle.close()

    @property
    def held(self) -> bool:
        return self._handle is not None

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def describe_holder(text: str) -> str:
    """``pid 123 (main_mtl.py) on host, started 2026-01-01 10:00:00 UTC`` from a lock file's line."""
    try:
        record = json.loads(text.strip().splitlines()[0])
        return (f"pid {record['pid']} ({record['program']}) on {record['host']}, started {record['started']}")
    except (ValueError, IndexError, KeyError, TypeError):
        return "a process that has not written its name yet"
