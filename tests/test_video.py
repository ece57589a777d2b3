"""The video-level stage (main_video.py): its model's masking, its samples and batches, and whole runs on the
synthetic EMI set (training, --eval, one and two processes, bad input)."""

import csv
import json

import numpy as np
import pytest
import torch
from conftest import one_and_two_processes, run_main
from test_temporal import make_backbone

from datasets import synthetic
from datasets.tracks import get_track
from datasets.transforms import sample_rng
from datasets.video_level import (
    StreamAugment,
    StreamSet,
    VideoStreams,
    collate_eval,
    evenly_spaced,
    segment_means,
)
from models.video import VideoModel

FAST = ["--width", "16", "--layers", "1", "--heads", "2", "--batch-size", "4", "--warmup-epochs", "0",
        "--num-workers", "0", "--precision", "fp32", "--device", "cpu", "--log-interval", "2", "--extract-batch-size",
        "16", "--frames-per-video", "4", "--max-tokens", "8"]


def streams_of(lengths_per_stream, dims, seed=0):
    rng = np.random.default_rng(seed)
    values = [[None if n == 0 else rng.normal(size=(n, dim)).astype(np.float32) for n in lengths]
              for lengths, dim in zip(lengths_per_stream, dims)]
    times = [[None if n == 0 else np.linspace(0, 1, n, dtype=np.float32) for n in lengths]
             for lengths in lengths_per_stream]
    return VideoStreams([f"s{i}" for i in range(len(dims))], list(dims), values, times)


def test_helpers_pick_and_pool_as_documented():
    assert list(evenly_spaced(5, 8)) == [0, 1, 2, 3, 4]
    picked = evenly_spaced(100, 5)
    assert list(picked) == [0, 25, 50, 74, 99] and picked[0] == 0 and picked[-1] == 99
    values = np.arange(20, dtype=np.float32).reshape(10, 2)
    pooled = segment_means(values, 5)
    assert np.allclose(pooled, [values[i:i + 2].mean(0) for i in range(0, 10, 2)])
    assert segment_means(values, 50).shape == (10, 2)


@pytest.mark.parametrize("level", ["video", "frame"])
def test_padding_and_other_videos_of_a_batch_do_not_change_a_video_s_output(level):
    torch.manual_seed(0)
    model = VideoModel([["frames", 6], ["audio", 4]], width=16, layers=1, heads=2, dropout=0.0, out_width=3 if
                       level == "video" else 1, level=level).eval()
    streams = streams_of([[5, 3], [0, 7]], [6, 4])  # video 0 has no sound; video 1 has more of everything
    window = 8 if level == "frame" else None
    dataset = StreamSet(streams, window=window)
    alone = [model(*collate_eval([dataset[i]], window)[0]) for i in range(len(dataset))]
    together = model(*collate_eval([dataset[i] for i in range(len(dataset))], window)[0])
    for index, output in enumerate(alone):
        assert torch.isfinite(output).all()
        if level == "video":
            assert torch.allclose(output[0], together[index], atol=1e-5)
        else:  # the frames of the window, not the padding
            count = dataset.samples[index][2] - dataset.samples[index][1]
            assert torch.allclose(output[0, :count], together[index, :count], atol=1e-5)


def test_a_video_with_every_stream_missing_is_still_predicted():
    model = VideoModel([["frames", 6]], width=16, layers=1, heads=2, out_width=2).eval()
    inputs = (torch.zeros(2, 1, 6), torch.zeros(2, 1, dtype=torch.bool), torch.zeros(2, 1))
    assert torch.isfinite(model(*inputs)).all()


def test_frame_windows_cover_every_frame_once_and_come_back_in_order():
    streams = streams_of([[5, 0, 3]], [2])
    dataset = StreamSet(streams, window=2, frame_targets=[np.arange(5), np.zeros(0), np.arange(3)])
    assert dataset.samples == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (2, 0, 2), (2, 2, 3)]
    outputs = np.array([[0, 1], [2, 3], [4, -9], [10, 11], [12, -9]], np.float32)
    values, predicted = dataset.rows(outputs, np.ones(len(outputs), bool))
    assert list(values) == [0, 1, 2, 3, 4, 10, 11, 12] and predicted.all()


def test_stream_dropout_keeps_at_least_one_stream_and_the_frame_positions():
    streams = streams_of([[4, 4], [3, 3], [2, 2]], [2, 2, 2])
    dataset = StreamSet(streams, targets=np.zeros((2, 1)), train=True, stream_dropout=0.9)
    augment = StreamAugment(dataset)
    drawn = [augment.params(sample_rng(0, epoch, 0)) for epoch in range(50)]
    assert all(len(drops) < 3 for drops in drawn) and any(len(drops) == 2 for drops in drawn)
    assert drawn == [augment.params(sample_rng(0, epoch, 0)) for epoch in range(50)]  # the same on a resume
    frames = StreamSet(streams, frame_targets=[np.ones(4), np.ones(4)], window=4, train=True, stream_dropout=1.0)
    inputs, targets, _ = StreamAugment(frames).collate([((0, (0, 1)), 0)])
    assert inputs[1][0].all() and not inputs[0].any()  # the face stream dropped keeps its positions, zeroed
    assert not inputs[4].any()  # the second stream is gone: padding only


@pytest.fixture(scope="module")
def emi_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("emi_data")
    synthetic.generate("emi", str(root), videos=15, frames=8, size=32, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def emi_backbone(tmp_path_factory):
    return make_backbone(tmp_path_factory.mktemp("video_backbone") / "emma.pth")


@pytest.fixture(scope="module")
def emi_run(emi_data, emi_backbone, tmp_path_factory):
    from engine.entry import main

    out = tmp_path_factory.mktemp("emi_run")
    main("video", "", ["--track", "emi", "--data-dir", str(emi_data), "--backbone-ckpt", str(emi_backbone),
                       "--audio", "logmel", "--output-dir", str(out), "--epochs", "2", *FAST])
    return out


def test_training_writes_a_submission_the_track_reads_back(emi_run, emi_data):
    track = get_track("emi")
    path = emi_run / track.submission_file
    ids, values = track.read_submission(str(path))
    expected = track.read_split(str(emi_data), "test").ids
    assert sorted(map(int, ids)) == sorted(map(int, expected)) and values.shape == (len(expected), 6)
    assert ((values >= 0) & (values <= 1)).all()
    val = json.loads((emi_run / "val_metrics.json").read_text())
    assert {"pearson", *(f"pearson_{name.lower().replace(' ', '_')}" for name in track.label_names)} <= set(val)
    config = torch.load(emi_run / "checkpoints" / "last.pth", weights_only=False)["model_config"]
    assert [name for name, _ in config["streams"]][:2] == ["frames", "audio"]
    assert config["inputs"]["track"] == "emi" and config["inputs"]["audio"]["audio"] == "logmel"


def test_val_metrics_are_the_track_s_metric_of_the_written_predictions(emi_run, emi_data):
    track = get_track("emi")
    with open(emi_run / "val_predictions.csv") as handle:
        rows = list(csv.reader(handle))
    predicted = np.array([[float(x) for x in row[1:]] for row in rows[1:]])
    labels = track.read_split(str(emi_data), "val").labels()
    val = json.loads((emi_run / "val_metrics.json").read_text())
    from scipy.stats import pearsonr

    constant = [np.std(predicted[:, k]) < 1e-12 or np.std(labels[:, k]) < 1e-12 for k in range(6)]
    expected = np.mean([0.0 if constant[k] else pearsonr(predicted[:, k], labels[:, k])[0] for k in range(6)])
    assert val["pearson"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_eval_and_two_processes_write_the_same_submission(emi_run, emi_data, tmp_path):
    track = get_track("emi")
    common = ["--track", "emi", "--eval", "--ckpt", emi_run / "checkpoints" / "last.pth", "--data-dir", emi_data,
              "--num-workers", "0", "--device", "cpu", "--precision", "fp32", "--extract-batch-size", "16",
              "--eval-batch-size", "2"]
    one_and_two_processes("main_video.py", common, tmp_path / "one", tmp_path / "two")
    first = (tmp_path / "one" / track.submission_file).read_bytes()
    assert first == (tmp_path / "two" / track.submission_file).read_bytes()
    assert (tmp_path / "one" / "val_predictions.csv").read_bytes() == \
        (tmp_path / "two" / "val_predictions.csv").read_bytes()


def test_bad_input_is_one_line(emi_run, emi_data, capsys, tmp_path):
    result = run_main(capsys, "main_video.py", "--track", "emi", "--data-dir", emi_data, "--output-dir", tmp_path,
                      "--track-features", "none", *FAST, check=False)
    assert result.returncode == 2 and "no stream to learn from" in result.stderr
    wrong = run_main(capsys, "main_video.py", "--track", "ah", "--eval", "--ckpt",
                     emi_run / "checkpoints" / "last.pth", "--data-dir", emi_data, "--output-dir", tmp_path / "e",
                     "--device", "cpu", check=False)
    assert wrong.returncode == 2 and "emi track" in wrong.stderr and "Traceback" not in wrong.stderr


@pytest.fixture(scope="module")
def ah_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ah_data")
    synthetic.generate("ah", str(root), videos=15, frames=8, size=32, workers=1, progress=False)
    return root


def tiny_bert(folder):
    """A random one-layer BERT with a WordPiece tokenizer over a few words, saved as save_pretrained does."""
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "um", "well", "i", "mean", "know", "yes", "it", "was", ","]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def ah_text_run(ah_data, tmp_path_factory):
    from engine.entry import main

    root = tmp_path_factory.mktemp("ah_text")
    main("video", "", ["--track", "ah", "--data-dir", str(ah_data), "--text", str(tiny_bert(root / "bert")),
                       "--track-features", "none", "--output-dir", str(root / "run"), "--epochs", "2", *FAST])
    return root / "run"


def test_ah_from_transcripts_alone_writes_the_split_s_videos_in_order(ah_data, ah_text_run):
    track = get_track("ah")
    config = torch.load(ah_text_run / "checkpoints" / "last.pth", weights_only=False)["model_config"]
    assert [name for name, _ in config["streams"]] == ["text"] and config["streams"][0][1] == 16
    reference = track.read_split(str(ah_data), "test").ids
    written = track.read_submission(str(ah_text_run / track.submission_file), reference_ids=reference)
    assert written["ids"] == reference and written["p1"] is not None
    assert json.loads((ah_text_run / "test_metrics.json").read_text())["f1_macro"] >= 0.0


def test_ah_decides_at_the_threshold_chosen_on_validation_and_eval_keeps_it(ah_data, ah_text_run, tmp_path,
                                                                             capsys):
    from sklearn.metrics import f1_score

    track = get_track("ah")
    val = json.loads((ah_text_run / "val_metrics.json").read_text())
    with open(ah_text_run / "val_predictions.csv") as handle:
        p1_val = np.array([float(row[-1]) for row in list(csv.reader(handle))[1:]])
    labels = track.read_split(str(ah_data), "val").labels()[:, 0].astype(int)
    # the chosen threshold is the best of the candidates on validation (independently: sklearn at each)
    scores = {t: f1_score(labels, (p1_val >= t).astype(int), labels=[0, 1], average="macro", zero_division=0)
              for t in np.round(np.arange(0.05, 0.951, 0.01), 2)}
    assert scores[val["threshold"]] == pytest.approx(max(scores.values()), abs=1e-9)
    assert val["f1_macro"] == pytest.approx(scores[val["threshold"]], abs=2e-6)
    assert val["f1_macro_default_decision"] == pytest.approx(scores[0.5], abs=2e-6)
    # the run's best checkpoint keeps it, and the test file decides with it
    best = torch.load(ah_text_run / "checkpoints" / "best_f1_macro.pth", weights_only=True)
    assert best["decision"] == {"threshold": val["threshold"]}
    reference = track.read_split(str(ah_data), "test").ids
    written = track.read_submission(str(ah_text_run / track.submission_file), reference_ids=reference)
    assert (np.asarray(written["pred"]) == (np.asarray(written["p1"]) >= val["threshold"])).all()
    # --eval of that checkpoint writes the same file; a typed --threshold decides with its own value
    common = ["main_video.py", "--track", "ah", "--eval", "--ckpt", ah_text_run / "checkpoints" / "best_f1_macro.pth",
              "--data-dir", ah_data, "--device", "cpu", "--precision", "fp32", "--num-workers", "0"]
    run_main(capsys, *common, "--output-dir", tmp_path / "eval")
    assert (tmp_path / "eval" / track.submission_file).read_bytes() == \
        (ah_text_run / track.submission_file).read_bytes()
    run_main(capsys, *common, "--output-dir", tmp_path / "typed", "--threshold", "0.3")
    typed = track.read_submission(str(tmp_path / "typed" / track.submission_file), reference_ids=reference)
    assert (np.asarray(typed["pred"]) == (np.asarray(typed["p1"]) >= 0.3)).all()
    assert json.loads((tmp_path / "typed" / "val_metrics.json").read_text())["threshold"] == 0.3
    wrong = run_main(capsys, "main_video.py", "--track", "emi", "--data-dir", ah_data, "--audio", "logmel",
                     "--output-dir", tmp_path / "emi", "--threshold", "0.3", check=False)
    assert wrong.returncode == 2 and "makes no 0/1 decisions" in wrong.stderr


def test_ah_per_frame_writes_every_frame_of_the_example_in_its_order(ah_data, emi_backbone, tmp_path):
    from engine.entry import main

    track = get_track("ah_frame")
    main("video", "", ["--track", "ah_frame", "--data-dir", str(ah_data), "--backbone-ckpt", str(emi_backbone),
                       "--window", "4", "--output-dir", str(tmp_path / "run"), "--epochs", "1", *FAST])
    reference = [name for item in track.read_split(str(ah_data), "test").items for name in item.frame_ids]
    frames, labels = track.read_submission(str(tmp_path / "run" / track.submission_file), reference_ids=reference)
    assert frames == reference and set(labels.tolist()) <= {0, 1}
    val = json.loads((tmp_path / "run" / "val_metrics.json").read_text())
    assert 0.0 <= val["f1_macro"] <= 1.0


def test_eval_finds_the_backbone_beside_a_checkpoint_handed_on_without_its_recorded_path(emi_run, emi_data,
                                                                                        emi_backbone, tmp_path,
                                                                                        capsys):
    import shutil

    track = get_track("emi")
    content = torch.load(emi_run / "checkpoints" / "last.pth", weights_only=True)
    recorded = content["model_config"]["inputs"]["backbone"]["backbone"]
    assert recorded == str(emi_backbone)
    moved = tmp_path / "moved"
    moved.mkdir()
    # as received elsewhere: the recorded folder does not exist there
    content["model_config"]["inputs"]["backbone"]["backbone"] = str(tmp_path / "gone" / emi_backbone.name)
    torch.save(content, moved / "video.pth")
    common = ["main_video.py", "--track", "emi", "--eval", "--data-dir", emi_data, "--device", "cpu", "--precision",
              "fp32", "--num-workers", "0", "--extract-batch-size", "16"]
    missing = run_main(capsys, *common, "--ckpt", moved / "video.pth", "--output-dir", tmp_path / "a", check=False)
    assert missing.returncode == 2 and "neither there nor beside it" in missing.stderr
    assert "Traceback" not in missing.stderr
    shutil.copy(emi_backbone, moved / emi_backbone.name)
    run_main(capsys, *common, "--ckpt", moved / "video.pth", "--output-dir", tmp_path / "b")
    run_main(capsys, *common, "--ckpt", emi_run / "checkpoints" / "last.pth", "--output-dir", tmp_path / "c")
    assert (tmp_path / "b" / track.submission_file).read_bytes() == \
        (tmp_path / "c" / track.submission_file).read_bytes()
