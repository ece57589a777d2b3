"""The Compound Expression track (C-EXPR-DB): its readers, metric, zero-shot rule, submission writer and checker, the
fill rule of frames without a face, its synthetic set, and main_ce.py trained, evaluated, zero-shot and distributed."""

import os
import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, run_torchrun
from sklearn.metrics import f1_score

from datasets.synthetic import ce as synthetic_ce
from datasets.tracks import ce
from engine.tasks.ce import fill_classes
from utils.errors import UserError

HEADER = ("image_location,Fearfully_Surprised,Happily_Surprised,Sadly_Surprised,Disgustedly_Surprised,"
          "Angrily_Surprised,Sadly_Fearful,Sadly_Angry")


def write(path, text):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


# ---- the track's facts and readers

def test_classes_and_basic_pairs_follow_the_challenge():
    assert ce.TRACK.label_names == ("Fearfully_Surprised", "Happily_Surprised", "Sadly_Surprised",
                                    "Disgustedly_Surprised", "Angrily_Surprised", "Sadly_Fearful", "Sadly_Angry")
    assert ce.SUBMISSION_HEADER == HEADER
    # EXPR_NAMES: 0 Neutral 1 Anger 2 Disgust 3 Fear 4 Happiness 5 Sadness 6 Surprise 7 Other
    assert ce.BASIC_PAIRS == ((3, 6), (4, 6), (5, 6), (2, 6), (1, 6), (5, 3), (5, 1))
    assert (ce.TRACK.name, ce.TRACK.level, ce.TRACK.kind, ce.TRACK.main_metric) == ("ce", "frame", "multiclass",
                                                                                    "f1_macro")


@pytest.mark.parametrize("header", [HEADER + "\n", "image_location\n", ""])
def test_sample_file_is_read_in_order_with_or_without_a_header(tmp_path, header):
    path = tmp_path / "sample.txt"
    write(path, header + "02/00003.jpg\n01/00001.jpg,,\n01/00010.jpg,extra,fields\n\n")
    assert ce.read_sample_file(str(path)) == ["02/00003.jpg", "01/00001.jpg", "01/00010.jpg"]


@pytest.mark.parametrize("row, reason", [("01/00000.jpg", "start at 1"), ("00001.jpg", "expected"),
                                         ("01/frame1.jpg", "expected"), ("01/00001.jpg\n01/00001.jpg", "twice")])
def test_bad_sample_rows_name_the_line(tmp_path, row, reason):
    path = tmp_path / "sample.txt"
    write(path, HEADER + "\n" + row + "\n")
    with pytest.raises(UserError, match=reason):
        ce.read_sample_file(str(path))


def test_frame_names_are_1_based_5_digit():
    assert ce.frame_key("01/00001.jpg") == ("01", 1)
    assert ce.frame_key("56/01234.jpg") == ("56", 1234)


def test_class_folders_match_spelling_variants(tmp_path):
    import cv2

    image = np.zeros((8, 8, 3), np.uint8)
    spellings = ["Fearfully Surprised", "happily_surprised", "SADLY-SURPRISED", "Disgustedly_Surprised",
                 "angrily  surprised", "Sadly_fearful", "sadly angry"]
    for index, folder in enumerate(spellings):
        os.makedirs(tmp_path / folder)
        for k in range(index + 1):
            cv2.imwrite(str(tmp_path / folder / f"{k}.jpg"), image)
    folders = ce.CompoundFolders(str(tmp_path))
    assert folders.class_counts().tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert folders.images[0] == "Disgustedly_Surprised/0.jpg" and folders.labels[0] == 3


def test_unknown_class_folder_lists_the_expected_names(tmp_path):
    os.makedirs(tmp_path / "Fearfully Surprised")
    os.makedirs(tmp_path / "Happily Disgusted")
    with pytest.raises(UserError, match="'Happily Disgusted'.*Fearfully_Surprised, Happily_Surprised"):
        ce.CompoundFolders(str(tmp_path))


# ---- metric and zero-shot rule

def test_macro_f1_is_scikit_learns_over_the_7_classes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 300)  # class 6 never true
    predicted = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 7, 300))
    scores = ce.TRACK.metrics(predicted, labels)
    assert scores["f1_macro"] == pytest.approx(f1_score(labels, predicted, average="macro", labels=range(7),
                                                        zero_division=0))
    assert scores["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert list(scores["f1_per_class"]) == list(ce.CLASSES)


def test_zero_shot_is_the_renormalised_geometric_mean_of_the_pairs():
    # Neutral, Anger, Disgust, Fear, Happiness, Sadness, Surprise, Other
    probabilities = np.array([[0.0, 0.0, 0.0, 0.25, 0.0, 0.0, 0.25, 0.5],  # only fear and surprise
                              [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.3, 0.1],
                              [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])  # no compound: uniform
    scores = ce.TRACK.zero_shot(probabilities)
    assert scores[0] == pytest.approx([1, 0, 0, 0, 0, 0, 0])
    surprised, others = np.sqrt(0.1 * 0.3), 0.1  # five compounds with surprise, two without
    assert scores[1] == pytest.approx(np.array([surprised] * 5 + [others] * 2) / (5 * surprised + 2 * others))
    assert scores[2] == pytest.approx(np.full(7, 1 / 7))


# ---- submission writer and checker

def test_submission_is_written_in_the_sample_order_and_read_back(tmp_path):
    frames = ["02/00001.jpg", "01/00001.jpg", "01/00002.jpg"]
    path = tmp_path / "sub.txt"
    ce.TRACK.write_submission(str(path), frames, np.array([6, 0, 3]))
    assert path.read_text() == f"{HEADER}\n02/00001.jpg,6\n01/00001.jpg,0\n01/00002.jpg,3\n"
    assert ce.read_submission(str(path), frames).tolist() == [6, 0, 3]


@pytest.mark.parametrize("body, reason", [("01/00001.jpg,7\n01/00002.jpg,0", "not one of 0..6"),
                                          ("01/00002.jpg,1\n01/00001.jpg,0", "sample file's order"),
                                          ("01/00001.jpg,1", "1 rows for the 2 frames"),
                                          ("01/00001.jpg,1,2\n01/00002.jpg,0", "expected")])
def test_read_submission_rejects_a_bad_class_or_order(tmp_path, body, reason):
    path = tmp_path / "sub.txt"
    write(path, HEADER + "\n" + body + "\n")
    with pytest.raises(UserError, match=reason):
        ce.read_submission(str(path), ["01/00001.jpg", "01/00002.jpg"])


def test_read_submission_rejects_another_header(tmp_path):
    path = tmp_path / "sub.txt"
    write(path, "image_location,label\n01/00001.jpg,0\n")
    with pytest.raises(UserError, match="header"):
        ce.read_submission(str(path), ["01/00001.jpg"])


# ---- fill rule

def test_frames_without_a_prediction_take_the_nearest_frame_of_their_video_else_the_most_frequent_class():
    frames = ["01/00001.jpg", "01/00002.jpg", "01/00003.jpg", "01/00004.jpg", "01/00005.jpg", "01/00009.jpg",
              "02/00001.jpg", "02/00002.jpg", "03/00001.jpg"]
    classes = np.array([4, -1, 2, -1, -1, 5, 2, -1, -1])
    filled, counts = fill_classes(frames, classes)
    # 2: tie between frames 1 and 3 -> the earlier; 4: frame 3; 5: frame 3 (2 away) before frame 9 (4 away)
    assert filled.tolist() == [4, 4, 2, 2, 2, 5, 2, 2, 2]
    assert counts == {"same_video": 4, "most_frequent": 1}  # video 03 has no predicted frame: class 2 (3 of 5)


def test_nothing_predicted_is_an_error():
    with pytest.raises(UserError, match="no frame"):
        fill_classes(["01/00001.jpg"], np.array([-1]))


# ---- synthetic set

def test_synthetic_set_has_the_release_layout_and_its_labels(tmp_path):
    summary = synthetic_ce.generate(str(tmp_path), workers=1, progress=False, videos=2, frames=10, width=64,
                                    height=64, per_class=2, size=32)
    assert sorted(os.listdir(tmp_path / "videos")) == ["01.mp4", "02.mp4"]
    frames = ce.read_sample_file(str(tmp_path / ce.SAMPLE_FILE))
    assert frames == [f"{video}/{k:05d}.jpg" for video in ("01", "02") for k in range(1, 11)]
    labels = ce.read_test_labels(str(tmp_path / ce.TEST_LABEL_FILE))
    assert list(labels) == frames
    assert ce.CompoundFolders(str(tmp_path / "compound_images" / "train")).class_counts().tolist() == [2] * 7
    assert ce.CompoundFolders(str(tmp_path / "compound_images" / "val")).class_counts().tolist() == [4] * 7
    assert summary["counts"]["frames"] == 20
    assert synthetic_ce.is_generated(str(tmp_path), videos=2, frames=10, width=64, height=64, per_class=2, size=32)
    assert not synthetic_ce.is_generated(str(tmp_path), videos=2, frames=10, width=64, height=64, per_class=2,
                                         size=32, seed=1)


def test_synthetic_set_is_the_same_bytes_for_the_same_seed_whatever_the_workers(tmp_path):
    params = dict(videos=2, frames=30, width=160, height=96, per_class=2, size=32, seed=4)
    synthetic_ce.generate(str(tmp_path / "a"), workers=1, progress=False, **params)
    synthetic_ce.generate(str(tmp_path / "b"), workers=2, progress=False, **params)
    compared = 0
    for folder, _, files in os.walk(tmp_path / "a"):
        for name in files:
            if name == "synthetic_meta.json":  # holds the seconds
                continue
            compared += 1
            other = os.path.join(str(tmp_path / "b"), os.path.relpath(os.path.join(folder, name), tmp_path / "a"))
            with open(os.path.join(folder, name), "rb") as one, open(other, "rb") as two:
                assert one.read() == two.read(), name
    assert compared == 2 + 2 + 7 * 2 + 7 * 4  # videos, sample file and labels, training and validation stills


def test_compound_images_show_both_prototypes_aus():
    rng = np.random.default_rng(0)
    for compound, (first, second) in enumerate(ce.BASIC_PAIRS):
        both = set(synthetic_ce.PROTOTYPES[first]) | set(synthetic_ce.PROTOTYPES[second])
        drawn = [set(synthetic_ce.compound_aus(rng, compound)) for _ in range(200)]
        share = np.mean([len(aus & both) / len(both) for aus in drawn])
        assert share > 0.8, ce.CLASSES[compound]


# ---- main_ce.py

def run_ce(capsys, *args, check=True):
    """main_ce.py in this process: (exit status, stdout, stderr)."""
    from engine.entry import main

    capsys.readouterr()
    code = 0
    try:
        main("ce", "", [str(arg) for arg in args])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    if check and code != 0:
        raise AssertionError(f"main_ce.py exited {code}\n{out[-3000:]}\n{err[-3000:]}")
    return code, out, err


SAMPLE = [f"01/{k:05d}.jpg" for k in range(1, 9)] + [f"02/{k:05d}.jpg" for k in range(1, 5)] + ["03/00001.jpg"]


@pytest.fixture(scope="module")
def ce_data(tmp_path_factory):
    """Compound folders from the generator, hand-made crops of two videos (01 without frames 3 and 7) and a sample
    file that also names video 03, which has no crop folder, with labels for every frame."""
    root = tmp_path_factory.mktemp("ce_data")
    synthetic_ce.generate(str(root), workers=1, progress=False, videos=1, frames=10, width=64, height=64,
                          per_class=3, size=32, seed=2)
    stills = sorted((root / "compound_images" / "val").glob("*/*.jpg"))
    for index, frame in enumerate(SAMPLE[:-1]):
        if frame not in ("01/00003.jpg", "01/00007.jpg"):
            os.makedirs(root / "cropped_aligned" / frame.split("/")[0], exist_ok=True)
            shutil.copy(stills[index * 2], root / "cropped_aligned" / frame)
    write(root / ce.SAMPLE_FILE, "\n".join([HEADER] + SAMPLE) + "\n")
    write(root / ce.TEST_LABEL_FILE, "\n".join(["image_location,label"] + [f"{frame},{k % 7}" for k, frame in
                                                                          enumerate(SAMPLE)]) + "\n")
    return root


@pytest.fixture(scope="module")
def ce_run(ce_data, tmp_path_factory):
    from engine.entry import main

    out = tmp_path_factory.mktemp("ce_run")
    main("ce", "", TINY + ["--data-dir", str(ce_data), "--epochs", "1", "--vit-num", "1", "--mask-ratio", "0",
                           "--output-dir", str(out)])
    return out


@pytest.mark.slow
def test_training_writes_a_valid_submission_with_every_sample_frame(ce_run, ce_data):
    classes = ce.read_submission(str(ce_run / "test_predictions.txt"), SAMPLE)
    assert len(classes) == len(SAMPLE)
    import json

    test = json.loads((ce_run / "test_metrics.json").read_text())
    labels = np.arange(len(SAMPLE)) % 7
    assert test["f1_macro"] == pytest.approx(f1_score(labels, classes, average="macro", labels=range(7),
                                                      zero_division=0))
    assert test["constant_f1_macro"] == pytest.approx(f1_score(labels, np.zeros_like(labels), average="macro",
                                                               labels=range(7), zero_division=0))
    assert (ce_run / "checkpoints" / "best_f1.pth").is_file()
    assert json.loads((ce_run / "val_metrics.json").read_text())["f1_macro"] >= 0


@pytest.mark.slow
def test_eval_of_the_checkpoint_writes_what_training_wrote_and_warns_of_the_video_without_crops(
        ce_run, ce_data, tmp_path, capsys):
    _, out, err = run_ce(capsys, "--eval", "--ckpt", ce_run / "checkpoints" / "best_f1.pth", "--data-dir", ce_data,
                         "--output-dir", tmp_path, "--device", "cpu", "--num-workers", "0")
    assert (tmp_path / "test_predictions.txt").read_bytes() == (ce_run / "test_predictions.txt").read_bytes()
    assert "1 videos of the sample file have no crop folder" in err and "03" in err
    assert "filled 3 of 13 frames" in out and "2 from the nearest predicted frame" in out


@pytest.mark.slow
def test_eval_predicts_each_frame_once_with_one_and_two_processes(ce_run, ce_data, tmp_path):
    from engine.entry import main

    common = ["--eval", "--ckpt", str(ce_run / "checkpoints" / "best_f1.pth"), "--data-dir", str(ce_data),
              "--device", "cpu", "--num-workers", "0", "--batch-size", "2", "--precision", "fp32"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main("ce", "", common + ["--output-dir", str(tmp_path / "one")])
    finally:
        torch.set_num_threads(threads)
    run_torchrun(2, "main_ce.py", *common, "--output-dir", tmp_path / "two")
    one = (tmp_path / "one" / "test_predictions.txt").read_bytes()
    assert one == (tmp_path / "two" / "test_predictions.txt").read_bytes()
    ce.read_submission(str(tmp_path / "two" / "test_predictions.txt"), SAMPLE)


def tiny_emma(path):
    from models import build_model
    from utils.checkpoint import checkpoint_content, save_atomic

    torch.manual_seed(0)
    model = build_model(dict(name="emma", vit_size="nano", img_size=32, drop_path=0.0, global_pool=True,
                             patch_size=8, patch_embed="linear", dan="none"))
    save_atomic(checkpoint_content(model.state_dict(), model.config, {}, 1, 0), str(path))
    return model


def test_zero_shot_prediction_maps_emmas_expression_probabilities(ce_data, tmp_path):
    from engine.cli import parse_args
    from engine.tasks.ce import CETask
    from utils import abaw

    model = tiny_emma(tmp_path / "emma.pth").eval()
    task = CETask(parse_args("ce", "", ["--data-dir", str(ce_data)]))
    loaded = task.load_for_eval(str(tmp_path / "emma.pth")).eval()
    inputs = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        predicted = task.predict(loaded, inputs)
        probabilities = torch.softmax(model(inputs)[:, abaw.OUT_EXPR].double(), 1).numpy()
    expected = np.log(ce.TRACK.zero_shot(probabilities))
    assert predicted.shape == (5, 7)
    assert predicted.numpy() == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_zero_shot_eval_of_an_emma_checkpoint_writes_a_valid_submission(ce_data, tmp_path, capsys):
    tiny_emma(tmp_path / "emma.pth")
    _, out, _ = run_ce(capsys, "--eval", "--ckpt", tmp_path / "emma.pth", "--data-dir", ce_data, "--output-dir",
                       tmp_path / "zero", "--device", "cpu", "--num-workers", "0", "--precision", "fp32")
    assert "zero-shot" in out
    assert len(ce.read_submission(str(tmp_path / "zero" / "test_predictions.txt"), SAMPLE)) == len(SAMPLE)


def test_a_sample_file_without_prepared_crops_is_a_user_error(tmp_path, capsys):
    write(tmp_path / "data" / ce.SAMPLE_FILE, HEADER + "\n01/00001.jpg\n")
    tiny_emma(tmp_path / "emma.pth")
    code, _, err = run_ce(capsys, "--eval", "--ckpt", tmp_path / "emma.pth", "--data-dir", tmp_path / "data",
                          "--output-dir", tmp_path / "out", "--device", "cpu", "--num-workers", "0", check=False)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error:") and "prepare the test videos first" in err


def test_an_unknown_class_folder_stops_training_with_one_line(ce_data, tmp_path, capsys):
    train = tmp_path / "train"
    shutil.copytree(ce_data / "compound_images" / "train", train)
    os.rename(train / "Sadly_Angry", train / "Angrily_Sad")
    code, _, err = run_ce(capsys, *TINY, "--data-dir", ce_data, "--train-dir", train, "--output-dir",
                          tmp_path / "out", check=False)
    assert code == 2
    assert "unknown compound class folder 'Angrily_Sad'" in err and "Sadly_Angry" in err


def test_shell_launcher_passes_flags_main_ce_accepts(tmp_path):
    """shs/train_CE.sh under sh, with a stand-in python on PATH printing its arguments: they parse as main_ce.py's."""
    import subprocess

    from engine.cli import build_parser

    stand_in = tmp_path / "python"
    stand_in.write_text('#!/bin/sh\nfor arg in "$@"; do echo "$arg"; done\n')
    stand_in.chmod(0o755)
    result = subprocess.run(["sh", os.path.join(ROOT, "shs", "train_CE.sh"), "--epochs", "2"], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}",
                                                            DATA_DIR="data/x"))
    assert result.returncode == 0, result.stderr
    argv = result.stdout.splitlines()
    assert argv[0] == "main_ce.py"
    args = build_parser("ce", "").parse_args(argv[1:])
    assert (args.data_dir, args.vit_num, args.mask_ratio, args.epochs) == ("data/x", 2, 0.75, 2)
