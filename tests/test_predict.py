"""``predict.py`` and ``engine.tasks.predict.Predictor``: a video written here with PyAV (two synthetic people, a frame
without a face, a tone as its sound) gives one row per decoded frame and face, the people on their own tracks, the
predictions of ``main_prepare.py`` followed by ``main_mtl.py --eval`` on the same frames (up to the JPEG round trip
of the prepared crops), an annotated copy with the source's frames, timing and sound; the API and the command line
agree; ensembles average as ``--eval --ckpt A B``; hub references resolve from a local cache with no network; bad
inputs cost one line each."""

import contextlib
import io
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY

from datasets import mtl
from datasets.media import prepared
from engine.tasks.predict import (
    AU_ACTIVE_COLUMNS,
    AU_COLUMNS,
    BOX_COLUMNS,
    EXPR_COLUMNS,
    NO_FACE,
    VIDEO_COLUMNS,
    Predictor,
)
from utils import abaw

FRAMES, BLANK = 10, 5  # frame 5 (1-based) shows nobody
WIDTH, HEIGHT, TILE = 256, 128, 96
EVAL = ["--num-workers", "0", "--precision", "fp32", "--device", "cpu"]
SETTINGS = dict(device="cpu", precision="fp32")
# The crops of main_prepare.py are JPEG files (quality 95): the models see them decoded, predict.py sees the crops
# themselves. On these faces that moves the tiny model's VA by at most 5e-4 (another face, or another detection of
# it, moves it by about 1e-2).
JPEG_TOLERANCE = 2e-3


def face_tile(identity: int) -> np.ndarray:
    from datasets.synthetic.render import render_face, sample_identity, sample_look

    rng = np.random.default_rng(identity)
    face, look = sample_identity(rng, "video"), sample_look(rng, "video")
    return render_face(face, np.zeros(15), (0.0, 1.0, 0.0, 0.0), look, TILE, rng)[:, :, ::-1].copy()


def people_frames():
    """Two people side by side (the left one drifting right and down), nobody in frame ``BLANK``."""
    left, right = face_tile(3), face_tile(5)
    for k in range(FRAMES):
        frame = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
        if k + 1 != BLANK:
            frame[16 + k:16 + k + TILE, 16 + 2 * k:16 + 2 * k + TILE] = left
            frame[16:16 + TILE, 144:144 + TILE] = right
        yield frame


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The two-person video with sound, a folder of inputs (the video, two images, an unreadable file)."""
    from datasets.synthetic.videos import write_video

    root = tmp_path_factory.mktemp("predict_media")
    tone = (0.3 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    video = str(root / "people.mp4")
    write_video(video, people_frames(), np.arange(FRAMES) / 10, sound=tone, fps=10)
    inputs = root / "inputs"
    (inputs / "deeper").mkdir(parents=True)
    shutil.copy(video, inputs / "deeper" / "people.mp4")
    import cv2

    frames = list(people_frames())
    cv2.imwrite(str(inputs / "two_faces.jpg"), frames[0][:, :, ::-1])
    cv2.imwrite(str(inputs / "nobody.png"), frames[BLANK - 1])
    (inputs / "broken.mp4").write_bytes(b"not a video at all")
    return {"video": video, "inputs": str(inputs), "root": root}


@pytest.fixture(scope="module")
def checkpoints(mtl_data, tmp_path_factory):
    """A tiny EMMA trained 2 steps, and a second member: the same with its heads moved (another model's outputs)."""
    from engine.entry import main

    root = tmp_path_factory.mktemp("predict_ckpts")
    with contextlib.redirect_stdout(io.StringIO()):
        main("mtl", "", ["--data-dir", str(mtl_data), "--output-dir", str(root / "a"), *TINY, "--epochs", "1",
                         "--max-steps", "2", "--dan", "none"])
    first = root / "a" / "checkpoints" / "best_mtl.pth"
    content = torch.load(first, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for key, value in content["model"].items():
        if value.is_floating_point() and ("head" in key):
            content["model"][key] = value + 0.5 * torch.randn(value.shape, generator=generator)
    content["au_thresholds"] = [0.45] * abaw.NUM_AU
    second = root / "b.pth"
    torch.save(content, second)
    return {"a": str(first), "b": str(second)}


def run_cli(capsys, *argv):
    """``predict.py`` in this process: (exit status, stdout, stderr)."""
    from engine.tasks.predict.cli import main

    capsys.readouterr()
    code = 0
    try:
        main("", [str(arg) for arg in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def cli_run(media, checkpoints, tmp_path_factory):
    """``predict.py INPUTS --annotate`` over the folder of inputs, once."""
    out = tmp_path_factory.mktemp("predict_out")
    from engine.tasks.predict.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main("", [media["inputs"], "--ckpt", checkpoints["a"], "--output-dir", str(out), "--annotate",
                      "--precision", "fp32", "--device", "cpu", "--no-progress"])
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    return {"out": out, "code": code, "stderr": err.getvalue()}


@pytest.fixture(scope="module")
def table(cli_run):
    return pd.read_csv(cli_run["out"] / "people.csv")


def test_every_decoded_frame_is_listed_once_and_a_frame_without_a_face_keeps_an_empty_row(table):
    assert list(table.columns) == VIDEO_COLUMNS
    assert sorted(table["frame"].unique()) == list(range(1, FRAMES + 1))
    assert np.allclose(table.groupby("frame")["time"].first().to_numpy(), np.arange(FRAMES) / 10)
    blank = table[table["frame"] == BLANK]
    assert len(blank) == 1 and blank["track"].isna().all() and blank[["valence", *AU_COLUMNS]].isna().to_numpy().all()
    others = table[table["frame"] != BLANK]
    assert (others.groupby("frame")["track"].apply(sorted).map(tuple) == (1, 2)).all()
    assert not others[["valence", "arousal", "expression", *EXPR_COLUMNS, *AU_COLUMNS]].isna().to_numpy().any()
    assert np.allclose(others[EXPR_COLUMNS].sum(axis=1), 1, atol=1e-5)
    assert set(others["expression"]) <= set(abaw.EXPR_NAMES)
    assert ((others[AU_COLUMNS].to_numpy() >= 0.5) == others[AU_ACTIVE_COLUMNS].to_numpy()).all()


def test_two_people_are_kept_apart_on_one_track_each(table):
    left, right = table[table["track"] == 1], table[table["track"] == 2]
    assert len(left) == len(right) == FRAMES - 1
    assert (left["x2"] < WIDTH / 2 + 20).all() and (right["x1"] > WIDTH / 2).all()
    assert (np.diff(left["x1"].to_numpy()) > -2).all()  # the left one drifts right, and stays track 1


def test_the_command_names_an_unreadable_input_does_the_others_and_exits_non_zero(cli_run, table):
    assert cli_run["code"] == 2
    assert "broken.mp4" in cli_run["stderr"] and "1 input(s) failed" in cli_run["stderr"]
    assert {"people.csv", "people_timeline.png", "people_annotated.mp4", "images.csv"} <= set(
        os.listdir(cli_run["out"]))
    assert not (cli_run["out"] / "broken.csv").exists()


def test_images_give_a_row_per_face_and_a_row_saying_so_without_one(cli_run):
    images = pd.read_csv(cli_run["out"] / "images.csv")
    faces = images[images["image"].str.endswith("two_faces.jpg")]
    assert faces["face"].tolist() == [1, 2] and faces["x1"].iloc[0] < faces["x1"].iloc[1]
    assert faces["note"].isna().all() and faces["valence"].notna().all()
    nobody = images[images["image"].str.endswith("nobody.png")]
    assert len(nobody) == 1 and nobody["note"].iloc[0] == NO_FACE and nobody["valence"].isna().all()


def test_the_annotated_video_has_the_sources_frames_timing_and_sound(cli_run, media):
    import av

    def frame_times(path):
        with av.open(path) as container:
            return [float(frame.time) for frame in container.decode(video=0)]

    annotated = str(cli_run["out"] / "people_annotated.mp4")
    assert np.allclose(frame_times(annotated), frame_times(media["video"]), atol=1e-3)
    with av.open(annotated) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        rate = stream.rate
    assert abs(samples / rate - 1.0) < 0.1  # the one-second tone
    with av.open(annotated) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    source = next(people_frames()).astype(int)
    assert np.abs(first - source).mean() > 1  # something is drawn on it


def test_the_api_and_the_command_line_agree(table, media, checkpoints):
    frame = Predictor(checkpoints["a"], **SETTINGS).video(media["video"])
    assert list(frame.columns) == list(table.columns) and len(frame) == len(table)
    assert frame["track"].astype("float").equals(table["track"].astype("float"))
    assert frame["expression"].fillna("").tolist() == table["expression"].fillna("").tolist()
    numbers = frame.columns.drop(["expression"])
    assert np.allclose(frame[numbers].to_numpy(float), table[numbers].to_numpy(float), atol=1e-6, equal_nan=True)


@pytest.fixture(scope="module")
def prepared_eval(media, checkpoints, tmp_path_factory):
    """``main_prepare.py`` on the video, then ``main_mtl.py --eval`` on its crops (an MTL layout whose validation
    file lists every crop), for one checkpoint and for the ensemble of both."""
    from engine.entry import main as mtl_main
    from engine.tasks.prepare import main as prepare_main

    root = tmp_path_factory.mktemp("prepared_eval")
    with contextlib.redirect_stdout(io.StringIO()):
        prepare_main("", ["--videos", media["video"], "--output-dir", str(root / "prepared"), "--device", "cpu",
                          "--no-progress"])
    data = root / "data"
    data.mkdir()
    os.symlink(root / "prepared" / prepared.CROPS, data / mtl.IMAGE_DIR)
    images = sorted(f"{folder}/{name}" for folder in os.listdir(data / mtl.IMAGE_DIR)
                    for name in os.listdir(data / mtl.IMAGE_DIR / folder))
    labels = ",0.1,0.2,1," + ",".join(["0"] * abaw.NUM_AU)
    for name in (mtl.TRAIN_FILE, mtl.VAL_FILE):
        (data / name).write_text(",".join(mtl.FIELD_NAMES) + "\n" + "".join(f"{i}{labels}\n" for i in images))
    results = {}
    for key, ckpts in (("a", [checkpoints["a"]]), ("ab", [checkpoints["a"], checkpoints["b"]])):
        with contextlib.redirect_stdout(io.StringIO()):
            mtl_main("mtl", "", ["--eval", "--ckpt", *ckpts, "--data-dir", str(data), "--output-dir",
                                 str(root / f"eval_{key}"), *EVAL])
        results[key] = read_submission(root / f"eval_{key}" / "val_predictions.txt")
    return {"crops": data / mtl.IMAGE_DIR, "eval": results, "data": data, "prepared": root / "prepared"}


def read_submission(path) -> pd.DataFrame:
    """An MTL submission file (image, valence, arousal, expression index, 12 AU decisions per line)."""
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return pd.DataFrame({"image": [row[0] for row in rows], "valence": [float(row[1]) for row in rows],
                         "arousal": [float(row[2]) for row in rows], "expression": [int(row[3]) for row in rows],
                         **{name: [int(row[4 + k]) for row in rows] for k, name in enumerate(AU_ACTIVE_COLUMNS)}})


def eval_rows(predictions: pd.DataFrame) -> pd.DataFrame:
    """The submission rows keyed by (track, frame): the left person's folder is track 1, the right one's track 2."""
    folder = predictions["image"].str.split("/").str[0]
    frame = predictions["image"].str.split("/").str[1].str[:-4].astype(int)
    track = folder.map({"people_left": 1, "people_right": 2})
    return predictions.assign(track=track, frame=frame).set_index(["track", "frame"])


def test_predictions_equal_prepare_then_eval_up_to_the_jpeg_round_trip(table, prepared_eval):
    reference = eval_rows(prepared_eval["eval"]["a"])
    ours = table.dropna(subset=["track"]).astype({"track": int}).set_index(["track", "frame"])
    assert sorted(reference.index) == sorted(ours.index)  # the same faces on the same tracks
    ours = ours.loc[reference.index]
    gap = np.abs(ours[["valence", "arousal"]].to_numpy() - reference[["valence", "arousal"]].to_numpy())
    assert gap.max() < JPEG_TOLERANCE, gap.max()
    probabilities = ours[EXPR_COLUMNS].to_numpy()
    top_two = np.sort(probabilities, 1)[:, -2:]
    decided = top_two[:, 1] - top_two[:, 0] > JPEG_TOLERANCE  # not a near tie that the JPEG may flip
    assert (ours["expression"].map(abaw.EXPR_NAMES.index).to_numpy() == reference["expression"].to_numpy())[
        decided].all()
    clear = np.abs(ours[AU_COLUMNS].to_numpy() - 0.5) > JPEG_TOLERANCE  # not within the JPEG's reach of 0.5
    assert (ours[AU_ACTIVE_COLUMNS].to_numpy() == reference[AU_ACTIVE_COLUMNS].to_numpy())[clear].all()


def read_crops(folder, images):
    from datasets.images import decode_image

    return np.stack([decode_image(str(folder / image)).permute(1, 2, 0).numpy() for image in images])


@pytest.mark.parametrize("members", ["a", "ab"])
def test_on_the_prepared_crops_the_api_writes_what_eval_writes_for_one_model_and_an_ensemble(prepared_eval,
                                                                                                checkpoints, members):
    reference = prepared_eval["eval"][members]
    predictor = Predictor([checkpoints[key] for key in members], **SETTINGS)
    ours = predictor.faces(read_crops(prepared_eval["crops"], reference["image"]))
    assert np.array_equal(ours[["valence", "arousal"]].to_numpy().round(6), reference[["valence", "arousal"]])
    assert (ours["expression"].map(abaw.EXPR_NAMES.index) == reference["expression"]).all()
    assert (ours[AU_ACTIVE_COLUMNS].to_numpy() == reference[AU_ACTIVE_COLUMNS].to_numpy()).all()
    assert predictor.au_thresholds == [0.5] * abaw.NUM_AU  # the first member's (the second's are 0.45)


def test_an_ensemble_averages_probabilities_and_clipped_va_with_the_first_members_thresholds(checkpoints):
    from models import build_model

    crops = np.stack([face_tile(3)[8:, :][:88, 4:92]] * 2 + [face_tile(5)[:88, :88]])
    crops = np.ascontiguousarray(crops)
    members = []
    for key in ("a", "b"):
        saved = torch.load(checkpoints[key], map_location="cpu", weights_only=True)
        model = build_model(saved["model_config"]).eval()
        model.load_state_dict(saved["model"])
        size = saved["model_config"]["img_size"]
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255)
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(
            1, 3, 1, 1)
        with torch.no_grad():
            members.append(model((x - mean) / std).double().numpy())
    va = np.mean([np.clip(m[:, abaw.OUT_VA], -1, 1) for m in members], 0)
    expr = np.mean([torch.softmax(torch.from_numpy(m[:, abaw.OUT_EXPR]), 1).numpy() for m in members], 0)
    aus = np.mean([1 / (1 + np.exp(-m[:, abaw.OUT_AU])) for m in members], 0)
    ours = Predictor([checkpoints["a"], checkpoints["b"]], **SETTINGS).faces(crops)
    assert np.allclose(ours[["valence", "arousal"]].to_numpy(), va, atol=2e-6)
    assert np.allclose(ours[EXPR_COLUMNS].to_numpy(), expr, atol=1e-5)
    assert np.allclose(ours[AU_COLUMNS].to_numpy(), aus, atol=1e-5)
    assert (ours[AU_ACTIVE_COLUMNS].to_numpy() == (aus >= 0.5)).all()  # the first member's thresholds, not 0.45
    assert list(ours["expression"]) == [abaw.EXPR_NAMES[k] for k in expr.argmax(1)]


# ---- smoothing: the windows a training run stored in its checkpoint, applied per track

SMOOTHING = {"va": 5, "expr": 3}


@pytest.fixture(scope="module")
def smoothed_checkpoint(checkpoints, tmp_path_factory):
    """Checkpoint a with the windows that a run trained with ``--smooth-va 5 --smooth-expr 3`` stores."""
    path = tmp_path_factory.mktemp("smoothed") / "smoothed.pth"
    content = torch.load(checkpoints["a"], map_location="cpu", weights_only=True)
    assert content["smoothing"] == {"va": 0, "expr": 0}  # a's own run smoothed nothing, and stored that
    torch.save(dict(content, smoothing=SMOOTHING), path)
    return str(path)


@pytest.fixture(scope="module")
def smoothing_tables(media, smoothed_checkpoint):
    """The video through the API with the checkpoint's smoothing and without."""
    return {smoothing: Predictor(smoothed_checkpoint, smoothing=smoothing, **SETTINGS).video(media["video"])
            for smoothing in (True, False)}


def moving_average(values, tracks, frames, window):
    """Each row's mean over the rows of its own track whose frame number is within window // 2 of its own: the
    frames that exist, so fewer at a track's ends and around a frame where the face is missing."""
    values = np.asarray(values, np.float64)
    averaged = np.empty_like(values)
    for row in range(len(values)):
        near = (tracks == tracks[row]) & (np.abs(frames - frames[row]) <= window // 2)
        averaged[row] = values[near].mean(0)
    return averaged


def test_a_videos_tracks_are_smoothed_over_their_frame_numbers_with_the_checkpoints_windows(smoothing_tables,
                                                                                           smoothed_checkpoint):
    assert Predictor(smoothed_checkpoint, **SETTINGS).smoothing_windows == SMOOTHING
    raw, table = smoothing_tables[False], smoothing_tables[True]
    assert raw[["frame", "track"]].equals(table[["frame", "track"]])
    faces = raw["track"].notna().to_numpy()
    raw, ours = raw[faces], table[faces]
    tracks, frames = raw["track"].to_numpy(int), raw["frame"].to_numpy(int)
    assert BLANK not in frames  # a gap in both tracks: frame 4's window is frames 2, 3, 4 and 6
    va = raw[["valence", "arousal"]].to_numpy(float)
    assert np.abs(va).max() < 1  # never clipped here, so the written VA is the model's (to 6 decimals)
    expected_va = moving_average(va, tracks, frames, SMOOTHING["va"])
    assert np.allclose(ours[["valence", "arousal"]].to_numpy(float), expected_va, atol=2e-6)
    assert not np.allclose(ours[["valence", "arousal"]].to_numpy(float), va, atol=1e-4)
    probabilities = moving_average(raw[EXPR_COLUMNS].to_numpy(float), tracks, frames, SMOOTHING["expr"])
    assert np.allclose(ours[EXPR_COLUMNS].to_numpy(float), probabilities, atol=1e-6)
    assert list(ours["expression"]) == [abaw.EXPR_NAMES[k] for k in probabilities.argmax(1)]
    assert np.array_equal(ours[AU_COLUMNS].to_numpy(float), raw[AU_COLUMNS].to_numpy(float))  # AUs: not smoothed
    assert np.array_equal(ours[AU_ACTIVE_COLUMNS].to_numpy(int), raw[AU_ACTIVE_COLUMNS].to_numpy(int))


def test_the_command_smooths_as_the_api_and_no_smoothing_writes_each_frames_own_outputs(capsys, tmp_path, media,
                                                                                        smoothed_checkpoint,
                                                                                        smoothing_tables):
    common = [media["video"], "--ckpt", smoothed_checkpoint, "--device", "cpu", "--precision", "fp32",
              "--no-progress", "--no-timeline"]
    code, out, err = run_cli(capsys, *common, "--output-dir", tmp_path / "smoothed")
    assert code == 0 and "VA 5, expression 3 frames" in out + err
    code, out, err = run_cli(capsys, *common, "--output-dir", tmp_path / "raw", "--no-smoothing")
    assert code == 0 and "smoothed" not in out + err
    for folder, smoothing in (("smoothed", True), ("raw", False)):
        written, api = pd.read_csv(tmp_path / folder / "people.csv"), smoothing_tables[smoothing]
        numbers = api.columns.drop(["expression"])
        assert np.allclose(written[numbers].to_numpy(float), api[numbers].to_numpy(float), atol=1e-6, equal_nan=True)
        assert written["expression"].fillna("").tolist() == api["expression"].fillna("").tolist()


def test_smoothed_predictions_equal_prepare_then_eval_with_the_same_stored_windows(smoothing_tables, prepared_eval,
                                                                                   smoothed_checkpoint, tmp_path):
    """``main_mtl.py --eval`` smooths each prepared video (a person's folder, frames by number) with the
    checkpoint's windows; predict.py smooths each track: the same rows, up to the JPEG round trip."""
    import json

    from engine.entry import main as mtl_main

    with contextlib.redirect_stdout(io.StringIO()):
        mtl_main("mtl", "", ["--eval", "--ckpt", smoothed_checkpoint, "--data-dir", str(prepared_eval["data"]),
                             "--output-dir", str(tmp_path / "eval"), *EVAL])
    metrics = json.loads((tmp_path / "eval" / "val_metrics.json").read_text())
    assert (metrics["smooth_va_window"], metrics["smooth_expr_window"]) == (5, 3)
    reference = eval_rows(read_submission(tmp_path / "eval" / "val_predictions.txt"))
    table = smoothing_tables[True]
    ours = table.dropna(subset=["track"]).astype({"track": int}).set_index(["track", "frame"]).loc[reference.index]
    gap = np.abs(ours[["valence", "arousal"]].to_numpy() - reference[["valence", "arousal"]].to_numpy())
    assert gap.max() < JPEG_TOLERANCE, gap.max()
    unsmoothed = smoothing_tables[False].dropna(subset=["track"]).astype({"track": int}).set_index(
        ["track", "frame"]).loc[reference.index]
    # without its smoothing the same comparison would fail: the windows are what make them agree
    assert np.abs(unsmoothed[["valence", "arousal"]].to_numpy() - reference[["valence", "arousal"]].to_numpy()
                  ).max() > JPEG_TOLERANCE


@pytest.mark.gpu
def test_on_a_gpu_the_faces_tracks_and_predictions_are_the_cpus(media, checkpoints, table):
    gpu = Predictor(checkpoints["a"], device="cuda", precision="fp32").video(media["video"])
    assert gpu[["frame", "track"]].astype(float).equals(table[["frame", "track"]].astype(float))
    faces = gpu["track"].notna().to_numpy()
    assert np.allclose(gpu.loc[faces, BOX_COLUMNS].to_numpy(float), table.loc[faces, BOX_COLUMNS].to_numpy(float),
                       atol=0.5)  # MTCNN's kernels on the GPU round apart from the CPU's
    assert np.allclose(gpu.loc[faces, ["valence", "arousal"]].to_numpy(float),
                       table.loc[faces, ["valence", "arousal"]].to_numpy(float), atol=JPEG_TOLERANCE)


def fake_hub_cache(root, repo: str, filename: str, source: str) -> str:
    """A Hugging Face cache holding ``repo``'s ``filename`` at its main revision, laid out as huggingface_hub
    writes it (refs/main naming a snapshot folder)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    target = folder / "snapshots" / commit / filename
    target.parent.mkdir(parents=True)
    shutil.copy(source, target)
    return str(target)


def test_a_hub_reference_resolves_from_the_local_cache_with_no_network(tmp_path, monkeypatch, checkpoints):
    import huggingface_hub.constants

    from engine.tasks.predict import resolve_checkpoint
    from utils.errors import UserError

    cached = fake_hub_cache(tmp_path / "hub", "someone/emma-tiny", "runs/best_mtl.pth", checkpoints["a"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert os.path.samefile(resolve_checkpoint("hf-hub:someone/emma-tiny/runs/best_mtl.pth"), cached)
    crops = np.ascontiguousarray(np.stack([face_tile(3)[:88, :88]]))
    hub = Predictor("hf-hub:someone/emma-tiny/runs/best_mtl.pth", **SETTINGS).faces(crops)
    local = Predictor(checkpoints["a"], **SETTINGS).faces(crops)
    pd.testing.assert_frame_equal(hub, local)
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        resolve_checkpoint("hf-hub:someone/emma-tiny/other.pth")
    with pytest.raises(UserError, match="hf-hub:owner/repo/file.pth"):
        resolve_checkpoint("hf-hub:someone/emma-tiny")


def test_a_checkpoint_that_is_not_a_model_of_this_project_is_one_line(capsys, tmp_path, media, checkpoints):
    state_dict = tmp_path / "weights.pth"
    torch.save({"layer.weight": torch.zeros(2)}, state_dict)
    other = torch.load(checkpoints["a"], map_location="cpu", weights_only=True)
    other["model_config"] = dict(other["model_config"], name="cotex")
    cotex = tmp_path / "cotex.pth"
    torch.save(other, cotex)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    for path, message in ((state_dict, "has no model_config"), (cotex, "holds a cotex model"),
                          (text, "not a readable checkpoint")):
        code, _, err = run_cli(capsys, media["video"], "--ckpt", path, "--output-dir", tmp_path / "out",
                               "--device", "cpu", "--no-progress")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "people.csv").exists()


# ---- a temporal checkpoint with sound


@pytest.fixture(scope="module")
def temporal_checkpoint(mtl_data, tmp_path_factory):
    """A tiny temporal model over a random EMMA backbone's features and the log-mel sound (main_temporal.py)."""
    from test_temporal import FAST, make_backbone

    from engine.entry import main

    root = tmp_path_factory.mktemp("predict_temporal")
    backbone = make_backbone(root / "emma.pth")
    with contextlib.redirect_stdout(io.StringIO()):
        main("temporal", "", ["--data-dir", str(mtl_data), "--backbone-ckpt", str(backbone), *FAST, "--audio",
                              "logmel", "--epochs", "1", "--output-dir", str(root / "run")])
    return str(root / "run" / "checkpoints" / "best_mtl.pth")


@pytest.mark.slow
def test_a_temporal_checkpoint_hears_the_video_and_masks_the_sound_of_a_silent_one(temporal_checkpoint, media,
                                                                                     tmp_path, capsys):
    from datasets.synthetic.videos import write_video

    silent = str(tmp_path / "people.mp4")
    write_video(silent, people_frames(), np.arange(FRAMES) / 10, fps=10)
    predictor = Predictor(temporal_checkpoint, **SETTINGS)
    capsys.readouterr()
    heard = predictor.video(media["video"])
    assert "has no sound" not in capsys.readouterr().err
    masked = predictor.video(silent)
    assert "has no sound" in capsys.readouterr().err
    for table in (heard, masked):
        assert sorted(table["frame"].unique()) == list(range(1, FRAMES + 1))
        faces = table.dropna(subset=["track"])
        assert len(faces) == 2 * (FRAMES - 1) and not faces[["valence", *EXPR_COLUMNS, *AU_COLUMNS]].isna().any(
            axis=None)
        assert np.allclose(faces[EXPR_COLUMNS].sum(axis=1), 1, atol=1e-5)
    assert heard[["track", "frame"]].equals(masked[["track", "frame"]])  # the same faces: only the sound differs
    assert not np.allclose(heard[["valence", "arousal"]].to_numpy(float), masked[["valence", "arousal"]].to_numpy(
        float), equal_nan=True)
    from utils.errors import UserError

    with pytest.raises(UserError, match="temporal checkpoint"):
        predictor.faces(np.zeros((1, 112, 112, 3), np.uint8))


# A random backbone's features move by up to 0.6% of their scale with the JPEG round trip of the crops, and the
# temporal model trained for an epoch on them moves VA by up to about 0.03 with them (measured).
TEMPORAL_JPEG_TOLERANCE = 0.08


@pytest.mark.slow
def test_a_temporal_checkpoint_predicts_what_prepare_then_temporal_eval_predicts(temporal_checkpoint, prepared_eval,
                                                                                media, tmp_path):
    """main_temporal.py --eval over main_prepare.py's crops, frame times and WAV against predict.py on the video
    itself: the same faces in the same sequences; on eval's own frame features, the same predictions (the windows,
    the sound and the model are the same); on its own crops, equal up to the JPEG round trip."""
    import glob

    from engine.entry import main

    data = prepared_eval["data"]
    for name in (prepared.AUDIO, prepared.TIMES, prepared.VIDEOS_JSON):
        if not (data / name).exists():
            os.symlink(prepared_eval["prepared"] / name, data / name)
    with contextlib.redirect_stdout(io.StringIO()):
        main("temporal", "", ["--eval", "--ckpt", temporal_checkpoint, "--data-dir", str(data), "--output-dir",
                              str(tmp_path / "eval"), *EVAL])
    reference = eval_rows(read_submission(tmp_path / "eval" / "val_predictions.txt"))
    predictor = Predictor(temporal_checkpoint, **SETTINGS)
    table = predictor.video(media["video"])
    ours = table.dropna(subset=["track"]).astype({"track": int}).set_index(["track", "frame"])
    assert sorted(reference.index) == sorted(ours.index)
    gap = np.abs(ours.loc[reference.index, ["valence", "arousal"]].to_numpy() - reference[["valence", "arousal"]])
    assert gap.to_numpy().max() < TEMPORAL_JPEG_TOLERANCE

    (features_file,) = [path for path in glob.glob(str(tmp_path / "eval" / "features" / "*" / "val.npy"))
                        if "audio-" not in path]
    times = dict(zip(table["frame"], table["time"]))
    tracks, frames = (reference.index.get_level_values(level).to_numpy() for level in (0, 1))
    same_features = predictor.decode(predictor.sequence.outputs(media["video"], np.load(features_file), tracks,
                                                                frames, np.array([times[f] for f in frames])))
    assert np.allclose(same_features["valence"], reference["valence"], atol=2e-6)
    assert np.allclose(same_features["arousal"], reference["arousal"], atol=2e-6)
    assert (same_features["expression"] == np.asarray(abaw.EXPR_NAMES)[reference["expression"]]).all()
    for name in AU_ACTIVE_COLUMNS:
        assert (same_features[name] == reference[name].to_numpy()).all()


# ---- a temporal checkpoint handed on with its backbone


@pytest.fixture(scope="module")
def handed_on(temporal_checkpoint, tmp_path_factory):
    """The temporal checkpoint as someone receives it: in one folder with its backbone, under the backbone's
    recorded name, the path recorded in it (the trainer's machine) absent here; and what it predicts where the
    recorded path holds the backbone."""
    root = tmp_path_factory.mktemp("handed_on")
    content = torch.load(temporal_checkpoint, map_location="cpu", weights_only=True)
    recorded = content["model_config"]["features"]["backbone"]
    name = os.path.basename(recorded)
    content["model_config"]["features"]["backbone"] = str(root / "trainers_machine" / name)
    received = root / "received"
    received.mkdir()
    torch.save(content, received / "temporal.pth")
    shutil.copy(recorded, received / name)
    return {"ckpt": str(received / "temporal.pth"), "backbone": str(received / name), "recorded": recorded,
            "content": content, "root": root}


@pytest.fixture(scope="module")
def recorded_table(temporal_checkpoint, media):
    return Predictor(temporal_checkpoint, **SETTINGS).video(media["video"])


@pytest.mark.slow
def test_a_temporal_checkpoint_finds_its_backbone_beside_it_and_predicts_as_before(handed_on, recorded_table, media):
    predictor = Predictor(handed_on["ckpt"], **SETTINGS)
    assert os.path.samefile(predictor.task.backbone.path, handed_on["backbone"])
    pd.testing.assert_frame_equal(predictor.video(media["video"]), recorded_table)
    given = Predictor(handed_on["ckpt"], backbone=handed_on["recorded"], **SETTINGS)  # named: wins over the lookup
    assert given.task.backbone.path == handed_on["recorded"]


@pytest.mark.slow
def test_a_temporal_checkpoint_without_its_backbone_or_with_another_one_is_one_line(capsys, tmp_path, media,
                                                                                    handed_on, checkpoints):
    from test_temporal import make_backbone

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(handed_on["ckpt"], alone / "temporal.pth")
    other = make_backbone(tmp_path / "other.pth", seed=1)  # the same architecture, other weights
    common = [media["video"], "--output-dir", tmp_path / "out", "--device", "cpu", "--no-progress"]
    for extra, message in (([], "neither there nor beside it"),
                           (["--backbone-ckpt", other], "was trained on the features of"),
                           (["--backbone-ckpt", tmp_path / "absent.pth"], "backbone not found")):
        code, _, err = run_cli(capsys, *common, "--ckpt", alone / "temporal.pth", *extra)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(capsys, *common, "--ckpt", checkpoints["a"], "--backbone-ckpt", other)
    assert code == 2 and "goes with a temporal checkpoint" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "people.csv").exists()


@pytest.mark.slow
def test_a_hub_temporal_checkpoint_reads_its_backbone_from_the_same_hub_folder_offline(tmp_path, monkeypatch, media,
                                                                                       handed_on, recorded_table):
    import huggingface_hub.constants

    cached = fake_hub_cache(tmp_path / "hub", "someone/emma-temporal", "runs/temporal.pth", handed_on["ckpt"])
    name = os.path.basename(handed_on["backbone"])
    shutil.copy(handed_on["backbone"], os.path.join(os.path.dirname(cached), name))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    predictor = Predictor("hf-hub:someone/emma-temporal/runs/temporal.pth", **SETTINGS)
    assert os.path.samefile(predictor.task.backbone.path, os.path.join(os.path.dirname(cached), name))
    assert "snapshots" in predictor.task.backbone.path  # the hub cache's copy, not the one handed on locally
    pd.testing.assert_frame_equal(predictor.video(media["video"]), recorded_table)
