"""Submission files are in the challenge format, and --eval accepts the authors' released checkpoint layouts."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY

from datasets.tracks.lsd import write_lsd_predictions
from datasets.tracks.mtl import check_mtl_file, write_mtl_predictions
from engine.entry import main

ODD_NAMES = ["10-60-1280x720_right/00001.jpg", "135-24-1920x1080/00007.jpg", "video45_1/00002.jpg",
             "a video (2)/00010.jpg", "video45_1/00001.jpg"]


def test_mtl_submission_has_the_challenge_format_and_list_order(tmp_path):
    rng = np.random.default_rng(0)
    va = rng.uniform(-1.5, 1.5, (5, 2))  # out of range on purpose: the writer clips
    expr = rng.integers(0, 8, 5)
    aus = rng.integers(0, 2, (5, 12))
    path = tmp_path / "test_predictions.txt"
    write_mtl_predictions(str(path), ODD_NAMES, va, expr, aus)
    rows = path.read_text().splitlines()
    assert rows[0] == "image,valence,arousal,expression,aus"
    assert [row.split(",")[0] for row in rows[1:]] == ODD_NAMES
    for row, v, e, au in zip(rows[1:], va, expr, aus):
        fields = row.split(",")
        assert len(fields) == 16
        assert [float(x) for x in fields[1:3]] == pytest.approx(np.clip(v, -1, 1), abs=1e-6)
        assert fields[3] == str(e) and fields[4:] == [str(x) for x in au]  # integers, no decimals
    path.write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(RuntimeError, match="4 rows for 5 listed images"):
        check_mtl_file(str(path), ODD_NAMES)


def test_lsd_submission_has_the_challenge_format_and_list_order(tmp_path):
    names = [f"{i}.jpg" for i in (3, 0, 10, 2)]
    path = tmp_path / "test_predictions.txt"
    write_lsd_predictions(str(path), names, np.array([5, 0, 3, 1]))
    assert path.read_text().splitlines() == ["image,expression", "3.jpg,5", "0.jpg,0", "10.jpg,3", "2.jpg,1"]


def test_authors_emma_checkpoint_goes_through_eval(mtl_data, tmp_path):
    from models import build_model

    model = build_model(dict(name="emma", vit_size="nano", img_size=32, patch_size=8, drop_path=0.0))
    state = {f"module.{key}": value for key, value in model.state_dict().items()}  # saved from DataParallel
    torch.save({"epoch": 7, "model": state}, tmp_path / "EMMA_MTL_1.25.pth")
    main("mtl", "", ["--eval", "--ckpt", str(tmp_path / "EMMA_MTL_1.25.pth"), "--data-dir", str(mtl_data),
                     "--output-dir", str(tmp_path / "out"), *TINY])
    rows = (tmp_path / "out" / "test_predictions.txt").read_text().splitlines()
    listed = (mtl_data / "MTL_Challenge_test_set_release.txt").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows[1:]] == listed


def test_original_cotex_checkpoint_goes_through_eval(lsd_data, tmp_path):
    from models import build_model

    model = build_model(dict(name="cotex", vit_num=3, num_classes=6, vit_size="nano", img_size=32, patch_size=8,
                             drop_path=0.0))
    state_dicts = [{f"vit.{key}": value for key, value in vit.state_dict().items()} for vit in model.vits]
    torch.save({"epoch": 5, "args": {"vit_num": 3}, "state_dicts": state_dicts}, tmp_path / "checkpoint_5.pkl")
    main("lsd", "", ["--eval", "--ckpt", str(tmp_path / "checkpoint_5.pkl"), "--data-dir", str(lsd_data),
                     "--output-dir", str(tmp_path / "out"), *TINY])
    metrics = json.loads((tmp_path / "out" / "val_metrics.json").read_text())
    assert 0 <= metrics["f1"] <= 1
    rows = (tmp_path / "out" / "test_predictions.txt").read_text().splitlines()
    listed = (lsd_data / "LSD_Challenge_test_set_release.txt").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows[1:]] == listed


def test_tuning_and_auto_smoothing_never_lower_validation_scores(mtl_data, tmp_path):
    from models import build_model

    torch.manual_seed(0)
    model = build_model(dict(name="emma", vit_size="nano", img_size=32, patch_size=8, drop_path=0.0))
    torch.save({"epoch": 1, "model": model.state_dict()}, tmp_path / "m.pth")
    common = ["--eval", "--ckpt", str(tmp_path / "m.pth"), "--data-dir", str(mtl_data), *TINY]
    main("mtl", "", common + ["--output-dir", str(tmp_path / "plain")])
    main("mtl", "", common + ["--output-dir", str(tmp_path / "tuned"), "--tune-au-thresholds", "--smooth-va", "auto"])
    plain = json.loads((tmp_path / "plain" / "val_metrics.json").read_text())
    tuned = json.loads((tmp_path / "tuned" / "val_metrics.json").read_text())
    assert tuned["f1_au_before_tuning"] == pytest.approx(plain["f1_au"])
    assert tuned["f1_au"] >= plain["f1_au"] and tuned["f1_au"] == pytest.approx(tuned["f1_au_after_tuning"])
    assert (tuned["ccc_v"] + tuned["ccc_a"]) >= (plain["ccc_v"] + plain["ccc_a"]) - 1e-9
    assert len(tuned["au_thresholds"]) == 12 and "smooth_va_window" in tuned


def test_one_epoch_then_eval_on_data_with_the_real_quirks(mtl_data, tmp_path):
    """CRLF endings, trailing spaces, absent images, odd video names and every missing code, end to end."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(mtl_data, data)
    def with_missing_codes(i, row):
        fields = row.split(",")
        if i % 5 == 1:
            fields[3] = "-1"
        if i % 7 == 2:
            fields[4:] = ["-1"] * 12
        if i % 11 == 3:
            fields[1:3] = ["-5", "-5"]
        return ",".join(fields) + ("  " if i % 3 == 0 else "")

    for name in ("training_set_annotations.txt", "validation_set_annotations.txt"):
        rows = (data / name).read_text().splitlines()
        rows = [rows[0]] + [with_missing_codes(i, row) for i, row in enumerate(rows[1:])]
        (data / name).write_bytes(("\r\n".join(rows) + "\r\n").encode())
    val_rows = (data / "validation_set_annotations.txt").read_text().splitlines()[1:]
    absent = val_rows[1].split(",")[0]
    (data / "cropped_aligned" / absent).unlink()
    codes = np.array([[float(x) for x in row.split(",")[1:]] for row in
                      (data / "training_set_annotations.txt").read_text().splitlines()[1:]])
    assert (codes[:, 0] == -5).any() and (codes[:, 2] == -1).any() and (codes[:, 3:] == -1).any()

    main("mtl", "", ["--data-dir", str(data), "--output-dir", str(tmp_path / "run"), "--epochs", "1", *TINY])
    main("mtl", "", ["--eval", "--ckpt", str(tmp_path / "run" / "checkpoints" / "last.pth"), "--data-dir", str(data),
                     "--output-dir", str(tmp_path / "eval"), *TINY])
    listed = (data / "MTL_Challenge_test_set_release.txt").read_text().splitlines()[1:]
    rows = (tmp_path / "eval" / "test_predictions.txt").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == listed and all(len(r.split(",")) == 16 for r in rows[1:])
    predicted = [row.split(",")[0] for row in (tmp_path / "eval" / "val_predictions.txt").read_text().splitlines()[1:]]
    assert absent not in predicted and len(predicted) == len(val_rows) - 1
    # the metrics are those of the written file: recompute the AU F1 from it by hand
    truth = {row.split(",")[0].strip(): [float(x) for x in row.split(",")[1:]] for row in val_rows}
    pred = np.array([[float(x) for x in row.split(",")[4:]] for row in
                     (tmp_path / "eval" / "val_predictions.txt").read_text().splitlines()[1:]])
    true = np.array([truth[name][3:] for name in predicted])
    f1s = []
    for au in range(12):
        known = true[:, au] != -1
        tp = ((pred[known, au] == 1) & (true[known, au] == 1)).sum()
        fp = ((pred[known, au] == 1) & (true[known, au] == 0)).sum()
        fn = ((pred[known, au] == 0) & (true[known, au] == 1)).sum()
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    metrics = json.loads((tmp_path / "eval" / "val_metrics.json").read_text())
    assert metrics["f1_au"] == pytest.approx(np.mean(f1s), abs=1e-9)
