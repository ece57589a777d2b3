"""The one way this project replaces a file: write a temporary file in the same folder, fsync, ``os.replace``.

A crash, a full disk or a killed process during the write leaves the previous file intact; a reader never sees a
half-written file. Temporary files are named ``.tmp-*`` (a run's output directory removes leftovers at start).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_write(path, mode: str = "w", **open_kwargs):
    """``with atomic_write(path) as handle: ...`` writes ``path`` all at once, or not at all.

    ``mode`` is "w" (text, UTF-8 and "\\n" line ends unless given) or "wb". Raises ``OSError`` when the folder is
    not writable or the disk is full; the temporary file is then removed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
        open_kwargs.setdefault("newline", "\n")
    try:
        with os.fdopen(descriptor, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; a plain open would give the umask's mode
        os.replace(temporary, path)
    except BaseException:
        try:
            os.remove(temporary)
        except OSError:
            pass
        raise
    _sync_folder(folder)


def move_atomic(source, target) -> None:
    """Rename ``source`` (a finished file or folder) to ``target`` in one step, replacing a file there, and make the
    rename durable; for work made aside (in a staging folder on the same file system) and moved into place."""
    os.replace(source, target)
    _sync_folder(os.path.dirname(os.path.abspath(target)))


def write_text_atomic(path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


def _sync_folder(folder: str) -> None:
    """Make the rename itself durable (where the file system allows it)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError:
        pass


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: setting the umask to read it is not safe while other threads create files
