"""The Emotional Mimicry Intensity track: its reader on hand-written files with the released quirks, its metric against
scipy, its submission writer re-read, bad input as one-line errors, and its synthetic set."""

import hashlib
import os
import pickle

import cv2
import numpy as np
import pytest
from scipy.stats import pearsonr

from datasets import synthetic
from datasets.synthetic import emi as synthetic_emi
from datasets.tracks.base import read_feature_sequence
from datasets.tracks.emi import HEADER, LABEL_NAMES, TRACK, read_label_file
from utils.errors import UserError

# Columns reordered, spaces around names, "Empathic Pain" with its space.
QUIRKY_HEADER = " Filename ,Joy, Amusement,Empathic Pain ,Admiration,Determination,Excitement"
QUIRKY_ORDER = ("Joy", "Amusement", "Empathic Pain", "Admiration", "Determination", "Excitement")


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)


def jpeg(path):
    ok, buffer = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    write(path, buffer.tobytes())


def features(path, frames, width=4):
    write(path, pickle.dumps(np.arange(frames * width, dtype=np.float32).reshape(frames, width)))


def in_label_order(values_by_quirky_column):
    return np.array([values_by_quirky_column[QUIRKY_ORDER.index(name)] for name in LABEL_NAMES], np.float32)


@pytest.fixture
def emi_dir(tmp_path):
    """Train: 00000 (padded, four crops 0 1 2 10, MP3, both feature sets), 7 (unpadded in the file and as its crop
    folder, no audio), 00012.mp4 (only a raw video). Val: one video. Test: three raw videos, one with crops, one with
    a WAV, one with ViT features."""
    rows = {"00000": "0.333,0.0,1.0,0.5,0.25,0.0", "7": "0.0,0.5,0.0,0.0,1,0.2", "00012.mp4": "1.0,0,0,0,0,0.667"}
    write(tmp_path / "train_split.csv", "\n".join([QUIRKY_HEADER] + [f"{k},{v}" for k, v in rows.items()]) + "\n")
    write(tmp_path / "valid_split.csv", HEADER + "\n00040,0.1,0.2,0.3,0.4,0.5,0.6\n")
    for name in ("10", "2", "0", "1"):
        jpeg(tmp_path / "face_images" / "00000" / f"{name}.jpg")
    jpeg(tmp_path / "face_images" / "7" / "3.jpg")
    jpeg(tmp_path / "face_images" / "00040" / "0.jpg")
    write(tmp_path / "audio" / "00000.mp3", b"mp3")
    write(tmp_path / "raw" / "00012.mp4", b"mp4")
    features(str(tmp_path / "vit" / "00000.pkl"), 4)
    features(str(tmp_path / "wav2vec2" / "00000.pkl"), 9)
    features(str(tmp_path / "vit" / "00007.pkl"), 1)
    for video in ("00100", "00003", "00020"):
        write(tmp_path / "test_data" / "raw" / f"{video}.mp4", b"mp4")
    jpeg(tmp_path / "test_data" / "face_images" / "00020" / "0.jpg")
    write(tmp_path / "test_data" / "audio" / "00003.wav", b"wav")
    features(str(tmp_path / "test_data" / "vit" / "00100.pkl"), 2)
    return tmp_path


def test_reader_matches_ids_as_integers_and_columns_by_name(emi_dir):
    split = TRACK.read_split(str(emi_dir), "train")
    assert split.ids == ["0", "7", "12"]  # the file's order, unpadded
    assert split.source == str(emi_dir / "train_split.csv")
    expected = [in_label_order([0.333, 0.0, 1.0, 0.5, 0.25, 0.0]), in_label_order([0.0, 0.5, 0.0, 0.0, 1, 0.2]),
                in_label_order([1.0, 0, 0, 0, 0, 0.667])]
    np.testing.assert_array_equal(split.labels(), np.stack(expected))
    assert split.labels().dtype == np.float32 and split.labels().shape == (3, 6)


def test_reader_sorts_frames_numerically_from_zero_and_finds_each_stream(emi_dir):
    first, unpadded, raw_only = TRACK.read_split(str(emi_dir), "train").items
    assert first.frames == ["00000/0.jpg", "00000/1.jpg", "00000/2.jpg", "00000/10.jpg"]
    assert first.frame_numbers.tolist() == [1, 2, 3, 11]
    assert first.frames_root == str(emi_dir / "face_images")
    assert all(os.path.isfile(os.path.join(first.frames_root, frame)) for frame in first.frames)
    assert first.audio == str(emi_dir / "audio" / "00000.mp3")
    assert first.features == {"vit": str(emi_dir / "vit" / "00000.pkl"),
                              "wav2vec2": str(emi_dir / "wav2vec2" / "00000.pkl")}
    assert read_feature_sequence(first.features["wav2vec2"]).shape == (9, 4)
    assert unpadded.frames == ["7/3.jpg"] and unpadded.frame_numbers.tolist() == [4]
    assert unpadded.audio is None  # a video without sound is normal
    assert unpadded.features == {"vit": str(emi_dir / "vit" / "00007.pkl")}
    assert raw_only.frames == [] and raw_only.audio is None and raw_only.features == {}


def test_test_split_is_the_raw_folder_sorted_by_id_without_labels(emi_dir):
    split = TRACK.read_split(str(emi_dir), "test")
    assert split.ids == ["3", "20", "100"]
    assert split.labels() is None and all(item.label is None for item in split.items)
    three, twenty, hundred = split.items
    assert three.audio == str(emi_dir / "test_data" / "audio" / "00003.wav")
    assert twenty.frames == ["00020/0.jpg"] and twenty.frames_root == str(emi_dir / "test_data" / "face_images")
    assert hundred.features == {"vit": str(emi_dir / "test_data" / "vit" / "00100.pkl")}
    assert TRACK.find(str(emi_dir), "test") and TRACK.find(str(emi_dir), "val")


def test_test_split_falls_back_to_the_face_folders_without_raw_videos(emi_dir):
    for name in os.listdir(emi_dir / "test_data" / "raw"):
        os.remove(emi_dir / "test_data" / "raw" / name)
    os.rmdir(emi_dir / "test_data" / "raw")
    assert TRACK.read_split(str(emi_dir), "test").ids == ["20"]


def test_metric_is_scipys_pearson_per_emotion_and_their_mean():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (30, 6)) / 3
    predictions = 0.5 * labels + rng.normal(0, 0.3, (30, 6))
    scores = TRACK.metrics(predictions, labels)
    expected = [pearsonr(predictions[:, k], labels[:, k])[0] for k in range(6)]
    for name, value in zip(LABEL_NAMES, expected):
        assert scores["pearson_" + name.lower().replace(" ", "_")] == pytest.approx(value, abs=1e-9)
    assert scores["pearson"] == pytest.approx(np.mean(expected), abs=1e-9)
    assert scores[TRACK.main_metric] == scores["pearson"]


def test_a_constant_column_scores_zero_and_a_constant_prediction_scores_zero():
    rng = np.random.default_rng(1)
    labels = rng.random((10, 6))
    predictions = labels.copy()
    predictions[:, 2] = 0.1  # constant (its centred values hold rounding residue)
    scores = TRACK.metrics(predictions, labels)
    assert scores["pearson_determination"] == 0.0 and scores["pearson_joy"] == pytest.approx(1.0)
    assert TRACK.metrics(np.full((10, 6), 0.3), labels)["pearson"] == 0.0


def test_metric_needs_two_videos():
    with pytest.raises(UserError, match="at least 2"):
        TRACK.metrics(np.zeros((1, 6)), np.zeros((1, 6)))


def test_submission_is_unpadded_sorted_clipped_and_rereads_as_written(tmp_path):
    path = str(tmp_path / "predictions.csv")
    predictions = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [-0.2, 1.3, 0.5, 0.25, 0.0, 1.0],
                            [0.123456789, 0.9, 0.8, 0.7, 0.6, 0.5]])
    TRACK.write_submission(path, ["00020", "3", 100], predictions)
    with open(path) as handle:
        lines = handle.read().splitlines()
    assert lines[0] == "Filename,Admiration,Amusement,Determination,Empathic Pain,Excitement,Joy"
    assert [line.split(",")[0] for line in lines[1:]] == ["3", "20", "100"]
    ids, values = TRACK.read_submission(path)
    assert ids == ["3", "20", "100"]
    np.testing.assert_allclose(values, np.clip(predictions[[1, 0, 2]], 0, 1), atol=1e-6)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]


@pytest.mark.parametrize("corruption", [
    lambda lines: [lines[0].replace("Empathic Pain", "Empathic_Pain")] + lines[1:],  # header
    lambda lines: lines[:1] + ["00003" + lines[1][1:]] + lines[2:],  # a padded id
    lambda lines: lines + [lines[1]],  # a video twice
    lambda lines: lines[:1] + [lines[1] + ",0.5"] + lines[2:],  # a field too many
    lambda lines: lines[:1] + [lines[1].replace("0.100000", "1.5")] + lines[2:],  # a value outside [0, 1]
    lambda lines: lines[:1] + [lines[1].replace("0.100000", "nan")] + lines[2:],
    lambda lines: lines[:1],  # no videos
])
def test_read_submission_rejects_a_corrupted_file(tmp_path, corruption):
    path = str(tmp_path / "predictions.csv")
    TRACK.write_submission(path, [3, 20], np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]]))
    with open(path) as handle:
        lines = handle.read().splitlines()
    write(path, "\n".join(corruption(lines)) + "\n")
    with pytest.raises(UserError, match="predictions.csv"):
        TRACK.read_submission(path)


def test_writer_refuses_nan_predictions_and_repeated_ids(tmp_path):
    path = str(tmp_path / "predictions.csv")
    with pytest.raises(UserError, match="NaN"):
        TRACK.write_submission(path, [1, 2], np.array([[np.nan] * 6, [0.5] * 6]))
    with pytest.raises(UserError, match="twice"):
        TRACK.write_submission(path, ["1", "00001"], np.full((2, 6), 0.5))
    assert not os.path.exists(path)


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_holding_anything_but_arrays_is_refused_without_running_it(emi_dir):
    marker = emi_dir / "ran"
    write(emi_dir / "vit" / "00000.pkl", pickle.dumps(_RunsACommand(marker)))
    path = TRACK.read_split(str(emi_dir), "train").items[0].features["vit"]
    with pytest.raises(UserError, match="00000.pkl"):
        read_feature_sequence(path)
    assert not marker.exists()


def replace_train_file(emi_dir, text):
    write(emi_dir / "train_split.csv", text)


@pytest.mark.parametrize("text, message", [
    (HEADER.replace("Empathic Pain", "Empathic_Pain") + "\n0,0,0,0,0,0,0\n", r"line 1: unknown column 'Empathic_Pain'"),
    (HEADER.replace(",Joy", "") + "\n0,0,0,0,0,0\n", r"line 1: no column 'Joy'"),
    (HEADER + "\n0,0,0,0,0,0,0\n00000,0,0,0,0,0,0\n", r"line 3: video 00000 is listed twice \(first on line 2\)"),
    (HEADER + "\n0,0,0,1.5,0,0,0\n", r"line 2: Determination is 1.5, outside \[0, 1\]"),
    (HEADER + "\n0,0,0,0,nan,0,0\n", r"line 2: Empathic Pain is nan, outside \[0, 1\]"),
    (HEADER + "\n0,0,abc,0,0,0,0\n", r"line 2: Amusement is 'abc', not a number"),
    (HEADER + "\nvideo0,0,0,0,0,0,0\n", r"line 2: Filename 'video0' is not a video id"),
    (HEADER + "\n0,0,0,0,0,0\n", r"line 2: 6 fields, the header has 7"),
    (HEADER + "\n0,0,0,0,0,0,0\n00055,0,0,0,0,0,0\n", r"line 3: an id without a video: 00055"),
    (HEADER + "\n", r"no videos listed \(an empty split\)"),
    ("", r"empty file"),
])
def test_bad_label_files_are_one_line_errors_naming_file_and_line(emi_dir, text, message):
    replace_train_file(emi_dir, text)
    with pytest.raises(UserError, match=message) as caught:
        TRACK.read_split(str(emi_dir), "train")
    assert str(emi_dir / "train_split.csv") in str(caught.value) and "\n" not in str(caught.value)


def test_a_folder_that_is_not_an_emi_layout_says_what_was_looked_for(tmp_path):
    for split, looked_for in (("train", "train_split.csv"), ("val", "valid_split.csv"), ("test", "test_data/raw/")):
        assert not TRACK.find(str(tmp_path), split)
        with pytest.raises(UserError, match=f"not an EMI .*{looked_for}"):
            TRACK.read_split(str(tmp_path), split)


def test_an_empty_test_folder_is_an_empty_split(tmp_path):
    os.makedirs(tmp_path / "test_data" / "raw")
    with pytest.raises(UserError, match="empty split"):
        TRACK.read_split(str(tmp_path), "test")


# ---- the synthetic set


def digests(root):
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def test_synthetic_set_same_seed_same_bytes_in_the_released_layout(tmp_path):
    params = dict(videos=5, frames=4, size=32, seed=2, progress=False)
    summary = synthetic_emi.generate(str(tmp_path / "a"), workers=1, **params)
    synthetic.generate(TRACK.synthetic, str(tmp_path / "b"), workers=2, **params)  # the track names its generator
    first, second = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert first == second
    assert synthetic_emi.is_generated(str(tmp_path / "a"), videos=5, frames=4, size=32, seed=2)
    assert not synthetic_emi.is_generated(str(tmp_path / "a"), videos=5, frames=4, size=32, seed=3)
    assert summary["counts"]["videos"] == {"train": 3, "val": 1, "test": 1}
    assert summary["counts"]["images"] == sum(name.endswith(".jpg") for name in first)

    root = str(tmp_path / "a")
    splits = {split: TRACK.read_split(root, split) for split in ("train", "val", "test")}
    ids = [video for split in splits.values() for video in split.ids]
    assert sorted(map(int, ids)) == list(range(5))
    for split in splits.values():
        for item in split.items:
            assert item.frames and item.frames[0].endswith("/0.jpg")
            assert np.all(np.diff(item.frame_numbers) > 0) and item.frame_numbers[0] == 1
            assert read_feature_sequence(item.features["vit"]).shape == (len(item.frames), 32)
            assert (item.audio is None) == ("wav2vec2" not in item.features)
            assert item.label is None or ((0 <= item.label) & (item.label <= 1)).all()
    test_labels = read_label_file(os.path.join(root, synthetic_emi.TEST_LABEL_FILE))
    assert [str(video) for video, _, _ in test_labels] == splits["test"].ids
    test_video = splits["test"].items[0].id
    assert os.path.isfile(os.path.join(root, "test_data", "raw", f"{int(test_video):05d}.mp4"))
    synthetic_emi.generate(root, workers=1, **dict(params, seed=3))  # a rerun replaces the set
    assert digests(root) != first


@pytest.mark.slow
def test_synthetic_labels_are_learnable_from_the_vit_features_and_shuffled_labels_are_not(tmp_path):
    root = str(tmp_path)
    synthetic_emi.generate(root, videos=100, frames=32, size=32, seed=0, workers=2, progress=False)

    def mean_features(split):
        items = TRACK.read_split(root, split).items
        return np.stack([read_feature_sequence(item.features["vit"]).mean(axis=0) for item in items]), \
            TRACK.read_split(root, split).labels()

    (train_x, train_y), (val_x, val_y) = mean_features("train"), mean_features("val")
    centre = train_x.mean(axis=0)

    def ridge_score(targets):
        design = np.c_[train_x - centre, np.ones(len(train_x))]
        weights = np.linalg.solve(design.T @ design + np.eye(design.shape[1]), design.T @ targets)
        return TRACK.metrics(np.c_[val_x - centre, np.ones(len(val_x))] @ weights, val_y)["pearson"]

    shuffled = train_y[np.random.default_rng(0).permutation(len(train_y))]
    assert ridge_score(train_y) > 0.3
    assert ridge_score(shuffled) < 0.2
    assert (val_y.std(axis=0) > 0).all()  # every emotion varies, so r is defined for each


def test_generator_flags_have_the_defaults():
    import argparse

    parser = argparse.ArgumentParser()
    synthetic_emi.add_arguments(parser)
    args = vars(parser.parse_args([]))
    assert args == synthetic_emi.DEFAULTS
    assert vars(parser.parse_args(["--videos", "9", "--frames", "20", "--size", "64", "--seed", "4"])) == {
        "videos": 9, "frames": 20, "size": 64, "seed": 4}
