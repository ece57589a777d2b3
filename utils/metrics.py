"""ABAW4 challenge metrics, threshold tuning and temporal smoothing, on numpy arrays.

Definitions follow ABAW4.md: CCC with population statistics, expression macro F1 over the 8 classes, mean binary F1
over the 12 AUs, P_MTL = (CCC_V + CCC_A) / 2 + F1_EXPR + F1_AU, and P_LSD = macro F1 over the 6 classes. Each task
is scored only on the frames labelled for it (missing codes: valence/arousal -5, expression -1, AU -1); a task with
no labelled frame scores 0.0, never NaN.

Results are plain Python floats, ints and lists so that they go straight into JSON.
"""

import numpy as np

from utils.abaw import (
    AU_MISSING,
    AU_NAMES,
    DEFAULT_AU_THRESHOLD,
    EXPR_MISSING,
    EXPR_NAMES,
    LABEL_AU,
    LABEL_COLUMNS,
    LABEL_EXPR,
    LABEL_VA,
    LSD_CLASSES,
    SMOOTHING_WINDOWS,
    VA_MISSING,
)
from utils.errors import UserError


def ccc(pred, true) -> float:
    """Concordance correlation coefficient with population statistics (ddof 0), computed in float64.

    Returns 0.0 for empty input and when the denominator is zero (both series constant and equal), where CCC is
    undefined.
    """
    pred = np.asarray(pred, dtype=np.float64).ravel()
    true = np.asarray(true, dtype=np.float64).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"ccc: pred has {pred.size} values but true has {true.size}")
    if pred.size == 0:
        return 0.0
    pred_mean, true_mean = pred.mean(), true.mean()
    covariance = np.mean((pred - pred_mean) * (true - true_mean))
    denominator = pred.var() + true.var() + (pred_mean - true_mean) ** 2
    if denominator == 0:
        return 0.0
    return float(2.0 * covariance / denominator)


def confusion_matrix(pred, true, num_classes: int) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class (scikit-learn's convention), int64."""
    pred = np.asarray(pred).ravel().astype(np.int64)
    true = np.asarray(true).ravel().astype(np.int64)
    if pred.shape != true.shape:
        raise ValueError(f"confusion_matrix: pred has {pred.size} values but true has {true.size}")
    for name, values in (("pred", pred), ("true", true)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} has a class outside 0..{num_classes - 1}")
    counts = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _f1_from_counts(tp, fp, fn) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN), elementwise; 0 where a class was neither present nor predicted."""
    tp, fp, fn = (np.asarray(c, dtype=np.float64) for c in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def per_class_f1(confusion: np.ndarray) -> np.ndarray:
    tp = np.diag(confusion)
    return _f1_from_counts(tp, confusion.sum(axis=0) - tp, confusion.sum(axis=1) - tp)


def binary_f1(pred, true) -> float:
    """F1 of the positive class; 0.0 when there is no positive in either pred or true (or no frame)."""
    pred = np.asarray(pred).astype(bool)
    true = np.asarray(true).astype(bool)
    tp = np.count_nonzero(pred & true)
    return float(_f1_from_counts(tp, np.count_nonzero(pred & ~true), np.count_nonzero(~pred & true)))


def _split_labels(labels):
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2 or labels.shape[1] != LABEL_COLUMNS:
        raise ValueError(f"MTL labels must have shape (N, {LABEL_COLUMNS}), got {labels.shape}")
    return labels[:, LABEL_VA], labels[:, LABEL_EXPR], labels[:, LABEL_AU]


def va_ccc(va_pred, va_true) -> tuple[float, float]:
    """(CCC_V, CCC_A), each over the frames whose own label is not -5."""
    va_pred = np.asarray(va_pred, dtype=np.float64)
    va_true = np.asarray(va_true, dtype=np.float64)
    scores = []
    for dim in range(2):
        labelled = va_true[:, dim] != VA_MISSING
        scores.append(ccc(va_pred[labelled, dim], va_true[labelled, dim]))
    return scores[0], scores[1]


def mtl_metrics(va_pred, expr_pred, au_pred, labels) -> dict:
    """All MTL scores of ABAW4.md.

    va_pred (N, 2) floats, expr_pred (N,) class indices, au_pred (N, 12) 0/1 decisions, labels (N, 15) =
    [valence, arousal, expression, 12 AUs] with the missing codes. F1_AU is the mean over all 12 AUs; an AU with no
    labelled frame counts 0.0. counts: n frames, n_va frames with a valence label, n_expr frames with an expression,
    n_au frames with at least one AU label.
    """
    va_true, expr_true, au_true = _split_labels(labels)
    va_pred = np.asarray(va_pred, dtype=np.float64)
    expr_pred = np.asarray(expr_pred).ravel()
    au_pred = np.asarray(au_pred)
    n = len(va_true)
    if va_pred.shape != (n, 2) or expr_pred.shape != (n,) or au_pred.shape != (n, len(AU_NAMES)):
        raise ValueError(
            f"mtl_metrics: shapes va {va_pred.shape}, expr {expr_pred.shape}, au {au_pred.shape} do not match "
            f"{n} label rows"
        )

    ccc_v, ccc_a = va_ccc(va_pred, va_true)

    has_expr = expr_true != EXPR_MISSING
    expr_confusion = confusion_matrix(expr_pred[has_expr], expr_true[has_expr], len(EXPR_NAMES))
    f1_per_expr = per_class_f1(expr_confusion)
    n_expr = int(has_expr.sum())
    acc_expr = float(np.trace(expr_confusion) / n_expr) if n_expr else 0.0

    au_labelled = au_true != AU_MISSING
    f1_per_au = [binary_f1(au_pred[au_labelled[:, k], k], au_true[au_labelled[:, k], k]) for k in range(len(AU_NAMES))]

    f1_expr = float(f1_per_expr.mean())
    f1_au = float(np.mean(f1_per_au))
    return {
        "p_mtl": (ccc_v + ccc_a) / 2 + f1_expr + f1_au,
        "ccc_v": ccc_v,
        "ccc_a": ccc_a,
        "f1_expr": f1_expr,
        "acc_expr": acc_expr,
        "f1_au": f1_au,
        "f1_per_au": f1_per_au,
        "f1_per_expr": f1_per_expr.tolist(),
        "counts": {
            "n": n,
            "n_va": int((va_true[:, 0] != VA_MISSING).sum()),
            "n_expr": n_expr,
            "n_au": int(au_labelled.any(axis=1).sum()),
        },
    }


def lsd_metrics(pred, true, num_classes: int = len(LSD_CLASSES)) -> dict:
    """P_LSD (macro F1 over all classes), accuracy, per-class F1 and the confusion matrix (rows = true)."""
    confusion = confusion_matrix(pred, true, num_classes)
    f1_per_class = per_class_f1(confusion)
    total = int(confusion.sum())
    return {
        "f1": float(f1_per_class.mean()),
        "acc": float(np.trace(confusion) / total) if total else 0.0,
        "f1_per_class": f1_per_class.tolist(),
        "confusion": confusion.tolist(),
    }


def au_decisions(probs, thresholds=DEFAULT_AU_THRESHOLD) -> np.ndarray:
    """0/1 AU decisions: sigmoid probability >= threshold (one threshold, or one per AU)."""
    return (np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)).astype(np.int64)


def tune_au_thresholds(probs, au_labels, grid=None) -> tuple[list[float], float, float]:
    """Per-AU threshold on the sigmoid probability that maximises that AU's F1 on its labelled frames.

    grid: candidate thresholds (default 0.01..0.99 in steps of 0.01); 0.5 is always added. Among thresholds with
    the best F1 the one closest to 0.5 wins, so an AU keeps 0.5 unless another threshold is strictly better and
    tuning never lowers the F1_AU it is tuned on. Returns (thresholds, F1_AU at 0.5, F1_AU with the thresholds).
    """
    probs = np.asarray(probs, dtype=np.float64)
    au_labels = np.asarray(au_labels)
    if probs.shape != au_labels.shape or probs.ndim != 2:
        raise ValueError(f"tune_au_thresholds: probs {probs.shape} and labels {au_labels.shape} must be equal (N, K)")
    if grid is None:
        grid = np.round(np.arange(1, 100) / 100, 2)
    candidates = np.union1d(np.asarray(grid, dtype=np.float64), [DEFAULT_AU_THRESHOLD])
    # Order the candidates by distance to 0.5 so that argmax (first maximum) breaks ties towards 0.5.
    candidates = candidates[np.argsort(np.abs(candidates - DEFAULT_AU_THRESHOLD), kind="stable")]

    thresholds, f1_before, f1_after = [], [], []
    for k in range(probs.shape[1]):
        labelled = au_labels[:, k] != AU_MISSING
        prob_k, positive = probs[labelled, k], au_labels[labelled, k] == 1
        predicted = prob_k[:, None] >= candidates[None, :]  # (frames, candidates)
        tp = (predicted & positive[:, None]).sum(axis=0)
        fp = predicted.sum(axis=0) - tp
        fn = positive.sum() - tp
        f1 = _f1_from_counts(tp, fp, fn)
        best = int(np.argmax(f1))
        thresholds.append(float(candidates[best]))
        f1_before.append(binary_f1(au_decisions(prob_k), positive))
        f1_after.append(binary_f1(au_decisions(prob_k, candidates[best]), positive))
    return thresholds, float(np.mean(f1_before)), float(np.mean(f1_after))


def smooth_by_video(values, videos, frames, window: int) -> np.ndarray:
    """Centred moving average of each row over the frames of its own video within window // 2 frame numbers.

    Frames of a video are taken in frame-number order; near a video's ends or across gaps in the numbering only the
    frames that exist are averaged. window 0 or 1 returns the values unchanged; other windows must be odd. values may
    be (N,) or (N, D); the result has the input's row order and shape (float64).
    """
    values = np.asarray(values, dtype=np.float64)
    videos = np.asarray(videos)
    frames = np.asarray(frames).astype(np.int64).ravel()
    if len(values) != len(videos) or len(values) != len(frames):
        raise ValueError(f"smooth_by_video: {len(values)} values, {len(videos)} videos, {len(frames)} frames")
    window = int(window)
    if window < 0 or (window > 1 and window % 2 == 0):
        raise UserError(f"smoothing window {window} is invalid: use 0 (off) or an odd number of frames such as 5")
    if window <= 1 or len(values) == 0:
        return values.copy()

    half = window // 2
    _, video_ids = np.unique(videos, return_inverse=True)
    # One sortable key per row, spaced so that a window around one video's frames never reaches another video.
    first_frame = frames.min()
    span = int(frames.max() - first_frame) + 2 * half + 1
    keys = video_ids.astype(np.int64) * span + (frames - first_frame) + half
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    start = np.searchsorted(sorted_keys, keys - half, side="left")
    stop = np.searchsorted(sorted_keys, keys + half, side="right")

    flat = values.reshape(len(values), -1)
    cumulative = np.concatenate([np.zeros((1, flat.shape[1])), np.cumsum(flat[order], axis=0)])
    window_sum = cumulative[stop] - cumulative[start]
    smoothed = window_sum / (stop - start)[:, None]
    return smoothed.reshape(values.shape)


def choose_smoothing(va_pred, va_true, videos, frames, windows=SMOOTHING_WINDOWS) -> tuple[int, dict]:
    """Pick the VA smoothing window with the best mean CCC on validation.

    Returns (best window, {window: (CCC_V + CCC_A) / 2}). The answer is 0 (no smoothing) unless some window is
    strictly better than no smoothing; among equally good windows the smallest wins.
    """
    scores = {}
    for window in sorted({0, *(int(w) for w in windows)}):
        smoothed = smooth_by_video(va_pred, videos, frames, window)
        scores[window] = float(np.mean(va_ccc(smoothed, va_true)))
    best_window = 0
    for window, score in scores.items():
        if score > scores[best_window]:
            best_window = window
    return best_window, scores
