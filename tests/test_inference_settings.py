"""The settings a training run's files were written with (AU thresholds tuned on validation, the VA and expression
smoothing windows) go into that run's own best checkpoint, and ``--eval`` applies them again unless a flag is typed;
a checkpoint given to ``--eval`` is an input and keeps its bytes."""

import contextlib
import hashlib
import io
import json
import shutil

import pytest
import torch
from conftest import TINY

from engine.entry import main
from utils import abaw


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def quiet_main(track, argv):
    with contextlib.redirect_stdout(io.StringIO()):
        main(track, "", [str(arg) for arg in argv])


@pytest.fixture(scope="module")
def tuned_run(mtl_data, tmp_path_factory):
    """A tiny EMMA trained 2 steps with tuned AU thresholds and fixed smoothing windows."""
    out = tmp_path_factory.mktemp("tuned_run")
    quiet_main("mtl", ["--data-dir", mtl_data, "--output-dir", out, *TINY, "--epochs", "1", "--max-steps", "2",
                       "--tune-au-thresholds", "--smooth-va", "5", "--smooth-expr", "3"])
    return out


def test_training_stores_its_tuned_thresholds_and_smoothing_windows_in_its_best_checkpoint(tuned_run):
    best = load(tuned_run / "checkpoints" / "best_mtl.pth")
    tuned = json.loads((tuned_run / "au_thresholds.json").read_text())["au_thresholds"]
    val = json.loads((tuned_run / "val_metrics.json").read_text())
    assert best["au_thresholds"] == tuned and len(tuned) == abaw.NUM_AU
    assert tuned != [abaw.DEFAULT_AU_THRESHOLD] * abaw.NUM_AU  # the tiny model's tuned values are not the default
    assert best["smoothing"] == {"va": 5, "expr": 3}
    assert (val["smooth_va_window"], val["smooth_expr_window"]) == (5, 3)
    assert all(isinstance(value, float) for value in best["au_thresholds"])  # plain values, weights_only loads them
    # only the best checkpoint of the main metric: the resume file keeps what training saved
    assert "smoothing" not in load(tuned_run / "checkpoints" / "last.pth")


def test_eval_applies_the_stored_settings_unless_a_flag_is_typed_and_never_rewrites_its_input(tuned_run, mtl_data,
                                                                                              tmp_path):
    released = tmp_path / "released.pth"
    shutil.copy(tuned_run / "checkpoints" / "best_mtl.pth", released)
    released.chmod(0o444)
    before = sha256(released)
    common = ["--eval", "--ckpt", released, "--data-dir", mtl_data, "--num-workers", "0", "--precision", "fp32",
              "--device", "cpu"]
    quiet_main("mtl", [*common, "--output-dir", tmp_path / "stored"])
    stored = json.loads((tmp_path / "stored" / "val_metrics.json").read_text())
    assert (stored["smooth_va_window"], stored["smooth_expr_window"]) == (5, 3)
    assert stored["au_thresholds"] == load(released)["au_thresholds"]
    # the checkpoint's settings write the training run's own files again
    for name in ("val_predictions.txt", "test_predictions.txt"):
        assert (tmp_path / "stored" / name).read_bytes() == (tuned_run / name).read_bytes(), name

    quiet_main("mtl", [*common, "--output-dir", tmp_path / "typed", "--smooth-va", "0", "--smooth-expr", "1",
                       "--tune-au-thresholds"])
    typed = json.loads((tmp_path / "typed" / "val_metrics.json").read_text())
    assert "smooth_va_window" not in typed and typed["smooth_expr_window"] == 1  # typed 0: off, as without a window
    assert (tmp_path / "typed" / "val_predictions.txt").read_text() != (tmp_path / "stored" /
                                                                        "val_predictions.txt").read_text()
    tuned_again = json.loads((tmp_path / "typed" / "au_thresholds.json").read_text())["au_thresholds"]
    assert tuned_again == typed["au_thresholds"]  # tuned in --eval: written beside the outputs only
    assert sha256(released) == before and "smoothing" in load(released)


def test_an_ensemble_smooths_with_its_first_members_windows(tuned_run, mtl_data, tmp_path):
    first = tmp_path / "first.pth"
    content = load(tuned_run / "checkpoints" / "best_mtl.pth")
    torch.save(dict(content, smoothing={"va": 3, "expr": 0}), first)
    common = ["--eval", "--data-dir", mtl_data, "--num-workers", "0", "--precision", "fp32", "--device", "cpu"]
    quiet_main("mtl", [*common, "--ckpt", first, tuned_run / "checkpoints" / "best_mtl.pth", "--output-dir",
                       tmp_path / "ensemble"])
    val = json.loads((tmp_path / "ensemble" / "val_metrics.json").read_text())
    assert val["smooth_va_window"] == 3 and "smooth_expr_window" not in val  # the second member's (5, 3) unused


@pytest.mark.slow
def test_a_temporal_run_stores_its_settings_in_its_best_checkpoint_too(mtl_data, tmp_path):
    from test_temporal import FAST, make_backbone

    backbone = make_backbone(tmp_path / "emma.pth")
    quiet_main("temporal", ["--data-dir", mtl_data, "--backbone-ckpt", backbone, *FAST, "--epochs", "1",
                            "--output-dir", tmp_path / "run", "--tune-au-thresholds", "--smooth-va", "3"])
    best = load(tmp_path / "run" / "checkpoints" / "best_mtl.pth")
    tuned = json.loads((tmp_path / "run" / "au_thresholds.json").read_text())["au_thresholds"]
    assert best["au_thresholds"] == tuned and best["smoothing"] == {"va": 3, "expr": 0}
