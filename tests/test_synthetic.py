"""Specification of the built-in synthetic data set (datasets/synthetic/): layouts, labels, determinism, learnability.

Files are read here with plain string handling, independently of the project's loaders.
"""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from datasets import synthetic
from datasets.synthetic import cli as synthetic_cli
from utils.abaw import AU_NUMBERS, EXPR_NAMES
from utils.errors import UserError

MTL_HEADER = "image,valence,arousal,expression,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
AU_COLUMN = {au: 4 + i for i, au in enumerate(AU_NUMBERS)}  # AU number -> field of an annotation row
HAPPINESS, SADNESS, SURPRISE = (EXPR_NAMES.index(name) for name in ("Happiness", "Sadness", "Surprise"))


def read_rows(path):
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    return lines[0], [line.split(",") for line in lines[1:]]


def all_files(root):
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = handle.read()
    return found


def labelled_rows(root, names=("training_set_annotations.txt", "validation_set_annotations.txt",
                               "test_set_annotations.txt")):
    rows = []
    for name in names:
        rows.extend(read_rows(os.path.join(root, name))[1])
    return rows


@pytest.fixture(scope="module")
def mtl_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtl")
    synthetic.generate_mtl(root, videos=40, frames=40, size=32, seed=3, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def lsd_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("lsd")
    synthetic.generate_lsd(root, per_class=12, size=32, seed=3, workers=1, progress=False)
    return root


# determinism


@pytest.mark.parametrize("track", ["mtl", "lsd"])
def test_same_seed_writes_identical_bytes_whatever_the_worker_count(tmp_path, track):
    generate = synthetic.generate_mtl if track == "mtl" else synthetic.generate_lsd
    sizes = {"videos": 4, "frames": 6} if track == "mtl" else {"per_class": 4}
    generate(tmp_path / "one", size=32, seed=7, workers=1, progress=False, **sizes)
    generate(tmp_path / "two", size=32, seed=7, workers=2, progress=False, **sizes)
    one, two = all_files(tmp_path / "one"), all_files(tmp_path / "two")
    assert len(one) > 20
    assert one == two


def test_another_seed_writes_other_images_and_names(tmp_path):
    synthetic.generate_mtl(tmp_path / "a", videos=3, frames=4, size=32, seed=1, workers=1, progress=False)
    synthetic.generate_mtl(tmp_path / "b", videos=3, frames=4, size=32, seed=2, workers=1, progress=False)
    a, b = all_files(tmp_path / "a"), all_files(tmp_path / "b")
    assert set(a) != set(b)  # other video names
    images_a = sorted(v for k, v in a.items() if k.endswith(".jpg"))
    images_b = sorted(v for k, v in b.items() if k.endswith(".jpg"))
    assert len(images_a) == len(images_b) == 12
    assert not set(images_a) & set(images_b)


# layout


def test_mtl_layout_matches_the_official_files(mtl_set):
    root = mtl_set
    split_videos = {}
    for name in ("training_set_annotations.txt", "validation_set_annotations.txt", "test_set_annotations.txt"):
        header, rows = read_rows(root / name)
        assert header == MTL_HEADER
        assert all(len(row) == 16 for row in rows)
        for row in rows:
            video, frame = row[0].split("/")
            assert len(frame) == 9 and frame.endswith(".jpg") and int(frame[:5]) >= 1
            assert (root / "cropped_aligned" / row[0]).is_file()
        split_videos[name] = {row[0].split("/")[0] for row in rows}
        for video in split_videos[name]:
            first = min(row[0] for row in rows if row[0].startswith(video + "/"))
            assert first == f"{video}/00001.jpg"
    train, val, test = split_videos.values()
    assert (len(train), len(val), len(test)) == (24, 8, 8)
    assert not train & val and not train & test and not val & test
    assert sorted(os.listdir(root / "cropped_aligned")) == sorted(train | val | test)

    header, listed = read_rows(root / "MTL_Challenge_test_set_release.txt")
    assert header == "image,valence,arousal,expression,aus"
    assert all(len(row) == 1 for row in listed)
    _, test_rows = read_rows(root / "test_set_annotations.txt")
    assert [row[0] for row in listed] == [row[0] for row in test_rows]
    assert len(listed) == 8 * 40
    assert synthetic.is_generated(root, "mtl", videos=40, frames=40, size=32, seed=3)


def test_mtl_values_are_in_range_and_va_has_four_decimals(mtl_set):
    for row in labelled_rows(mtl_set):
        valence, arousal = row[1], row[2]
        for text in (valence, arousal):
            assert text == "-5" or (-1 <= float(text) <= 1 and len(text.split(".")[1]) == 4)
        assert -1 <= int(row[3]) <= 7
        assert set(row[4:]) <= {"-1", "0", "1"}
    image = cv2.imread(str(mtl_set / "cropped_aligned" / labelled_rows(mtl_set)[0][0]))
    assert image.shape == (32, 32, 3)


def test_video_names_are_unique_and_varied():
    names = synthetic.video_names(np.random.default_rng(0), 300)
    assert len(set(names)) == 300
    assert any(n.startswith("video") and "_" in n for n in names)
    assert any(n.startswith("video") and "_" not in n for n in names)
    assert any("x" in n and "-" in n and n.endswith(("_left", "_right")) for n in names)
    assert any("x" in n and "-" in n and not n.endswith(("_left", "_right")) for n in names)


@pytest.mark.parametrize("videos, expected", [(3, (1, 1, 1)), (4, (2, 1, 1)), (10, (6, 2, 2)), (40, (24, 8, 8))])
def test_videos_split_about_60_20_20_with_at_least_one_each(videos, expected):
    assert synthetic.split_sizes(videos) == expected


def test_lsd_layout_matches_the_official_files(lsd_set):
    root = lsd_set
    train_folders = sorted(os.listdir(root / "training_set_synthetic_images"))
    assert train_folders == sorted(["ANGRER", "DISGUST", "FEAR", "HAPPINESS", "SADNESS", "SURPRISE"])
    val_folders = sorted(os.listdir(root / "validation_set_real_images"))
    assert val_folders == sorted(["ANGER", "DISGUST", "FEAR", "HAPPINESS", "SADNESS", "SURPRISE"])
    for folder in train_folders:
        assert len(os.listdir(root / "training_set_synthetic_images" / folder)) == 12
    for folder in val_folders:
        assert len(os.listdir(root / "validation_set_real_images" / folder)) == 5  # max(5, 12 / 4)

    header, listed = read_rows(root / "LSD_Challenge_test_set_release.txt")
    assert header == "image,expression"
    assert [row[0] for row in listed] == [f"{i}.jpg" for i in range(30)]
    header, labels = read_rows(root / "test_set_annotations.txt")
    assert header == "image,expression"
    assert [row[0] for row in labels] == [row[0] for row in listed]
    classes = [int(row[1]) for row in labels]
    assert np.bincount(classes, minlength=6).tolist() == [5] * 6
    assert classes != sorted(classes)  # the order does not give the class away
    assert sorted(os.listdir(root / "test_set_real_images")) == sorted(row[0] for row in listed)
    assert synthetic.is_generated(root, "lsd", per_class=12, size=32, seed=3)


def test_lsd_real_splits_get_a_quarter_of_the_training_count_at_least_five():
    assert synthetic.lsd_real_per_class(200) == 50
    assert synthetic.lsd_real_per_class(12) == 5


# labels


def au_rate(rows, expression, au):
    values = [int(row[AU_COLUMN[au]]) for row in rows if int(row[3]) == expression and row[AU_COLUMN[au]] != "-1"]
    assert len(values) > 20
    return np.mean(values)


def test_expression_labels_carry_their_prototype_aus(mtl_set):
    rows = labelled_rows(mtl_set)
    assert au_rate(rows, HAPPINESS, 12) > 0.6 and au_rate(rows, HAPPINESS, 6) > 0.6
    assert au_rate(rows, HAPPINESS, 15) < 0.2
    assert au_rate(rows, SADNESS, 15) > 0.45
    assert au_rate(rows, SADNESS, 1) > 0.5 and au_rate(rows, SADNESS, 4) > 0.5
    assert au_rate(rows, SADNESS, 12) < 0.2
    assert au_rate(rows, SURPRISE, 25) > 0.6 and au_rate(rows, SURPRISE, 26) > 0.6
    assert au_rate(rows, SURPRISE, 4) < 0.2


def test_happiness_has_mostly_positive_valence_and_sadness_negative(mtl_set):
    rows = [row for row in labelled_rows(mtl_set) if row[1] != "-5"]
    happy = [float(row[1]) for row in rows if int(row[3]) == HAPPINESS]
    sad = [float(row[1]) for row in rows if int(row[3]) == SADNESS]
    assert len(happy) > 20 and len(sad) > 20
    assert np.mean(np.array(happy) > 0) > 0.8
    assert np.mean(np.array(sad) < 0) > 0.8


def test_missing_label_codes_follow_the_documented_rates(mtl_set):
    _, train = read_rows(mtl_set / "training_set_annotations.txt")
    no_va = np.mean([row[1] == "-5" for row in train])
    no_au = np.mean([row[4] == "-1" for row in train])
    assert abs(no_va - synthetic.FRAME_NO_VA_RATE) < 0.08
    assert abs(no_au - synthetic.FRAME_NO_AU_RATE) < 0.08
    for row in train:  # missing codes cover a whole field group
        assert (row[1] == "-5") == (row[2] == "-5")
        assert len(set(row[4:])) == 1 or "-1" not in row[4:]
    _, val = read_rows(mtl_set / "validation_set_annotations.txt")
    videos = {}
    for row in train + val:
        videos.setdefault(row[0].split("/")[0], set()).add(row[3] == "-1")
    assert all(len(flags) == 1 for flags in videos.values())  # expression is missing for whole videos
    without = np.mean([flags == {True} for flags in videos.values()])
    assert 0.1 < without < 0.55  # VIDEO_NO_EXPR_RATE = 0.3 over 32 videos
    assert all(row[1] != "-5" and row[4] != "-1" for row in val)  # validation has all VA and AU, as released


def test_test_labels_are_complete(mtl_set):
    _, test = read_rows(mtl_set / "test_set_annotations.txt")
    assert all(row[1] != "-5" and row[3] != "-1" and "-1" not in row[4:] for row in test)


# videos


def test_a_video_changes_expression_a_few_times_and_ramps_smoothly():
    largest_steps = []
    for index in range(20):
        plan = synthetic.plan_video(seed=0, video_index=index, frames=50)
        changes = np.count_nonzero(np.diff(plan["expression"]))
        assert 1 <= changes <= 3
        steps = np.abs(np.diff(plan["au"], axis=0))
        assert steps.max() < 0.35  # intensities ramp: even across an episode boundary, no jump to a full expression
        largest_steps.append(steps.max())
        assert np.abs(np.diff(plan["pose"][:, 0])).max() < 1.0  # head rotation drifts, in degrees per frame
    assert np.median(largest_steps) < 0.25


def test_frames_of_a_video_share_one_identity(mtl_set):
    _, rows = read_rows(mtl_set / "validation_set_annotations.txt")
    by_video = {}
    for row in rows:
        by_video.setdefault(row[0].split("/")[0], []).append(row[0])
    first, second = list(by_video.values())[:2]

    def load(name):
        return cv2.imread(str(mtl_set / "cropped_aligned" / name)).astype(np.float32)

    within = np.mean([np.abs(load(a) - load(b)).mean() for a, b in zip(first[:-1], first[1:])])
    between = np.mean([np.abs(load(a) - load(b)).mean() for a, b in zip(first, second)])
    assert within < 0.5 * between


# learnability


def gradient_histograms(image):
    """HOG-like features: 9 orientation bins of gradient magnitude per 8x8 cell, normalised per cell."""
    grey = image.astype(np.float32)
    magnitude, angle = cv2.cartToPolar(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    bins = (angle * (9 / np.pi)).astype(int) % 9
    histogram = np.zeros(grey.shape + (9,), np.float32)
    np.put_along_axis(histogram, bins[..., None], magnitude[..., None], axis=2)
    cells = histogram.reshape(8, 8, 8, 8, 9).sum(axis=(1, 3))
    return np.sqrt(cells / (np.linalg.norm(cells, axis=2, keepdims=True) + 1e-3)).ravel()


def expression_features(root, names):
    features, labels = [], []
    for row in labelled_rows(root, names):
        if int(row[3]) >= 0:
            image = cv2.imread(str(root / "cropped_aligned" / row[0]), cv2.IMREAD_GRAYSCALE)
            features.append(gradient_histograms(image))
            labels.append(int(row[3]))
    return np.array(features), np.array(labels)


def test_expression_is_learnable_from_pixels_and_not_from_shuffled_labels(tmp_path):
    synthetic.generate_mtl(tmp_path, videos=50, frames=40, size=64, seed=0, workers=2, progress=False)
    train_x, train_y = expression_features(tmp_path, ["training_set_annotations.txt"])
    test_x, test_y = expression_features(tmp_path, ["validation_set_annotations.txt", "test_set_annotations.txt"])
    scaler = StandardScaler().fit(train_x)
    classes = np.unique(test_y)

    def macro_f1(predictions):
        return f1_score(test_y, predictions, labels=classes, average="macro")

    def trained_on(labels):
        model = RidgeClassifier(alpha=1000.0).fit(scaler.transform(train_x), labels)
        return macro_f1(model.predict(scaler.transform(test_x)))

    learned = trained_on(train_y)
    majority = macro_f1(np.full_like(test_y, np.bincount(train_y).argmax()))
    shuffled = trained_on(np.random.default_rng(0).permutation(train_y))
    print(f"\nexpression macro F1 on held-out videos: learned {learned:.3f}, majority baseline {majority:.3f}, "
          f"shuffled labels {shuffled:.3f}")
    assert learned > majority + 0.15
    assert learned > shuffled + 0.08
    assert shuffled < 0.2  # about chance (1/8 for random guesses): no leak through image statistics


# bookkeeping, CLI


def test_is_generated_only_for_a_complete_set_with_the_same_parameters(tmp_path):
    assert not synthetic.is_generated(tmp_path, "mtl")
    synthetic.generate_mtl(tmp_path, videos=3, frames=2, size=32, seed=5, workers=1, progress=False)
    assert synthetic.is_generated(tmp_path, "mtl", videos=3, frames=2, size=32, seed=5, workers=4)
    assert not synthetic.is_generated(tmp_path, "mtl", videos=3, frames=2, size=32, seed=6)
    assert not synthetic.is_generated(tmp_path, "mtl")  # defaults: 40 videos
    assert not synthetic.is_generated(tmp_path, "lsd", size=32, seed=5)
    meta = (tmp_path / "synthetic_meta.json").read_text()
    (tmp_path / "synthetic_meta.json").write_text(meta.replace('"complete": true', '"complete": false'))
    assert not synthetic.is_generated(tmp_path, "mtl", videos=3, frames=2, size=32, seed=5)
    with pytest.raises(TypeError):
        synthetic.is_generated(tmp_path, "mtl", per_class=3)


def test_regenerating_replaces_an_earlier_synthetic_set(tmp_path):
    synthetic.generate_lsd(tmp_path, per_class=8, size=32, seed=0, workers=1, progress=False)
    synthetic.generate_lsd(tmp_path, per_class=2, size=32, seed=0, workers=1, progress=False)
    assert len(os.listdir(tmp_path / "training_set_synthetic_images" / "FEAR")) == 2
    assert synthetic.is_generated(tmp_path, "lsd", per_class=2, size=32, seed=0)


def test_refuses_to_write_over_data_it_did_not_make(tmp_path):
    (tmp_path / "cropped_aligned").mkdir()
    with pytest.raises(UserError, match="did not write"):
        synthetic.generate_mtl(tmp_path, videos=3, frames=2, size=32, workers=1, progress=False)
    assert (tmp_path / "cropped_aligned").is_dir()


def test_bad_values_from_code_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="videos"):
        synthetic.generate_mtl(tmp_path, videos=2, progress=False)
    with pytest.raises(UserError, match="size"):
        synthetic.generate_lsd(tmp_path, size=8, progress=False)


def test_cli_prints_a_one_line_summary_with_speed(tmp_path, capsys):
    code = synthetic_cli.main(["lsd", str(tmp_path), "--per-class", "2", "--size", "32", "--workers", "1",
                               "--no-progress"])
    out = capsys.readouterr().out.strip()
    assert code == 0
    assert len(out.splitlines()) == 1 and "images/s" in out and "wrote 72 images" in out


@pytest.mark.parametrize("argv", [["mtl", "x", "--videos", "2"], ["mtl", "x", "--frames", "zero"],
                                  ["lsd", "x", "--per-class", "0"], ["lsd", "x", "--size", "16"],
                                  ["mtl", "x", "--workers", "0"], ["mtl", "x", "--seed", "-1"]])
def test_cli_rejects_bad_values_with_exit_status_2(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        synthetic_cli.main(argv)
    assert stop.value.code == 2
    assert "error" in capsys.readouterr().err


def test_module_runs_as_the_command(tmp_path):
    """``python -m datasets.synthetic`` hands over to datasets.synthetic.cli: same summary line, exit status 0."""
    done = subprocess.run([sys.executable, "-m", "datasets.synthetic", "lsd", str(tmp_path), "--per-class", "1",
                           "--size", "32", "--workers", "1", "--no-progress"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("synthetic lsd: wrote 66 images")
    assert synthetic.is_generated(tmp_path, "lsd", per_class=1, size=32)


def lsd_features(folder):
    """Gradient histograms and class index of every image under ``folder``/<CLASS>/ (classes in sorted order)."""
    features, labels = [], []
    for label, class_folder in enumerate(sorted(folder.iterdir())):
        for path in sorted(class_folder.glob("*.jpg")):
            features.append(gradient_histograms(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)))
            labels.append(label)
    return np.array(features), np.array(labels)


def test_lsd_has_a_domain_gap_that_learning_still_crosses(tmp_path):
    """Trained on rendered faces, a classifier does much better on unseen rendered faces than on photo-style ones,
    and still well above chance (1/6) on the photo style."""
    synthetic.generate_lsd(tmp_path, per_class=150, size=64, seed=0, workers=2, progress=False)
    rendered_x, rendered_y = lsd_features(tmp_path / "training_set_synthetic_images")
    photo_x, photo_y = lsd_features(tmp_path / "validation_set_real_images")
    order = np.random.default_rng(0).permutation(len(rendered_y))
    fit, held_out = order[: len(order) * 3 // 4], order[len(order) * 3 // 4:]
    scaler = StandardScaler().fit(rendered_x[fit])
    model = RidgeClassifier(alpha=1000.0).fit(scaler.transform(rendered_x[fit]), rendered_y[fit])
    same_domain = f1_score(rendered_y[held_out], model.predict(scaler.transform(rendered_x[held_out])), average="macro")
    other_domain = f1_score(photo_y, model.predict(scaler.transform(photo_x)), average="macro")
    print(f"\nLSD macro F1 of a classifier trained on rendered faces: rendered {same_domain:.3f}, "
          f"photo style {other_domain:.3f}")
    assert same_domain > other_domain + 0.2
    assert other_domain > 1 / 6 + 0.1
