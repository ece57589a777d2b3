"""Bad input in the newer stages and around runs: each case gets one line naming the problem, a non-zero exit and no
traceback, and loses nothing (SPEC, "Bad input gets a clear error and loses nothing"; docs/reliability.md)."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY, run_entry, run_main

from utils.errors import UserError
from utils.lock import OutputDirLock


def one_line_error(result, *needles):
    """The run failed with a user error: exit 2, no traceback, the last line names every needle."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "error: " in last, last
    for needle in needles:
        assert str(needle) in last, (needle, last)
    return last


def snapshot(folder) -> dict:
    """Every file under ``folder``: its content hash and modification time."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, folder)] = (hashlib.sha256(handle.read()).hexdigest(),
                                                        os.stat(path).st_mtime_ns)
    return files


# ---- one run owns its output folder


def test_the_output_lock_names_its_holder_and_is_free_again_after_release(tmp_path):
    with OutputDirLock(str(tmp_path / "run"), "main_mtl.py") as held:
        assert held.held
        with pytest.raises(UserError) as refused:
            OutputDirLock(str(tmp_path / "run"), "main_prepare.py").acquire()
        message = str(refused.value)
        assert str(tmp_path / "run") in message and f"pid {os.getpid()} (main_mtl.py)" in message
        assert "started 20" in message and "\n" not in message
    lock = OutputDirLock(str(tmp_path / "run"), "main_prepare.py")
    lock.acquire()
    lock.release()


def test_a_forked_child_does_not_keep_the_output_lock(tmp_path):
    lock = OutputDirLock(str(tmp_path), "main_mtl.py").acquire()
    child = os.fork()
    if child == 0:  # a DataLoader worker that outlives its killed parent for a few seconds
        time.sleep(3)
        os._exit(0)
    try:
        lock.release()
        # The child still runs: the folder is free all the same.
        again = OutputDirLock(str(tmp_path), "main_mtl.py").acquire()
        again.release()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_eval_into_a_busy_output_dir_is_refused(mtl_data, tmp_path, capsys):
    (tmp_path / "model.pth").write_bytes(b"checked after the lock")
    with OutputDirLock(str(tmp_path), "main_mtl.py"):
        result = run_main(capsys, "main_mtl.py", "--eval", "--ckpt", tmp_path / "model.pth", "--data-dir", mtl_data,
                          "--output-dir", tmp_path, *TINY, check=False)
    one_line_error(result, tmp_path, f"pid {os.getpid()}", "in use by another run")


@pytest.mark.slow
def test_a_second_run_into_a_busy_output_dir_is_refused_and_a_killed_run_resumes(mtl_data, tmp_path, capsys):
    flags = ["--data-dir", mtl_data, "--epochs", "4", *TINY]
    flags[flags.index("--num-workers") + 1] = "2"  # forked workers must not keep the lock after a kill -9
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "main_mtl.py", *map(str, flags), "--output-dir", str(tmp_path)],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "checkpoints" / "last.pth"
    try:
        deadline = time.time() + 240
        while not last.is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)  # run A holds the folder, in the middle of its run
        assert first.poll() is None, "run A ended before the second run could start"
        before = snapshot(tmp_path)
        second = run_entry("main_mtl.py", *flags, "--output-dir", tmp_path, "--resume", "none", "--blr", "0.01",
                           check=False)
        one_line_error(second, tmp_path, f"pid {first.pid} (main_mtl.py)", "in use by another run")
        assert snapshot(tmp_path) == before  # nothing of run A was written, removed or resumed
        os.kill(first.pid, signal.SIGCONT)
        time.sleep(0.2)
    finally:
        first.kill()  # kill -9, mid-run
        first.wait()
    assert first.returncode == -signal.SIGKILL
    run_main(capsys, "main_mtl.py", *flags, "--output-dir", tmp_path, "--resume", "auto")
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 3  # the fourth epoch's end
