"""utils.metrics against scikit-learn and an independent numpy CCC, on random arrays with missing codes."""

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from utils.errors import UserError
from utils.metrics import (
    AU_NAMES,
    EXPR_NAMES,
    LSD_CLASSES,
    au_decisions,
    ccc,
    choose_smoothing,
    confusion_matrix,
    lsd_metrics,
    mtl_metrics,
    smooth_by_video,
    tune_au_thresholds,
)


def reference_ccc(x, y):
    """CCC written out from its definition, population moments, in float64."""
    x = np.array(x, dtype=np.float64)
    y = np.array(y, dtype=np.float64)
    mx, my = x.sum() / len(x), y.sum() / len(y)
    sxy = ((x - mx) * (y - my)).sum() / len(x)
    sxx = ((x - mx) ** 2).sum() / len(x)
    syy = ((y - my) ** 2).sum() / len(y)
    return 2 * sxy / (sxx + syy + (mx - my) ** 2)


def random_mtl(rng, n=400, missing_fraction=0.3):
    """Predictions and labels (V, A, EXPR, 12 AUs) with every missing code, independently per task and per AU."""
    va_true = rng.uniform(-1, 1, size=(n, 2))
    va_pred = np.clip(va_true + rng.normal(0, 0.4, size=(n, 2)), -1, 1)
    expr_true = rng.integers(0, 8, size=n).astype(np.float64)
    expr_pred = np.where(rng.random(n) < 0.5, expr_true, rng.integers(0, 8, size=n)).astype(np.int64)
    au_true = (rng.random((n, 12)) < 0.3).astype(np.float64)
    au_pred = np.where(rng.random((n, 12)) < 0.7, au_true, 1 - au_true).astype(np.int64)
    va_true[rng.random(n) < missing_fraction, 0] = -5
    va_true[rng.random(n) < missing_fraction, 1] = -5
    expr_true[rng.random(n) < missing_fraction] = -1
    au_true[rng.random((n, 12)) < missing_fraction] = -1
    labels = np.column_stack([va_true, expr_true, au_true])
    return va_pred, expr_pred, au_pred, labels


def test_names_follow_abaw4_order():
    assert EXPR_NAMES[0] == "Neutral" and EXPR_NAMES[4] == "Happiness" and EXPR_NAMES[7] == "Other"
    assert list(AU_NAMES) == ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25",
                              "AU26"]
    assert list(LSD_CLASSES) == ["Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"]


def test_ccc_matches_definition_with_population_statistics():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(0.3, 2.0, size=50)
    assert ccc(x, y) == pytest.approx(reference_ccc(x, y), abs=1e-12)
    assert ccc(y, y) == pytest.approx(1.0)
    assert ccc(2 * y.mean() - y, y) == pytest.approx(-1.0)  # mirrored about the mean
    # ddof 0 matters on small samples: the ddof-1 variant would differ here.
    x3, y3 = [0.1, 0.5, -0.2], [0.0, 0.4, 0.3]
    assert ccc(x3, y3) == pytest.approx(reference_ccc(x3, y3), abs=1e-12)


def test_ccc_is_zero_not_nan_when_undefined():
    assert ccc([], []) == 0.0
    assert ccc([0.2, 0.2], [0.2, 0.2]) == 0.0


def test_mtl_metrics_match_sklearn_and_numpy_ccc_on_labelled_frames():
    rng = np.random.default_rng(1)
    va_pred, expr_pred, au_pred, labels = random_mtl(rng)
    metrics = mtl_metrics(va_pred, expr_pred, au_pred, labels)

    has_v, has_a = labels[:, 0] != -5, labels[:, 1] != -5
    assert metrics["ccc_v"] == pytest.approx(reference_ccc(va_pred[has_v, 0], labels[has_v, 0]), abs=1e-12)
    assert metrics["ccc_a"] == pytest.approx(reference_ccc(va_pred[has_a, 1], labels[has_a, 1]), abs=1e-12)

    has_expr = labels[:, 2] != -1
    expr_true = labels[has_expr, 2].astype(int)
    sk_f1_expr = f1_score(expr_true, expr_pred[has_expr], labels=range(8), average="macro", zero_division=0)
    assert metrics["f1_expr"] == pytest.approx(sk_f1_expr, abs=1e-12)
    assert metrics["acc_expr"] == pytest.approx(accuracy_score(expr_true, expr_pred[has_expr]), abs=1e-12)
    sk_per_expr = f1_score(expr_true, expr_pred[has_expr], labels=range(8), average=None, zero_division=0)
    np.testing.assert_allclose(metrics["f1_per_expr"], sk_per_expr, atol=1e-12)

    sk_per_au = []
    for k in range(12):
        labelled = labels[:, 3 + k] != -1
        sk_per_au.append(f1_score(labels[labelled, 3 + k], au_pred[labelled, k], zero_division=0))
    np.testing.assert_allclose(metrics["f1_per_au"], sk_per_au, atol=1e-12)
    assert metrics["f1_au"] == pytest.approx(np.mean(sk_per_au), abs=1e-12)

    expected_p = (metrics["ccc_v"] + metrics["ccc_a"]) / 2 + sk_f1_expr + np.mean(sk_per_au)
    assert metrics["p_mtl"] == pytest.approx(expected_p, abs=1e-12)
    assert metrics["counts"] == {
        "n": 400,
        "n_va": int(has_v.sum()),
        "n_expr": int(has_expr.sum()),
        "n_au": int((labels[:, 3:] != -1).any(axis=1).sum()),
    }


def test_mtl_metrics_ignore_predictions_on_unlabelled_frames():
    rng = np.random.default_rng(2)
    va_pred, expr_pred, au_pred, labels = random_mtl(rng, n=200)
    before = mtl_metrics(va_pred, expr_pred, au_pred, labels)
    va_pred, expr_pred, au_pred = va_pred.copy(), expr_pred.copy(), au_pred.copy()
    va_pred[labels[:, 0] == -5, 0] = 100.0
    va_pred[labels[:, 1] == -5, 1] = -100.0
    expr_pred[labels[:, 2] == -1] = 3
    au_pred[labels[:, 3:] == -1] = 1
    assert mtl_metrics(va_pred, expr_pred, au_pred, labels) == before


def test_mtl_metrics_without_any_label_are_zero_and_json_ready():
    n = 7
    labels = np.column_stack([np.full((n, 2), -5.0), np.full(n, -1.0), np.full((n, 12), -1.0)])
    metrics = mtl_metrics(np.zeros((n, 2)), np.zeros(n, dtype=int), np.ones((n, 12), dtype=int), labels)
    assert metrics["p_mtl"] == 0.0
    assert metrics["ccc_v"] == metrics["ccc_a"] == metrics["f1_expr"] == metrics["acc_expr"] == metrics["f1_au"] == 0
    assert metrics["counts"] == {"n": n, "n_va": 0, "n_expr": 0, "n_au": 0}
    decoded = json.loads(json.dumps(metrics, allow_nan=False))
    assert decoded == metrics


def test_mtl_metrics_are_plain_python_values():
    rng = np.random.default_rng(3)
    metrics = mtl_metrics(*random_mtl(rng, n=50))
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics
    assert all(type(v) is float for v in metrics["f1_per_au"] + metrics["f1_per_expr"])
    assert type(metrics["p_mtl"]) is float


def test_lsd_metrics_match_sklearn():
    rng = np.random.default_rng(4)
    true = rng.integers(0, 6, size=300)
    pred = np.where(rng.random(300) < 0.6, true, rng.integers(0, 6, size=300))
    pred[pred == 2] = 3  # a class never predicted: its F1 is 0 but it still counts in the macro mean
    metrics = lsd_metrics(pred, true)
    assert metrics["f1"] == pytest.approx(
        f1_score(true, pred, labels=range(6), average="macro", zero_division=0), abs=1e-12
    )
    assert metrics["acc"] == pytest.approx(accuracy_score(true, pred), abs=1e-12)
    np.testing.assert_allclose(
        metrics["f1_per_class"], f1_score(true, pred, labels=range(6), average=None, zero_division=0), atol=1e-12
    )
    assert metrics["confusion"] == sk_confusion_matrix(true, pred, labels=range(6)).tolist()
    assert json.loads(json.dumps(metrics)) == metrics


def test_confusion_matrix_rows_are_true_classes_and_rejects_out_of_range():
    pred, true = [0, 1, 1, 2], [0, 0, 1, 2]
    np.testing.assert_array_equal(confusion_matrix(pred, true, 3), sk_confusion_matrix(true, pred, labels=range(3)))
    assert confusion_matrix([1], [0], 2)[0, 1] == 1
    with pytest.raises(ValueError):
        confusion_matrix([3], [0], 3)


def au_f1_mean(probs, labels, thresholds):
    decisions = au_decisions(probs, thresholds)
    scores = []
    for k in range(labels.shape[1]):
        labelled = labels[:, k] != -1
        scores.append(f1_score(labels[labelled, k], decisions[labelled, k], zero_division=0))
    return float(np.mean(scores))


def test_tune_au_thresholds_never_lowers_f1_and_reports_sklearn_values():
    rng = np.random.default_rng(5)
    labels = (rng.random((300, 12)) < 0.25).astype(np.float64)
    probs = np.clip(0.35 * labels + rng.uniform(0, 0.7, size=(300, 12)), 0, 1)
    labels[rng.random((300, 12)) < 0.2] = -1
    thresholds, f1_before, f1_after = tune_au_thresholds(probs, labels)
    assert len(thresholds) == 12 and all(type(t) is float for t in thresholds)
    assert f1_before == pytest.approx(au_f1_mean(probs, labels, 0.5), abs=1e-12)
    assert f1_after == pytest.approx(au_f1_mean(probs, labels, thresholds), abs=1e-12)
    assert f1_after >= f1_before
    # A coarse grid without 0.5 still has 0.5 added as a candidate.
    _, coarse_before, coarse_after = tune_au_thresholds(probs, labels, grid=[0.9])
    assert coarse_after >= coarse_before == f1_before


def test_tune_au_thresholds_finds_a_planted_threshold_and_keeps_half_on_ties():
    rng = np.random.default_rng(6)
    n = 400
    labels = (rng.random((n, 12)) < 0.4).astype(np.float64)
    # AU0: positives sit in (0.25, 0.35), negatives below 0.2, so 0.5 misses every positive and ~0.21-0.25 is perfect.
    probs = rng.uniform(0.6, 0.9, size=(n, 12)) * labels + rng.uniform(0.0, 0.4, size=(n, 12)) * (1 - labels)
    probs[:, 0] = np.where(labels[:, 0] == 1, rng.uniform(0.25, 0.35, n), rng.uniform(0.0, 0.2, n))
    thresholds, f1_before, f1_after = tune_au_thresholds(probs, labels)
    assert 0.2 < thresholds[0] <= 0.25
    assert f1_after > f1_before
    decisions = au_decisions(probs, thresholds)
    assert f1_score(labels[:, 0], decisions[:, 0]) == 1.0
    # Every other AU is already perfect at 0.5, so the tie keeps 0.5.
    assert thresholds[1:] == [0.5] * 11


def test_tune_au_thresholds_keeps_half_for_an_au_without_labels():
    probs = np.full((5, 12), 0.1)
    labels = np.zeros((5, 12))
    labels[:, 3] = -1
    thresholds, f1_before, f1_after = tune_au_thresholds(probs, labels)
    assert thresholds[3] == 0.5
    assert f1_after == f1_before == 0.0


def naive_smooth(values, videos, frames, window):
    half = window // 2
    out = np.empty_like(values, dtype=np.float64)
    for i in range(len(values)):
        same = (videos == videos[i]) & (np.abs(frames - frames[i]) <= half)
        out[i] = values[same].mean(axis=0)
    return out


def test_smoothing_stays_within_videos_and_keeps_row_order():
    rng = np.random.default_rng(7)
    videos = np.array(["video45_1"] * 30 + ["10-60-1280x720_right"] * 20 + ["135-24-1920x1080"] * 9)
    frames = np.concatenate([np.arange(1, 31), np.arange(1, 21), np.array([1, 2, 3, 7, 8, 9, 10, 40, 41])])
    values = np.column_stack([np.where(videos == "video45_1", 1.0, -1.0), rng.normal(size=len(videos))])
    shuffle = rng.permutation(len(videos))
    values, videos, frames = values[shuffle], videos[shuffle], frames[shuffle]

    for window in (3, 5, 9, 45):
        smoothed = smooth_by_video(values, videos, frames, window)
        np.testing.assert_allclose(smoothed, naive_smooth(values, videos, frames, window), atol=1e-12)
        # Column 0 is constant inside each video: averaging never mixes videos.
        np.testing.assert_array_equal(smoothed[:, 0], values[:, 0])

    np.testing.assert_array_equal(smooth_by_video(values, videos, frames, 0), values)
    np.testing.assert_array_equal(smooth_by_video(values, videos, frames, 1), values)
    one_dim = smooth_by_video(values[:, 1], videos, frames, 5)
    np.testing.assert_allclose(one_dim, naive_smooth(values, videos, frames, 5)[:, 1], atol=1e-12)


def test_smoothing_rejects_an_even_window():
    with pytest.raises(UserError):
        smooth_by_video(np.zeros(3), np.array(["a"] * 3), np.arange(3), 4)


def noisy_smooth_va(rng, videos_and_lengths):
    videos, frames, truth = [], [], []
    for name, length in videos_and_lengths:
        t = np.arange(length)
        phase = rng.uniform(0, 6)
        truth.append(np.column_stack([0.6 * np.sin(t / 15 + phase), 0.5 * np.cos(t / 20 + phase)]))
        videos += [name] * length
        frames.append(t + 1)
    truth = np.concatenate(truth)
    return np.array(videos), np.concatenate(frames), truth


def test_choose_smoothing_picks_a_window_on_a_noisy_smooth_signal():
    rng = np.random.default_rng(8)
    videos, frames, truth = noisy_smooth_va(rng, [("a", 300), ("b", 250), ("c", 200)])
    pred = truth + rng.normal(0, 0.3, size=truth.shape)
    labels = truth.copy()
    labels[rng.random(len(labels)) < 0.1] = -5
    shuffle = rng.permutation(len(videos))
    best, scores = choose_smoothing(pred[shuffle], labels[shuffle], videos[shuffle], frames[shuffle])
    assert best > 0
    assert scores[best] > scores[0]
    assert set(scores) == {0, 3, 5, 9, 15, 25, 45}


def test_choose_smoothing_never_lowers_validation_ccc():
    rng = np.random.default_rng(9)
    videos, frames, truth = noisy_smooth_va(rng, [("a", 80), ("b", 60)])
    # Predictions that are exact and frame-wise jagged: any smoothing hurts, so the answer must be 0.
    truth = truth + rng.normal(0, 0.3, size=truth.shape)
    best, scores = choose_smoothing(truth.copy(), truth, videos, frames)
    assert best == 0
    assert scores[0] == pytest.approx(1.0)
    assert all(scores[best] >= score for score in scores.values())
