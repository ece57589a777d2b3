"""Shared fixtures: tiny synthetic data sets made once per test session, and helpers to run the entry points."""

import os
import subprocess
import sys

import pytest

from datasets import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu need a CUDA device; without one they are skipped (``sh benchmarks/gpu_check.sh`` runs them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

# A configuration that trains in seconds on one CPU core.
TINY = ["--vit", "nano", "--img-size", "32", "--patch-size", "8", "--batch-size", "8", "--accum-iter", "2",
        "--warmup-epochs", "0", "--num-workers", "0", "--precision", "fp32", "--device", "cpu", "--log-interval", "2"]


@pytest.fixture(scope="session")
def mtl_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtl_data")
    synthetic.generate_mtl(str(root), videos=6, frames=12, size=32, seed=3, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def lsd_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lsd_data")
    synthetic.generate_lsd(str(root), per_class=8, size=32, seed=3, workers=1, progress=False)
    return root


def run_entry(script, *args, env=None, timeout=300, check=True):
    """Run an entry point in a fresh process from the repository root; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    full_env.update(env or {})
    result = subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, env=full_env, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n"
                             f"stderr:\n{result.stderr[-3000:]}")
    return result


ENTRY_TRACKS = {"main_mtl.py": "mtl", "main_lsd.py": "lsd", "main_pretrain.py": "pretrain",
                "main_temporal.py": "temporal", "main_video.py": "video", "main_ce.py": "ce"}


def run_main(capsys, script, *args, check=True):
    """An entry point run in this process, as ``run_entry`` runs it in a new one but without the seconds a new
    interpreter spends importing torch: returns a CompletedProcess with the exit status (2 for a user error) and
    what it printed. Anything but a clean exit or ``SystemExit`` propagates, as a traceback would."""
    from engine.entry import main

    capsys.readouterr()
    code = 0
    try:
        main(ENTRY_TRACKS[script], "", [str(arg) for arg in args])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    result = subprocess.CompletedProcess([script, *map(str, args)], code, captured.out, captured.err)
    if check and code != 0:
        raise AssertionError(f"{script} exited {code}\nstdout:\n{captured.out[-3000:]}\n"
                             f"stderr:\n{captured.err[-3000:]}")
    return result


def one_and_two_processes(script, args, one, two):
    """Run an entry point in this process on one torch thread (as each torchrun process, OMP_NUM_THREADS=1) writing
    to ``one``, then in 2 gloo processes writing to ``two``, for a comparison of their files."""
    import torch

    from engine.entry import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(ENTRY_TRACKS[script], "", [str(arg) for arg in args] + ["--output-dir", str(one)])
    finally:
        torch.set_num_threads(threads)
    run_torchrun(2, script, *args, "--output-dir", two)


def run_torchrun(nproc, script, *args, extra=(), timeout=300, check=True):
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra,
               script, *map(str, args)]
    result = subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"torchrun exited {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n"
                             f"stderr:\n{result.stderr[-3000:]}")
    return result
