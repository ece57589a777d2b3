"""``main_mtl.py --task va,expr,au`` on the synthetic per-video layout, end to end: one EMMA on the joined tracks, one
file per task in the challenge formats, scores that equal an independent computation from the written files and the
annotation files, and 2 gloo processes against 1."""

import csv
import json
import os

import numpy as np
import pytest
from conftest import TINY, one_and_two_processes
from sklearn.metrics import f1_score

from datasets import synthetic
from engine.entry import main

ANNOTATIONS = "6th ABAW Annotations"
FOLDERS = {"va": "VA_Estimation_Challenge", "expr": "EXPR_Recognition_Challenge", "au": "AU_Detection_Challenge"}


@pytest.fixture(scope="module")
def tracks_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracks_data")
    synthetic.generate("tracks", str(root), videos=8, frames=12, size=32, seed=3, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def tracks_run(tracks_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracks_run")
    main("mtl", "", ["--task", "va,expr,au", "--data-dir", str(tracks_data), "--output-dir", str(out), "--epochs", "1",
                     *TINY])
    return out


def read_rows(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def label_lines(data, task, split_dir):
    """{image: label fields} of a task's annotation files, parsed here with csv, independently of the reader."""
    folder = data / ANNOTATIONS / FOLDERS[task] / split_dir
    labels = {}
    for name in sorted(os.listdir(folder)):
        _, rows = read_rows(folder / name)
        for number, row in enumerate(rows, start=1):
            labels[f"{name[:-4]}/{number:05d}.jpg"] = [float(x) for x in row]
    return labels


def ccc(pred, true):
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    covariance = ((pred - pred.mean()) * (true - true.mean())).mean()
    return 2 * covariance / (pred.var() + true.var() + (pred.mean() - true.mean()) ** 2)


def independent_scores(data, out, split, split_dir):
    """Each task's score from its written prediction file against the annotation lines of its frames."""
    scores = {}
    for task in ("va", "expr", "au"):
        header, rows = read_rows(out / f"{split}_predictions_{task}.txt")
        labels = label_lines(data, task, split_dir)
        pred = np.array([[float(x) for x in row[1:]] for row in rows])
        true = np.array([labels[row[0]] for row in rows])
        if task == "va":
            known = true[:, 0] != -5
            scores["va"] = (ccc(pred[known, 0], true[known, 0]) + ccc(pred[known, 1], true[known, 1])) / 2
        elif task == "expr":
            known = true[:, 0] != -1
            scores["f1_expr"] = f1_score(true[known, 0], pred[known, 0], labels=range(8), average="macro",
                                         zero_division=0)
        else:
            scores["f1_au"] = np.mean([f1_score(true[true[:, k] != -1, k], pred[true[:, k] != -1, k],
                                                zero_division=0) for k in range(12)])
    return scores


def test_each_task_gets_its_files_in_the_challenge_format(tracks_run, tracks_data):
    headers = {"va": "image_location,valence,arousal",
               "expr": "image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other",
               "au": "image_location,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"}
    samples = {"va": "CVPR_6th_ABAW_VA_test_set_sample.txt", "expr": "CVPR_6th_ABAW_Expr_test_set_sample.txt"}
    for task, header in headers.items():
        for split in ("val", "test"):
            lines = (tracks_run / f"{split}_predictions_{task}.txt").read_text().splitlines()
            assert lines[0] == header
            assert len(lines[1].split(",")) == {"va": 3, "expr": 2, "au": 13}[task]
        _, rows = read_rows(tracks_run / f"test_predictions_{task}.txt")
        if task in samples:  # every frame of the sample file, in its order, frames without an image included
            _, listed = read_rows(tracks_data / samples[task])
            assert [row[0] for row in rows] == [row[0] for row in listed]
        else:  # a list of video names: every frame 1..N of each video
            videos = (tracks_data / "names_of_videos_in_each_test_set" /
                      "Action_Unit_Detection_Challenge_test_set_release.txt").read_text().split()
            assert sorted({row[0].rpartition("/")[0] for row in rows}) == sorted(videos)
    assert not (tracks_run / "test_predictions.txt").exists()
    assert os.path.isfile(tracks_run / "checkpoints" / "best_score.pth")


def test_scores_equal_an_independent_computation_from_the_files(tracks_run, tracks_data):
    val = json.loads((tracks_run / "val_metrics.json").read_text())
    test = json.loads((tracks_run / "test_metrics.json").read_text())
    for reported, split, split_dir in ((val, "val", "Validation_Set"), (test, "test", "Test_Set")):
        expected = independent_scores(tracks_data, tracks_run, split, split_dir)
        for key, value in expected.items():
            assert reported[key] == pytest.approx(value, abs=1e-5), (split, key)
        assert reported["score"] == pytest.approx(sum(expected.values()), abs=1e-5)


def test_frames_without_an_image_take_the_nearest_frame_of_their_video(tracks_run, tracks_data):
    _, rows = read_rows(tracks_run / "test_predictions_va.txt")
    predicted = {row[0]: row[1:] for row in rows}
    images = tracks_data / "cropped_aligned"
    filled = 0
    for image, values in predicted.items():
        video, _, name = image.rpartition("/")
        if (images / image).exists():
            continue
        filled += 1
        numbers = sorted(int(other[:5]) for other in os.listdir(images / video))
        number = int(name[:5])
        nearest = min(numbers, key=lambda other: (abs(other - number), other))
        assert values == predicted[f"{video}/{nearest:05d}.jpg"]
    assert filled > 0


def test_one_task_alone_and_its_best_checkpoint(tracks_data, tmp_path):
    out = tmp_path / "expr"
    main("mtl", "", ["--task", "expr", "--data-dir", str(tracks_data), "--output-dir", str(out), "--epochs", "1",
                     "--max-steps", "2", *TINY])
    assert sorted(path.name for path in out.glob("*_predictions*")) == ["test_predictions_expr.txt",
                                                                       "val_predictions_expr.txt"]
    assert os.path.isfile(out / "checkpoints" / "best_expr.pth")
    assert set(json.loads((out / "val_metrics.json").read_text())) >= {"f1_expr", "acc_expr"}
    assert "va" not in json.loads((out / "val_metrics.json").read_text())


def test_bad_task_flags_are_one_line_errors(tracks_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main("mtl", "", ["--task", "va,gaze", "--data-dir", str(tracks_data)])
    assert "expected mtl or a comma list of va, expr, au" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main("mtl", "", ["--annotation-dir", str(tracks_data), "--data-dir", str(tracks_data)])
    assert "--annotation-dir applies to the per-video tasks" in capsys.readouterr().err
    names = tracks_data / "names_of_videos_in_each_test_set" / "Action_Unit_Detection_Challenge_test_set_release.txt"
    with pytest.raises(SystemExit):  # refused before training
        main("mtl", "", ["--task", "au", "--data-dir", str(tracks_data), "--test-list", str(names),
                         "--output-dir", str(tmp_path / "names"), *TINY])
    assert "is a list of video names; say which task it is for: --test-list va=" in capsys.readouterr().err
    assert not (tmp_path / "names").exists()
    with pytest.raises(SystemExit):
        main("mtl", "", ["--task", "va", "--data-dir", str(tracks_data), "--test-list", f"au={names}"])
    assert "is a test list of the au task, which --task does not include" in capsys.readouterr().err


def test_one_and_two_processes_write_identical_files(tracks_run, tracks_data, tmp_path):
    common = ["--eval", "--task", "va,expr,au", "--ckpt", tracks_run / "checkpoints" / "best_score.pth", "--data-dir",
              tracks_data, "--num-workers", "0", "--device", "cpu", "--precision", "fp32", "--eval-batch-size", "4"]
    one_and_two_processes("main_mtl.py", common, tmp_path / "one", tmp_path / "two")
    names = sorted(path.name for path in (tmp_path / "one").glob("*_predictions_*.txt"))
    assert len(names) == 6
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_the_temporal_stage_trains_on_the_tracks_over_the_tracks_backbone(tracks_run, tracks_data, tmp_path):
    out = tmp_path / "temporal"
    main("temporal", "", ["--task", "expr", "--data-dir", str(tracks_data), "--backbone-ckpt",
                          str(tracks_run / "checkpoints" / "best_score.pth"), "--output-dir", str(out), "--epochs", "1",
                          "--window", "8", "--width", "16", "--layers", "1", "--heads", "2", "--batch-size", "4",
                          "--warmup-epochs", "0", "--num-workers", "0", "--precision", "fp32", "--device", "cpu",
                          "--extract-batch-size", "8"])
    assert sorted(path.name for path in out.glob("*_predictions*")) == ["test_predictions_expr.txt",
                                                                       "val_predictions_expr.txt"]
    test = json.loads((out / "test_metrics.json").read_text())
    # the backbone's own expression outputs on the same listed frames, scored the same way
    _, rows = read_rows(tracks_run / "test_predictions_expr.txt")
    labels = label_lines(tracks_data, "expr", "Test_Set")
    true = [labels[row[0]][0] for row in rows]
    backbone_f1 = f1_score(true, [int(row[1]) for row in rows], labels=range(8), average="macro", zero_division=0)
    assert test["frame_f1_expr"] == pytest.approx(backbone_f1, abs=1e-6)
    assert set(test) >= {"f1_expr", "acc_expr", "frame_f1_expr"} and "va" not in test
