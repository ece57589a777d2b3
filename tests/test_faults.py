"""Fault injection: each fault of the reliability table is injected and its outcome asserted (docs/reliability.md,
"What survives what"). Training-data, annotation and LSD-folder faults are in test_data.py; flag errors in
test_train.py."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY, run_entry, run_main, run_torchrun

from utils.checkpoint import load_checkpoint, save_atomic
from utils.errors import UserError


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def resumable_flags(mtl_data):
    flags = ["--data-dir", str(mtl_data), "--epochs", "3", *TINY]
    flags[flags.index("--num-workers") + 1] = "2"
    flags[flags.index("--batch-size") + 1] = "4"
    return flags


@pytest.fixture(scope="module")
def uninterrupted(mtl_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    run_entry("main_mtl.py", *resumable_flags(mtl_data), "--output-dir", out)
    return load(out / "checkpoints" / "last.pth")


def start(flags, out):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "main_mtl.py", *map(str, flags), "--output-dir", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epoch(process, last, epoch, timeout=240):
    """Until ``last`` records the end of epoch ``epoch`` (0-based, as log.jsonl counts)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if last.is_file():
            try:
                if load(last)["epoch"] >= epoch:
                    return
            except Exception:  # being replaced right now
                pass
        time.sleep(0.05)
    raise AssertionError("the run ended or stalled before the fault could be injected")


def assert_same_weights(a, b):
    assert a["epoch"] == b["epoch"] and a["step"] == b["step"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(mtl_data, tmp_path, uninterrupted):
    flags = resumable_flags(mtl_data)
    process = start(flags, tmp_path)
    wait_for_epoch(process, tmp_path / "checkpoints" / "last.pth", 0)
    time.sleep(0.3)  # into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_entry("main_mtl.py", *flags, "--output-dir", tmp_path, "--resume", "auto")
    assert_same_weights(load(tmp_path / "checkpoints" / "last.pth"), uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_saves_last_and_resume_continues_exactly(mtl_data, tmp_path, uninterrupted, signum):
    flags = resumable_flags(mtl_data)
    process = start(flags, tmp_path)
    wait_for_epoch(process, tmp_path / "checkpoints" / "last.pth", 0)
    time.sleep(0.3)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum and "Traceback" not in stderr
    saved = load(tmp_path / "checkpoints" / "last.pth")
    assert saved["epoch"] >= 0
    run_entry("main_mtl.py", *flags, "--output-dir", tmp_path)
    assert_same_weights(load(tmp_path / "checkpoints" / "last.pth"), uninterrupted)


def test_kill_during_a_checkpoint_write_leaves_the_previous_file_loadable(tmp_path):
    path = tmp_path / "last.pth"
    save_atomic({"epoch": 1, "model": {"w": torch.ones(3)}}, str(path))
    # A child process starts writing a new checkpoint and is killed halfway through the write.
    script = (
        "import os, signal, torch\n"
        "from utils.checkpoint import save_atomic\n"
        "real_save = torch.save\n"
        "def dying_save(obj, f, *a, **k):\n"
        "    f.write(b'PK-partial-bytes' * 1000); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = dying_save\n"
        f"save_atomic({{'epoch': 2, 'model': {{'w': torch.zeros(3)}}}}, {str(path)!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True)
    assert result.returncode == -signal.SIGKILL
    checkpoint = load_checkpoint(str(path))
    assert checkpoint["epoch"] == 1 and torch.equal(checkpoint["model"]["w"], torch.ones(3))


def test_disk_full_on_save_is_a_clear_error_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_atomic({"epoch": 1}, str(path))

    def full_disk(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match="No space left on device"):
        save_atomic({"epoch": 2}, str(path))
    monkeypatch.undo()
    assert load_checkpoint(str(path))["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temporary file left behind


def test_unwritable_output_directory_is_a_one_line_error(mtl_data, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = run_main(capsys, "main_mtl.py", "--data-dir", mtl_data, "--output-dir", blocker / "run", *TINY,
                      check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot write to --output-dir" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("content", [b"", b"garbage" * 50, "truncated"])
def test_truncated_or_garbage_checkpoint_is_a_one_line_error_naming_the_file(mtl_data, tmp_path, content, capsys):
    path = tmp_path / "bad.pth"
    if content == "truncated":
        torch.save({"model": {"w": torch.randn(1000)}}, path)
        content = path.read_bytes()[:2000]
    path.write_bytes(content)
    result = run_main(capsys, "main_mtl.py", "--eval", "--ckpt", path, "--data-dir", mtl_data, "--output-dir",
                       tmp_path / "out", *TINY, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(path) in lines[-1] and "checkpoint" in lines[-1]


def test_resume_from_a_truncated_last_checkpoint_is_a_one_line_error(mtl_data, tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pth").write_bytes(b"\x50\x4b\x03\x04" + b"\x00" * 100)
    result = run_main(capsys, "main_mtl.py", "--data-dir", mtl_data, "--output-dir", tmp_path, *TINY, check=False)
    assert result.returncode == 2 and "last.pth" in result.stderr.strip().splitlines()[-1]


def test_checkpoint_with_a_pickled_object_is_refused_and_its_code_never_runs(mtl_data, tmp_path, capsys):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(1)}, "extra": Payload()}, path)
    result = run_main(capsys, "main_mtl.py", "--eval", "--ckpt", path, "--data-dir", mtl_data, "--output-dir",
                       tmp_path / "out", *TINY, check=False)
    assert result.returncode == 2 and not marker.exists()
    assert "refused" in result.stderr and "system" in result.stderr and "Traceback" not in result.stderr


def test_checkpoint_of_another_size_lists_missing_unexpected_and_mismatched_keys(mtl_data, tmp_path, capsys):
    from models import build_model

    nano = build_model(dict(name="emma", vit_size="nano", img_size=32, patch_size=8, drop_path=0.0))
    path = tmp_path / "authors_format.pth"
    torch.save({"epoch": 3, "model": nano.state_dict()}, path)
    result = run_main(capsys, "main_mtl.py", "--eval", "--ckpt", path, "--data-dir", mtl_data, "--output-dir",
                       tmp_path / "out", *TINY, "--vit", "tiny", check=False)  # a 4-block checkpoint, a 12-block model
    message = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and str(path) in message
    assert "96 missing keys (vit.blocks.4." in message and "shape mismatches" in message
    assert "(128,) vs model (192,)" in message


def corrupt(path, kind):
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "text": b"not a jpeg"}[kind])


def test_bad_training_images_are_skipped_counted_and_above_a_fraction_stop_the_run(mtl_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(mtl_data, data)
    train_rows = (data / "training_set_annotations.txt").read_text().splitlines()[1:]
    images = [data / "cropped_aligned" / row.split(",")[0] for row in train_rows]
    for image, kind in zip(images[:3], ("empty", "truncated", "text")):
        corrupt(image, kind)
    common = ["--data-dir", data, "--epochs", "1", *TINY]
    result = run_main(capsys, "main_mtl.py", *common, "--output-dir", tmp_path / "ok", "--max-bad-images", "0.2")
    assert "undecodable training image" in result.stderr
    record = json.loads((tmp_path / "ok" / "log.jsonl").read_text().splitlines()[0])
    assert record["bad_images"] == 3
    result = run_main(capsys, "main_mtl.py", *common, "--output-dir", tmp_path / "stop", "--max-bad-images", "0.01",
                       check=False)
    assert result.returncode == 2 and "could not be decoded" in result.stderr.strip().splitlines()[-1]


def test_bad_test_image_is_an_error_naming_it_unless_allow_missing(mtl_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(mtl_data, data)
    test_images = (data / "MTL_Challenge_test_set_release.txt").read_text().splitlines()[1:]
    corrupt(data / "cropped_aligned" / test_images[1], "truncated")
    os.remove(data / "cropped_aligned" / test_images[2])
    from models import build_model

    model = build_model(dict(name="emma", vit_size="nano", img_size=32, patch_size=8, drop_path=0.0))
    ckpt = tmp_path / "model.pth"
    torch.save({"epoch": 1, "model": model.state_dict()}, ckpt)
    flags = ["--eval", "--ckpt", ckpt, "--data-dir", data, *TINY]
    result = run_main(capsys, "main_mtl.py", *flags, "--output-dir", tmp_path / "strict", check=False)
    assert result.returncode == 2 and test_images[2] in result.stderr.strip().splitlines()[-1]
    os.symlink(data / "cropped_aligned" / test_images[0], data / "cropped_aligned" / test_images[2])
    result = run_main(capsys, "main_mtl.py", *flags, "--output-dir", tmp_path / "strict2", check=False)
    assert result.returncode == 2 and test_images[1] in result.stderr.strip().splitlines()[-1]
    os.remove(data / "cropped_aligned" / test_images[2])
    result = run_main(capsys, "main_mtl.py", *flags, "--output-dir", tmp_path / "filled", "--allow-missing")
    assert test_images[1] in result.stderr and test_images[2] in result.stderr
    rows = (tmp_path / "filled" / "test_predictions.txt").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == test_images


@pytest.mark.dist
def test_a_non_finite_loss_on_one_rank_skips_the_update_on_every_rank(tmp_path):
    out = tmp_path / "result"
    run_torchrun(2, "tests/scripts/nonfinite_update.py", out)
    ranks = [json.loads((tmp_path / f"result.{r}").read_text()) for r in (0, 1)]
    assert ranks[0]["sums"] == ranks[1]["sums"]  # the ranks never diverged
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == 1
    assert ranks[0]["sums"][1] == ranks[0]["sums"][0] != ranks[0]["sums"][2]  # update 1 skipped, update 2 applied


def test_repeated_non_finite_losses_stop_the_run_with_a_message():
    from engine.train import LoopConfig, TrainingDiverged, TrainState, _finish_update

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    state = TrainState()
    config = LoopConfig(accum_iter=1, clip_grad=1.0, log_interval=1, max_bad_fraction=0.1, max_consecutive_skips=3)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrainingDiverged, match="not finite for 3 updates in a row"):
        for _ in range(3):
            loss = model(torch.ones(1, 3)).sum() * float("nan")
            loss.backward()
            _finish_update(optimizer, scaler, list(model.parameters()), config, ~torch.isfinite(loss), state,
                           torch.device("cpu"), model)
    assert state.skipped_updates == 3
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.dist
@pytest.mark.slow
def test_a_dead_rank_ends_the_job_and_torchrun_restart_with_resume_completes(mtl_data, tmp_path):
    marker = tmp_path / "died"
    flags = ["--data-dir", mtl_data, "--output-dir", tmp_path / "run", "--epochs", "2", *TINY]
    started = time.time()
    run_torchrun(2, "tests/scripts/rank_dies_once.py", marker, *flags, extra=["--max-restarts", "1"], timeout=300)
    assert marker.exists(), "the fault was not injected"
    assert time.time() - started < 240
    assert load(tmp_path / "run" / "checkpoints" / "last.pth")["epoch"] == 1  # the second epoch's end
