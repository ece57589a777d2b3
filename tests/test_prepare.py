"""main_prepare.py: raw videos to the prepared layout, checked against the synthetic videos' truth; resume after
kill -9, one and two processes, --audio-only, bad input; and main_mtl.py training on the prepared crops."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from conftest import ROOT, TINY, run_main, run_torchrun
from test_media import face_tile, write_test_video

from datasets.media import prepared
from datasets.synthetic import videos as synthetic_videos

SET = dict(videos=6, frames=16, width=160, height=120, seed=0)  # features(i) of datasets.synthetic.videos: 0 plain,
# 1 two people, 2 leaves the frame (variable rate), 3 silent, 4 rotation flag, 5 variable rate
OUTPUTS = ("videos.json", "cropped_aligned", "faces", "audio", "times")


def run_prepare(*argv):
    """main_prepare.py in this process on one torch thread (as each torchrun process): (exit status, stdout, stderr)."""
    import contextlib
    import io

    import torch

    from engine.tasks.prepare import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main("", [str(a) for a in argv] + ["--no-progress", "--device", "cpu"])
    except SystemExit as exit_:
        code = exit_.code
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def tree(root, names=OUTPUTS) -> dict:
    """Every output file under ``root`` (relative path -> bytes)."""
    files = {}
    for name in names:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            files[name] = open(path, "rb").read()
        for folder, _, entries in os.walk(path):
            for entry in entries:
                full = os.path.join(folder, entry)
                files[os.path.relpath(full, root)] = open(full, "rb").read()
    return files


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw_videos")
    synthetic_videos.generate_videos(str(root), **SET)
    return root


@pytest.fixture(scope="module")
def prepared_set(synthetic_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    code, stdout, stderr = run_prepare("--videos", synthetic_set / "videos", "--output-dir", out, "--preview")
    assert code in (0, None), stderr
    return out, stdout


def truth(synthetic_set, name):
    return np.atleast_1d(np.genfromtxt(synthetic_set / "truth" / f"{name}.csv", delimiter=",", names=True, dtype=None,
                                       encoding="utf-8"))


def test_prepared_faces_match_the_truth(synthetic_set, prepared_set):
    out, stdout = prepared_set
    assert "prepared 6 of 6 videos" in stdout
    scores = synthetic_videos.score_prepared(str(synthetic_set), str(out))
    assert scores["recall"] >= 0.9 and scores["precision"] >= 0.95
    assert scores["identity_switches"] == 0
    assert scores["landmark_error_px"] < 8.0  # in pixels of a 112 px crop


def test_frames_are_numbered_in_decoding_order_with_their_times(synthetic_set, prepared_set):
    out, _ = prepared_set
    videos = prepared.read_videos(str(out))
    assert sorted(videos) == [f"synth{i:03d}" for i in range(6)]
    for name, record in videos.items():
        expected = np.unique(truth(synthetic_set, name)["time"])  # the times the video was written with
        assert record["frames"] == SET["frames"]
        assert prepared.read_frame_times(str(out), name) == pytest.approx(expected, abs=1e-6)
        faces = prepared.read_faces(str(out), name)
        assert sorted(set(faces["frame"])) == list(range(1, SET["frames"] + 1))  # every frame has a row
        assert np.allclose(faces["time"], expected[faces["frame"] - 1], atol=1e-6)
    assert videos["synth000"]["fps"] == pytest.approx(25.0)
    assert videos["synth005"]["fps"] != pytest.approx(25.0, abs=0.5)  # a variable rate: its own average


def test_crops_sit_on_the_truth_frame_by_frame(synthetic_set, prepared_set):
    out, _ = prepared_set
    for name in ("synth000", "synth004", "synth005"):
        rows = truth(synthetic_set, name)
        faces = prepared.read_faces(str(out), name)
        for face in faces.itertuples():
            true = rows[rows["frame"] == face.frame][0]
            assert abs((face.x1 + face.x2) / 2 - (true["x1"] + true["x2"]) / 2) < 8
            assert abs((face.y1 + face.y2) / 2 - (true["y1"] + true["y2"]) / 2) < 8
            crop = cv2.imread(str(out / "cropped_aligned" / face.track / f"{face.frame:05d}.jpg"))
            assert crop.shape == (112, 112, 3)


def test_rotation_is_applied_and_recorded(synthetic_set, prepared_set):
    out, _ = prepared_set
    record = prepared.read_videos(str(out))["synth004"]
    assert record["rotation"] == 90 and (record["width"], record["height"]) == (160, 120)  # upright size
    assert record["tracks"] == {"synth004": SET["frames"]}


def test_two_people_get_left_and_right_folders(synthetic_set, prepared_set):
    out, _ = prepared_set
    record = prepared.read_videos(str(out))["synth001"]
    assert set(record["tracks"]) == {"synth001_left", "synth001_right"}
    faces = prepared.read_faces(str(out), "synth001")
    centre = (faces["x1"] + faces["x2"]) / 2
    assert centre[faces["track"] == "synth001_left"].max() < centre[faces["track"] == "synth001_right"].min()
    rows = truth(synthetic_set, "synth001")
    for face in faces.itertuples():  # each folder holds one person throughout
        true = rows[(rows["frame"] == face.frame) & (rows["folder"] == face.track)][0]
        assert abs((face.x1 + face.x2) / 2 - (true["x1"] + true["x2"]) / 2) < 8


def test_frames_without_a_face_keep_an_empty_row_and_have_no_crop(synthetic_set, prepared_set):
    out, _ = prepared_set
    rows = truth(synthetic_set, "synth002")
    away = [int(r["frame"]) for r in rows if not r["visible"]]
    assert away  # the person leaves the frame for a while
    faces = prepared.read_faces(str(out), "synth002")
    empty = faces[faces["track"] == ""]
    assert set(away) <= set(empty["frame"])  # out of the frame: one empty row each
    assert (empty.groupby("frame").size() == 1).all() and empty["score"].isna().all()
    for frame in empty["frame"]:
        assert not (out / "cropped_aligned" / "synth002" / f"{frame:05d}.jpg").exists()
    record = prepared.read_videos(str(out))["synth002"]
    assert record["tracks"] == {"synth002": int((faces["track"] == "synth002").sum())}
    assert len(os.listdir(out / "cropped_aligned" / "synth002")) == record["tracks"]["synth002"]


def test_sound_is_16k_mono_with_the_video_duration_and_silent_videos_have_none(prepared_set):
    out, _ = prepared_set
    videos = prepared.read_videos(str(out))
    assert videos["synth003"]["audio_seconds"] is None and not os.path.exists(prepared.wav_path(str(out), "synth003"))
    for name in ("synth000", "synth001", "synth002"):
        samples, rate = prepared.read_wav(prepared.wav_path(str(out), name))
        assert rate == 16000
        assert len(samples) / rate == pytest.approx(videos[name]["audio_seconds"], abs=1e-6)
        # the sound was rendered for the video's duration; AAC adds at most one frame of padding
        assert abs(videos[name]["audio_seconds"] - videos[name]["duration"]) < 1024 / 16000 + 0.02
        assert np.abs(samples).max() > 0.001


def test_preview_contact_sheets_are_written(prepared_set):
    out, _ = prepared_set
    sheet = cv2.imread(str(out / "preview" / "synth001.png"))
    assert sheet is not None and sheet.shape[1] == 4 * 320


def test_three_people_get_numbered_folders(tmp_path):
    tiles = [face_tile(identity, 72) for identity in (11, 12, 13)]
    frames = []
    for k in range(6):
        image = np.full((96, 300, 3), 70, np.uint8)
        for person, tile in enumerate(tiles):
            x = 8 + person * 100 + k
            image[12:84, x:x + 72] = tile
        frames.append(image)
    (tmp_path / "videos").mkdir()
    write_test_video(tmp_path / "videos" / "three.mp4", frames)
    code, _, stderr = run_prepare("--videos", tmp_path / "videos", "--output-dir", tmp_path / "out", "--min-track", "3")
    assert code in (0, None), stderr
    record = prepared.read_videos(str(tmp_path / "out"))["three"]
    assert record["tracks"] == {"three_1": 6, "three_2": 6, "three_3": 6}


def test_audio_only_writes_sound_times_and_videos_json_without_faces(synthetic_set, tmp_path):
    code, stdout, stderr = run_prepare("--audio-only", "--videos", synthetic_set / "videos" / "synth000.mp4",
                                       synthetic_set / "videos" / "synth003.mp4", "--output-dir", tmp_path)
    assert code in (0, None), stderr
    videos = prepared.read_videos(str(tmp_path))
    assert videos["synth000"]["audio_seconds"] > 0 and videos["synth003"]["audio_seconds"] is None
    assert videos["synth000"]["tracks"] == {} and len(prepared.read_frame_times(str(tmp_path), "synth000")) == 16
    assert not (tmp_path / "cropped_aligned").exists() and not (tmp_path / "faces").exists()
    # a full run afterwards prepares the faces of the videos the audio-only run did
    code, stdout, _ = run_prepare("--videos", synthetic_set / "videos" / "synth000.mp4", "--output-dir", tmp_path)
    assert prepared.read_videos(str(tmp_path))["synth000"]["tracks"] == {"synth000": 16}


@pytest.mark.slow
def test_resume_after_kill_9_equals_an_uninterrupted_run(synthetic_set, prepared_set, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    command = [sys.executable, "main_prepare.py", "--videos", str(synthetic_set / "videos"), "--output-dir", str(out),
               "--no-progress", "--device", "cpu", "--preview"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once some videos are done and another is under way
        records = out / ".prepared"
        if records.is_dir() and len(os.listdir(records)) >= 2 and (out / ".staging").is_dir() and os.listdir(
                out / ".staging"):
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(os.listdir(out / ".prepared"))
    assert 0 < finished < 6, "the kill should land mid-run"
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"({finished} already done" in result.stdout
    assert tree(out) == tree(prepared_set[0])
    assert not os.listdir(out / ".staging")


@pytest.mark.slow
def test_one_and_two_processes_write_identical_files(synthetic_set, prepared_set, tmp_path):
    run_torchrun(2, "main_prepare.py", "--videos", synthetic_set / "videos", "--output-dir", tmp_path,
                 "--no-progress", "--device", "cpu", "--preview")
    one, two = tree(prepared_set[0], OUTPUTS + ("preview",)), tree(tmp_path, OUTPUTS + ("preview",))
    assert sorted(one) == sorted(two)
    assert [name for name in one if one[name] != two[name]] == []


def test_bad_inputs_are_named_one_line_each_and_the_rest_is_prepared(synthetic_set, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "noise.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    whole = (synthetic_set / "videos" / "synth000.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(whole[:len(whole) // 2])
    write_test_video(bad / "sound_only.mka", [], audio=np.zeros(1600, np.float32), audio_codec="pcm_s16le",
                     video_stream=False)
    write_test_video(bad / "no_frames.mkv", [])
    (tmp_path / "no_videos").mkdir()
    (tmp_path / "no_videos" / "readme.txt").write_text("nothing here")
    good = synthetic_set / "videos" / "synth003.mp4"
    (tmp_path / "again").mkdir()
    shutil.copy(good, tmp_path / "again" / "synth003.mp4")  # a second video of the same name
    inputs = [bad / "empty.mp4", bad / "noise.mp4", bad / "truncated.mp4", bad / "sound_only.mka",
              bad / "no_frames.mkv", tmp_path / "no_videos", tmp_path / "missing.mp4", tmp_path / "again", good]
    code, stdout, stderr = run_prepare("--videos", *inputs[:-2], good, inputs[-2], "--output-dir", tmp_path / "out")
    assert code == 2
    assert list(prepared.read_videos(str(tmp_path / "out"))) == ["synth003"]  # the good video, in full
    assert prepared.read_videos(str(tmp_path / "out"))["synth003"]["tracks"] == {"synth003": 16}
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    for path, reason in zip(inputs[:-1], ["empty file", "not a readable video", "not a readable video",
                                          "no video stream", "End of file", "without any video", "no such file",
                                          "another video has the name synth003"]):
        said = [line for line in lines[:-1] if str(path) in line]
        assert len(said) == 1 and reason in said[0], (path, stderr)  # one line each, saying why
    assert lines[-1].startswith("error: 8 input(s) failed") and str(inputs[0]) in lines[-1]
    assert "Traceback" not in stderr


def test_a_bad_crop_size_or_an_output_folder_that_cannot_be_made_is_one_line(synthetic_set, tmp_path):
    video = synthetic_set / "videos" / "synth000.mp4"
    code, _, stderr = run_prepare("--videos", video, "--output-dir", tmp_path / "a", "--crop-size", "4")
    assert code == 2 and stderr.strip().splitlines() == ["error: --crop-size must be between 16 and 1024 pixels, got 4"]
    (tmp_path / "file").write_text("a file, not a folder")
    code, _, stderr = run_prepare("--videos", video, "--output-dir", tmp_path / "file" / "out")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and str(tmp_path / "file" / "out") in stderr


@pytest.mark.slow
def test_main_mtl_trains_on_the_prepared_crops(synthetic_set, prepared_set, tmp_path, capsys):
    out = tmp_path / "data"
    shutil.copytree(prepared_set[0] / "cropped_aligned", out / "cropped_aligned")
    for name in ("training_set_annotations.txt", "validation_set_annotations.txt"):
        shutil.copy(synthetic_set / name, out / name)
    # the annotations name frames by the prepared folders and 1-based frame numbers: nearly all have a crop
    lines = (out / "training_set_annotations.txt").read_text().splitlines()[1:]
    present = [os.path.exists(out / "cropped_aligned" / line.split(",")[0]) for line in lines]
    assert len(lines) > 40 and np.mean(present) > 0.9
    run_main(capsys, "main_mtl.py", "--data-dir", out, "--output-dir", tmp_path / "run", *TINY, "--epochs", "1",
             "--max-steps", "2", "--dan", "none")
    metrics = json.loads((tmp_path / "run" / "val_metrics.json").read_text())
    assert {"p_mtl", "ccc_v", "f1_expr", "f1_au"} <= set(metrics)


@pytest.mark.slow
def test_bench_prepare_reports_both_pipelines_and_their_ratio(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", os.path.join(ROOT, "benchmarks", "bench.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["prepare", "--frames", "6", "--width", "160", "--height", "120", "--warmup", "0", "--threads", "1",
                "--device", "cpu"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["pipeline"] for r in records[:2]] == ["decode + facenet-pytorch MTCNN defaults", "main_prepare"]
    assert all(r["frames"] == 6 and r["img_per_s"] > 0 for r in records[:2])
    final = records[-1]
    assert final["final"] is True and final["speedup"] == pytest.approx(final["img_per_s"] / final[
        "baseline_img_per_s"], abs=0.01)
    assert final["faces"] >= 5 and final["baseline_faces"] >= 5


def test_searching_every_4th_frame_in_full_finds_the_faces_of_a_full_search_of_every_frame(synthetic_set,
                                                                                            prepared_set, tmp_path):
    code, _, stderr = run_prepare("--videos", synthetic_set / "videos", "--output-dir", tmp_path, "--detect-every", "1")
    assert code in (0, None), stderr
    for name in prepared.read_videos(str(tmp_path)):
        every, default = prepared.read_faces(str(tmp_path), name), prepared.read_faces(str(prepared_set[0]), name)
        found = [set(zip(table["frame"][table["track"] != ""], table["track"][table["track"] != ""]))
                 for table in (every, default)]
        assert found[0] == found[1], name


def test_a_run_stopped_while_moving_a_finished_video_into_place_is_completed_by_the_next(synthetic_set, prepared_set,
                                                                                        tmp_path, monkeypatch):
    import engine.tasks.prepare

    video = synthetic_set / "videos" / "synth001.mp4"  # two people: times, sound, faces, two crop folders, preview
    moved = []
    real_move = engine.tasks.prepare.move_atomic

    def move_twice_then_die(source, target):
        if len(moved) == 2:
            raise KeyboardInterrupt  # stands for the kill: nothing after this point runs
        moved.append(target)
        real_move(source, target)

    monkeypatch.setattr(engine.tasks.prepare, "move_atomic", move_twice_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_prepare("--videos", video, "--output-dir", tmp_path, "--preview")
    assert len(moved) == 2 and not (tmp_path / ".prepared" / "synth001.json").exists()
    monkeypatch.setattr(engine.tasks.prepare, "move_atomic", real_move)
    code, stdout, stderr = run_prepare("--videos", video, "--output-dir", tmp_path, "--preview")
    assert code in (0, None), stderr
    assert "(1 already done" in stdout  # finished from its move plan, not prepared again
    expected = {name: data for name, data in tree(prepared_set[0], OUTPUTS + ("preview",)).items()
                if "synth001" in name}
    got = tree(tmp_path, OUTPUTS + ("preview",))
    assert {name: data for name, data in got.items() if name != "videos.json"} == expected
    assert prepared.read_videos(str(tmp_path))["synth001"] == prepared.read_videos(str(prepared_set[0]))["synth001"]
