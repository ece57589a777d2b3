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


def wait_stopped(pid: int, timeout: float = 30.0) -> None:
    """Until every thread of ``pid`` is stopped (state T in /proc): SIGSTOP takes effect when a thread next leaves the
    kernel, so a write in progress may still land after ``kill`` returns."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as handle:
                    states.append(handle.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                continue
        if states and all(state in "tT" for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop within {timeout} s")


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
    flags = ["--data-dir", mtl_data, "--epochs", "2", *TINY]
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
        wait_stopped(first.pid)  # a write under way when the signal came has ended before the snapshot
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
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1  # the second epoch's end


# ---- checkpoints of another stage, hand-made and foreign files

NANO = dict(vit_size="nano", img_size=32, patch_size=8)
CONFIGS = {"emma": dict(name="emma", dan="none", **NANO),
           "cotex": dict(name="cotex", vit_num=2, num_classes=6, **NANO),
           "mae": dict(name="mae", decoder_dim=32, decoder_depth=1, decoder_heads=2, **NANO)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A checkpoint of each stage's model (a resumable one, as last.pth), and hand-made files."""
    from models import build_model
    from utils.checkpoint import checkpoint_content

    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name, config in CONFIGS.items():
        torch.manual_seed(0)
        model = build_model(config)
        training = dict(optimizer={"state": {}, "param_groups": []}, train_state={"epoch": 1, "batch_in_epoch": 0,
                                                                                   "step": 4}, best={}, rng=[])
        paths[name] = folder / f"{name}.pth"
        torch.save(checkpoint_content(model.state_dict(), model.config, {}, 1, 4, training=training), paths[name])
    state = torch.load(paths["emma"], weights_only=True)
    state["model"] = {key: value.clone().fill_(float("nan")) if value.is_floating_point() else value
                      for key, value in state["model"].items()}
    torch.save(state, folder / "nan.pth")
    torch.save(torch.zeros(3), folder / "tensor.pth")
    torch.save(dict(torch.load(paths["emma"], weights_only=True), model_config="emma"), folder / "string_config.pth")
    import pickle

    with open(folder / "plain.pkl", "wb") as handle:
        pickle.dump({"model": [1.0, 2.0]}, handle, protocol=4)
    torch.save({"model": {}, "train_state": {"epoch": 1}}, folder / "partial.pth")
    return dict(paths, partial=folder / "partial.pth", nan=folder / "nan.pth", tensor=folder / "tensor.pth",
                string=folder / "string_config.pth", pickle=folder / "plain.pkl")


@pytest.mark.parametrize("script, model, extra", [
    ("main_mtl.py", "cotex", []),
    ("main_mtl.py", "cotex", ["--dan", "none"]),  # the DAN flag is not what is wrong
    ("main_mtl.py", "mae", []),
    ("main_lsd.py", "emma", []),
    ("main_pretrain.py", "emma", []),
    ("main_temporal.py", "emma", []),
])
def test_resume_from_another_stages_checkpoint_names_its_model_before_reading_data(
        script, model, extra, checkpoints, mtl_data, lsd_data, tmp_path, capsys):
    data = {"main_lsd.py": lsd_data, "main_pretrain.py": mtl_data / "cropped_aligned"}.get(script, mtl_data)
    flags = ["--data-dir", data, "--output-dir", tmp_path, "--resume", checkpoints[model], "--device", "cpu",
             "--num-workers", "0", *extra]
    if script == "main_temporal.py":
        flags += ["--backbone-ckpt", checkpoints["emma"]]
    result = run_main(capsys, script, *flags, check=False)
    one_line_error(result, checkpoints[model], f"holds a {model} model, not one for this entry point ({script})")
    assert not (tmp_path / "features").exists()  # refused before any feature was extracted


HAND_MADE = [("tensor", "holds a Tensor, not a checkpoint"), ("string", "its model_config is a str"),
             ("nan", "hold NaN or infinite values"), ("pickle", "plain pickle file")]


@pytest.mark.parametrize("kind, needle, mode", [
    *[(kind, needle, mode) for kind, needle in HAND_MADE for mode in ("--eval", "--resume")],
    ("partial", "a training state without model_config, optimizer", "--resume"),
])
def test_hand_made_checkpoints_are_one_line_errors(kind, needle, mode, checkpoints, mtl_data, tmp_path, capsys):
    flag = ["--eval", "--ckpt"] if mode == "--eval" else ["--resume"]
    result = run_main(capsys, "main_mtl.py", *flag, checkpoints[kind], "--data-dir", mtl_data, "--output-dir",
                      tmp_path, *TINY, check=False)
    one_line_error(result, checkpoints[kind], needle)


def test_a_plain_pickle_prints_nothing_before_the_error_line(checkpoints):
    import warnings

    from utils.checkpoint import load_checkpoint

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserError, match="plain pickle file"):
            load_checkpoint(checkpoints["pickle"])
    assert caught == []


def test_a_foreign_ensemble_member_fails_before_the_first_member_predicts(checkpoints, mtl_data, tmp_path, capsys):
    result = run_main(capsys, "main_mtl.py", "--eval", "--ckpt", checkpoints["emma"], checkpoints["cotex"],
                      "--data-dir", mtl_data, "--output-dir", tmp_path, *TINY, check=False)
    one_line_error(result, checkpoints["cotex"], "holds a cotex model")
    assert "evaluating" not in result.stdout + result.stderr


# ---- the per-video layout of the single-task tracks

CHALLENGES = "6th ABAW Annotations"


@pytest.fixture(scope="module")
def tracks_data(tmp_path_factory):
    from datasets import synthetic

    root = tmp_path_factory.mktemp("tracks_data")
    synthetic.generate("tracks", str(root), videos=8, frames=8, size=32, seed=3, workers=1, progress=False)
    return root


def split_folder(data, challenge, split):
    return data / CHALLENGES / challenge / split


@pytest.fixture
def tracks_copy(tracks_data, tmp_path):
    import shutil

    shutil.copytree(tracks_data, tmp_path / "data", symlinks=True)
    return tmp_path / "data"


def tracks_run(capsys, data, out, *extra):
    return run_main(capsys, "main_mtl.py", "--task", "va,expr,au", "--data-dir", data, "--output-dir", out, *TINY,
                    "--epochs", "1", *extra, check=False)


def test_a_video_in_train_and_validation_of_one_task_is_refused(tracks_copy, tmp_path, capsys):
    train, val = (split_folder(tracks_copy, "VA_Estimation_Challenge", split) for split in ("Train_Set",
                                                                                         "Validation_Set"))
    video = sorted(train.iterdir())[0]
    (val / video.name).write_bytes(video.read_bytes())
    result = tracks_run(capsys, tracks_copy, tmp_path / "out")
    one_line_error(result, video.stem, "in both Train_Set and Validation_Set")
    assert not (tmp_path / "out" / "checkpoints" / "last.pth").exists()


def test_a_video_shared_between_tasks_splits_is_a_warning(tracks_copy):
    from datasets.tracks import affwild2 as tracks

    au_train = split_folder(tracks_copy, "AU_Detection_Challenge", "Train_Set")
    au_val = split_folder(tracks_copy, "AU_Detection_Challenge", "Validation_Set")
    va_train = {path.stem for path in split_folder(tracks_copy, "VA_Estimation_Challenge", "Train_Set").iterdir()}
    moved = next(path for path in sorted(au_train.iterdir()) if path.stem in va_train)
    moved.rename(au_val / moved.name)
    dirs = tracks.find_challenge_dirs([str(tracks_copy)], ("va", "expr", "au"))
    assert tracks.shared_videos(dirs) == [moved.stem]


def test_an_empty_au_train_set_with_three_tasks_is_refused(tracks_copy, tmp_path, capsys):
    for path in split_folder(tracks_copy, "AU_Detection_Challenge", "Train_Set").iterdir():
        path.unlink()
    result = tracks_run(capsys, tracks_copy, tmp_path / "out")
    one_line_error(result, "AU_Detection_Challenge/Train_Set", "no au label")


def test_a_folder_named_like_an_annotation_file_is_refused(tracks_copy, tmp_path, capsys):
    folder = split_folder(tracks_copy, "EXPR_Recognition_Challenge", "Train_Set") / "sub.txt"
    folder.mkdir()
    result = tracks_run(capsys, tracks_copy, tmp_path / "out")
    one_line_error(result, folder, "is not a file")


def test_test_lists_of_an_unknown_task_or_of_some_tasks_only(tracks_data, tmp_path, capsys):
    from engine.cli import parse_args
    from engine.tasks import make_task

    sample = tracks_data / "CVPR_6th_ABAW_VA_test_set_sample.txt"
    result = tracks_run(capsys, tracks_data, tmp_path / "out", "--test-list", f"foo={sample}")
    one_line_error(result, "unknown task 'foo'")
    args = parse_args("mtl", "", ["--task", "va,expr,au", "--data-dir", str(tracks_data), "--test-list",
                                  f"va={sample}", *TINY])
    capsys.readouterr()
    make_task(args).check_inputs()  # what a run does before its first step
    warning = capsys.readouterr().err
    assert "no test list for expr, au" in warning and "no test predictions for expr, au" in warning


# ---- what is read only at the end is checked before the first step


def test_an_empty_or_missing_test_list_and_an_even_smoothing_window_fail_before_training(mtl_data, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("image\n")
    common = ["--data-dir", mtl_data, "--output-dir", tmp_path / "out", *TINY, "--epochs", "1"]
    result = run_main(capsys, "main_mtl.py", *common, "--test-list", empty, check=False)
    one_line_error(result, empty, "names no image")
    assert not (tmp_path / "out" / "checkpoints" / "last.pth").exists()
    result = run_main(capsys, "main_mtl.py", *common, "--test-list", tmp_path / "absent.txt", check=False)
    one_line_error(result, "absent.txt: no such file")
    result = run_main(capsys, "main_mtl.py", *common, "--smooth-va", "4", check=False)
    one_line_error(result, "--smooth-va", "odd number of frames")


# ---- pretraining folders

PRETRAIN = ["--vit", "nano", "--img-size", "32", "--patch-size", "8", "--decoder-dim", "32", "--decoder-depth", "1",
            "--decoder-heads", "2", "--batch-size", "8", "--warmup-epochs", "0", "--num-workers", "0", "--precision",
            "fp32", "--device", "cpu", "--epochs", "1"]


def write_images(folder, count, side, start=0):
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        cv2.imwrite(str(folder / f"{i:04d}.png"), rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    return folder


def test_a_symbolic_link_loop_is_listed_once(tmp_path):
    from datasets import folders

    write_images(tmp_path / "faces" / "sub", 3, 32)
    os.symlink("..", tmp_path / "faces" / "sub" / "up")  # sub/up/sub/up/... for ever
    os.symlink("nowhere", tmp_path / "faces" / "dangling")
    images = folders.find_images([str(tmp_path / "faces")])
    assert sorted(images.names) == ["sub/0000.png", "sub/0001.png", "sub/0002.png"]


def test_image_lists_in_utf16_are_read_and_binary_ones_refused(tmp_path, capsys):
    from datasets import folders

    faces = write_images(tmp_path / "faces", 4, 32)
    listed = tmp_path / "utf16.txt"
    listed.write_text("name\n0001.png\n0003.png\n", encoding="utf-16")
    assert folders.read_list_file(str(listed)) == ["0001.png", "0003.png"]
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(128, 256)) * 3)
    result = run_main(capsys, "main_pretrain.py", "--data-dir", faces, "--image-list", binary, "--output-dir",
                      tmp_path / "out", *PRETRAIN, check=False)
    one_line_error(result, binary, "is not a text file")


def test_unusable_pretraining_images_are_named_before_training(tmp_path, capsys):
    tiny = write_images(tmp_path / "tiny", 16, 4)
    result = run_main(capsys, "main_pretrain.py", "--data-dir", tiny, "--output-dir", tmp_path / "out1", *PRETRAIN,
                      check=False)
    one_line_error(result, "15 of the 15 training images checked are unusable",
                   "4x4, smaller than one 8 px patch")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "face.jpg").write_bytes(b"")
    result = run_main(capsys, "main_pretrain.py", "--data-dir", lone, "--output-dir", tmp_path / "out2", *PRETRAIN,
                      check=False)
    one_line_error(result, lone / "face.jpg", "empty (0 bytes)")
    faces = write_images(tmp_path / "faces", 16, 32)
    result = run_main(capsys, "main_pretrain.py", "--data-dir", faces, "--val-dir", tiny, "--output-dir",
                      tmp_path / "out3", *PRETRAIN, check=False)
    one_line_error(result, f"16 of the 16 images of --val-dir {tiny} checked are unusable",
                   "smaller than one 8 px patch")
    assert not (tmp_path / "out3" / "checkpoints" / "last.pth").exists()


def test_the_count_of_undecodable_training_images_includes_whole_bad_batches(tmp_path, capsys, monkeypatch):
    from engine.tasks.pretrain import PretrainTask

    monkeypatch.setattr(PretrainTask, "check_inputs", lambda self: None, raising=False)  # the loop's own count
    folder = write_images(tmp_path / "tiny", 16, 4)
    result = run_main(capsys, "main_pretrain.py", "--data-dir", folder, "--val-fraction", "0", "--output-dir",
                      tmp_path / "out", *PRETRAIN, check=False)
    one_line_error(result, "16 of 16 training images could not be decoded (100.0%")


def test_pretraining_eval_names_the_patch_of_the_checkpoint(checkpoints, tmp_path, capsys):
    folder = write_images(tmp_path / "faces", 20, 32)
    write_images(folder, 2, 4, start=20)
    result = run_main(capsys, "main_pretrain.py", "--eval", "--ckpt", checkpoints["mae"], "--data-dir", folder,
                      "--output-dir", tmp_path / "out", "--device", "cpu", "--num-workers", "0", check=False)
    one_line_error(result, "2 of 22 validation images are unusable", "smaller than one 8 px patch")


# ---- the temporal stage's feature cache


def extraction(checkpoints, tmp_path, mtl_data, count=6):
    """(backbone, frames, image folder, extract(allow_missing) -> features) over a copy of a few test frames."""
    import argparse
    import shutil

    from datasets import mtl
    from datasets.images import ImageListDataset
    from engine.features import Backbone, split_features

    frames = list(mtl.read_test_list(str(mtl_data / mtl.TEST_LIST_FILE))[:count])
    root = tmp_path / "images"
    for frame in frames:
        (root / frame).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mtl_data / "cropped_aligned" / frame, root / frame)
    backbone = Backbone(str(checkpoints["emma"]), "auto", "fp32")
    args = argparse.Namespace(precision="fp32", extract_batch_size=4, num_workers=0)

    def extract(allow_missing=False, split="test", feature_dir=tmp_path / "features"):
        dataset = ImageListDataset(str(root), frames, skip_bad=allow_missing)
        return split_features(backbone, split, frames, dataset, str(feature_dir), args, torch.device("cpu"))

    return backbone, frames, root, extract


def test_a_cached_unreadable_frame_is_read_again_so_a_repaired_image_is_extracted(checkpoints, mtl_data, tmp_path):
    _, frames, root, extract = extraction(checkpoints, tmp_path, mtl_data)
    broken = root / frames[1]
    image = broken.read_bytes()
    broken.write_bytes(b"")
    first = extract(allow_missing=True)
    assert not first.available[1] and first.available.sum() == len(frames) - 1
    # Still unreadable, and --allow-missing not given: the image's own error, never a stand-in row.
    with pytest.raises(UserError, match=f"image {broken} is empty"):
        extract()
    broken.write_bytes(image)
    repaired = extract()
    assert repaired.available.all()
    fresh = extract(feature_dir=tmp_path / "fresh")
    assert (repaired.array[:] == fresh.array[:]).all()


@pytest.mark.parametrize("index, problem", [
    ([1, 2], "a JSON list, not an object"),
    ("features", "a JSON str, not an object"),
    ("no columns", "no columns entry"),
    ("row 99", "unavailable row 99 is not a frame of the 6 listed"),
])
def test_a_hand_made_feature_index_is_a_one_line_error(index, problem, checkpoints, mtl_data, tmp_path):
    import json

    backbone, _, _, extract = extraction(checkpoints, tmp_path, mtl_data)
    extract()
    path = tmp_path / "features" / backbone.key[:16] / "test.json"
    saved = json.loads(path.read_text())
    if index == "no columns":
        index = {key: value for key, value in saved.items() if key != "columns"}
    elif index == "row 99":
        index = dict(saved, unavailable=[99])
    path.write_text(json.dumps(index))
    with pytest.raises(UserError, match=problem) as error:
        extract()
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("content", ["empty", "strings"])
def test_an_empty_or_foreign_cached_feature_file_is_a_one_line_error(content, checkpoints, mtl_data, tmp_path):
    import numpy as np

    backbone, frames, _, extract = extraction(checkpoints, tmp_path, mtl_data)
    width = extract().array.shape[1]
    path = tmp_path / "features" / backbone.key[:16] / "test.npy"
    if content == "empty":
        path.write_bytes(b"")
    else:
        np.save(path, np.full((len(frames), width), "x"))
    with pytest.raises(UserError, match="delete it to extract again") as error:
        extract()
    assert str(path) in str(error.value)


def test_a_feature_dir_that_is_a_file_is_refused_before_extraction(checkpoints, mtl_data, tmp_path, capsys):
    blocker = tmp_path / "features"
    blocker.write_text("a file")
    result = run_main(capsys, "main_temporal.py", "--data-dir", mtl_data, "--backbone-ckpt", checkpoints["emma"],
                      "--feature-dir", blocker, "--output-dir", tmp_path / "out", "--device", "cpu", check=False)
    one_line_error(result, f"--feature-dir {blocker} is a file")
    _, _, _, extract = extraction(checkpoints, tmp_path, mtl_data)
    with pytest.raises(UserError, match="cannot write features to"):
        extract(feature_dir=blocker / "sub")


# ---- Ctrl-C


def interrupt(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C: Python raises KeyboardInterrupt here
    time.sleep(5)


@pytest.mark.parametrize("where", ["evaluation", "feature extraction"])
def test_ctrl_c_outside_the_training_loop_is_one_line_and_status_130(where, checkpoints, mtl_data, tmp_path, capsys,
                                                                      monkeypatch):
    if where == "evaluation":
        monkeypatch.setattr("engine.runner.predict_splits", interrupt)
        flags = ["main_mtl.py", "--eval", "--ckpt", checkpoints["emma"]]
    else:
        monkeypatch.setattr("engine.features._extract_split", interrupt)
        flags = ["main_temporal.py", "--backbone-ckpt", checkpoints["emma"]]
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever the test runner set
    try:
        result = run_main(capsys, *flags, "--data-dir", mtl_data, "--output-dir", tmp_path, "--device", "cpu",
                          "--num-workers", "0", check=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.returncode == 130 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: interrupted (SIGINT)")


def test_the_stop_notice_is_printed_by_the_run_not_by_its_loader_workers(capfd):
    from engine.runner import StopOnSignal
    from engine.train import TrainState

    state = TrainState()
    with StopOnSignal(state):
        worker = os.fork()
        if worker == 0:  # a forked loader worker gets the terminal's Ctrl-C too
            os.kill(os.getpid(), signal.SIGINT)
            os._exit(0)
        os.waitpid(worker, 0)
        assert "SIGINT received" not in capfd.readouterr().out
        os.kill(os.getpid(), signal.SIGINT)
    assert state.stop_requested and capfd.readouterr().out.count("SIGINT received") == 1
