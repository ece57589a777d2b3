"""The temporal stage: windows, feature extraction and its cache, the sequence models, and main_temporal.py end to end
(in-process where possible; the one- against two-process comparison in subprocesses)."""

import json

import numpy as np
import pytest
import torch
from conftest import one_and_two_processes

from datasets import mtl
from datasets.temporal import TrainWindows, WindowAugment, WindowSet, video_runs, window_starts
from datasets.transforms import sample_rng
from engine.entry import main
from engine.features import Backbone
from models import build_model
from models.temporal import TemporalModel
from utils.checkpoint import checkpoint_content
from utils.losses import masked_cross_entropy

FAST = ["--window", "8", "--stride", "4", "--width", "16", "--layers", "1", "--heads", "2", "--batch-size", "4",
        "--warmup-epochs", "0", "--num-workers", "0", "--precision", "fp32", "--device", "cpu", "--log-interval", "2",
        "--extract-batch-size", "8"]


def images_of(lengths, gap_every=3):
    """Relative frame paths of videos of the given lengths, frame numbers with a hole every ``gap_every`` frames."""
    images = []
    for v, length in enumerate(lengths):
        number = 0
        for i in range(length):
            number += 2 if i and i % gap_every == 0 else 1
            images.append(f"video{v}/{number:05d}.jpg")
    return images


def test_eval_windows_cover_every_frame_and_assembly_is_the_average_of_its_windows():
    lengths = [3, 8, 13, 21]  # one video shorter than the window, one exactly a window
    images = images_of(lengths)
    order = np.random.default_rng(0).permutation(len(images))  # list order need not be video and frame order
    images = [images[i] for i in order]
    windows = WindowSet(np.zeros((len(images), 4), np.float32), images, window=8, stride=3)
    table = windows.table
    rows = table[table >= 0]
    assert sorted(set(rows.tolist())) == list(range(len(images)))  # every frame in some window
    runs, gaps = video_runs(images)
    videos, frames = mtl.video_and_frame(images)
    for run in runs:  # a video's rows in frame order, gaps as frame-number differences
        assert len(set(videos[run])) == 1 and (np.diff(frames[run]) > 0).all()
        assert gaps[run[0]] == 1 and (gaps[run[1:]] == np.diff(frames[run])).all()
    assert (table[:, 3:] == -1).any(axis=1).sum() == 1  # the 3-frame video's window, padded
    # the averaged outputs against a direct computation, frame by frame
    outputs = np.random.default_rng(1).normal(size=(len(table), 8 * 5)).astype(np.float32)
    frames_out, predicted = windows.assemble(outputs, np.ones(len(table), bool))
    assert predicted.all()
    per_window = outputs.reshape(len(table), 8, 5)
    for frame in range(len(images)):
        holders = [(w, p) for w in range(len(table)) for p in range(8) if table[w, p] == frame]
        expected = np.mean([per_window[w, p] for w, p in holders], axis=0)
        np.testing.assert_allclose(frames_out[frame], expected, rtol=1e-6, atol=1e-6)
    assert window_starts(21, 8, 3)[-1] == 13 and window_starts(3, 8, 3) == [0]


def test_video_norm_centres_the_chosen_columns_of_each_video():
    images = images_of([5, 9])
    features = np.random.default_rng(0).normal(3.0, 1.0, size=(len(images), 6)).astype(np.float32)
    available = np.ones(len(images), bool)
    available[2] = False  # a frame without a feature takes no part in its video's mean
    windows = WindowSet(features, images, window=16, stride=8, available=available, centre=(0, 4))
    for index, run in enumerate(windows.runs):
        (feat, _, valid), _ = windows[index]
        rows = windows.table[index]
        kept = run[available[run]]
        expected = features[rows[valid.numpy()]].copy()
        expected[:, :4] -= features[kept, :4].mean(axis=0)
        np.testing.assert_allclose(feat[valid].numpy(), expected, rtol=1e-5, atol=1e-5)
        assert (feat[~valid] == 0).all()


def test_training_offsets_are_drawn_per_window_and_epoch_from_the_seed():
    images = images_of([30, 12])
    features = np.arange(len(images), dtype=np.float32)[:, None].repeat(2, 1)
    targets = np.tile(np.arange(len(images), dtype=np.float32)[:, None], (1, 15))
    windows = TrainWindows(features, images, targets, window=8, stride=4)
    augment = WindowAugment(windows)
    draws = [[augment.params(sample_rng(5, epoch, i)) for i in range(len(windows))] for epoch in (0, 0, 1)]
    assert draws[0] == draws[1] != draws[2] and all(0 <= d < 4 for d in draws[0])
    (feat, gaps, valid), target = windows.sample(0, 3)  # the first window shifted back by 3: padding first
    assert valid.tolist() == [False] * 3 + [True] * 5
    assert feat[3:, 0].tolist() == windows.runs[0][:5].tolist()
    assert (target[:3] == torch.tensor([-5.0, -5.0, -1.0] + [-1.0] * 12)).all()  # padding carries the missing codes
    batch = augment.collate([((i, draws[0][i]), i) for i in range(3)])
    assert batch[0][0].shape == (3, 8, 2) and batch[1].shape == (3, 8, 15) and batch[2] == []


@pytest.mark.parametrize("kind", ["transformer", "tcn"])
def test_a_temporal_model_learns_a_rule_of_the_previous_frame_that_a_frame_model_cannot(kind):
    """The class of frame t is the sign of frame t-1's feature, independent of frame t's own."""
    generator = torch.Generator().manual_seed(0)

    def batch(size=32, length=12):
        sign = torch.randint(0, 2, (size, length, 1), generator=generator).float() * 2 - 1
        x = sign * torch.tensor([1.0, -1.0, 1.0, -1.0]) + 0.3 * torch.randn(size, length, 4, generator=generator)
        label = torch.cat([torch.full((size, 1), -1.0), (sign[:, :-1, 0] > 0).float()], dim=1)  # none for frame 0
        return x, torch.ones(size, length), torch.ones(size, length, dtype=torch.bool), label

    def accuracy(model, steps):
        torch.manual_seed(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(steps):
            x, gaps, valid, label = batch()
            logits = model(x, gaps, valid)[..., 2:4]
            loss = masked_cross_entropy(logits.reshape(-1, 2), label.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        x, gaps, valid, label = batch(256)
        with torch.no_grad():
            predicted = model(x, gaps, valid)[..., 2:4].argmax(-1).float()
        known = label >= 0
        return (predicted[known] == label[known]).float().mean().item()

    settings = dict(in_dim=4, kind=kind, width=16, layers=2, heads=2, dropout=0.0, window=12, kernel=3)
    temporal = accuracy(TemporalModel(**settings), 120)
    frame_level = accuracy(TemporalModel(**dict(settings, kind="tcn", kernel=1)), 120)  # sees frame t only
    assert temporal > 0.95 and frame_level < 0.65, (temporal, frame_level)


def make_backbone(path, seed=0, args=None):
    torch.manual_seed(seed)
    model = build_model(dict(name="emma", vit_size="nano", img_size=32, patch_size=8, patch_embed="hybrid",
                             global_pool=True, dan="none"))
    torch.save(checkpoint_content(model.state_dict(), model.config, args or {}, 1, 0), path)
    return path


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return make_backbone(tmp_path_factory.mktemp("backbone") / "emma.pth")


@pytest.fixture(scope="module")
def temporal_run(mtl_data, backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("temporal_run")
    main("temporal", "", ["--data-dir", str(mtl_data), "--backbone-ckpt", str(backbone), "--output-dir", str(out),
                          "--epochs", "2", "--tune-au-thresholds", *FAST])
    return out


def test_training_writes_the_mtl_files_and_the_frame_level_scores(temporal_run, mtl_data):
    listed = mtl.read_test_list(str(mtl_data / mtl.TEST_LIST_FILE))
    rows = (temporal_run / "test_predictions.txt").read_text().splitlines()
    assert rows[0].startswith("image,valence,arousal") and [r.split(",")[0] for r in rows[1:]] == list(listed)
    test = json.loads((temporal_run / "test_metrics.json").read_text())
    assert {"p_mtl", "frame_p_mtl", "frame_p_mtl_smoothed"} <= set(test)
    index = json.loads(next((temporal_run / "features").glob("*/train.json")).read_text())
    assert index["parts"] == ["vit", "heads"] and index["columns"]["heads"][1] - index["columns"]["heads"][0] == 22
    config = torch.load(temporal_run / "checkpoints" / "best_mtl.pth", weights_only=True)["model_config"]
    assert config["features"]["parts"] == ["vit", "heads"] and config["window"] == 8


def test_frame_level_heads_are_the_backbones_own_outputs(temporal_run, mtl_data, backbone):
    """The ``heads`` features of the test frames are what evaluating the backbone itself gives."""
    folder = next((temporal_run / "features").glob("*/"))
    index = json.loads((folder / "test.json").read_text())
    first, end = index["columns"]["heads"]
    heads = np.load(folder / "test.npy")[:, first:end]
    from datasets.images import ImageListDataset, collate_uint8
    from datasets.transforms import BatchTransform

    model = build_model(torch.load(backbone, weights_only=True)["model_config"])
    model.load_state_dict(torch.load(backbone, weights_only=True)["model"])
    images = mtl.read_test_list(str(mtl_data / mtl.TEST_LIST_FILE))
    data = ImageListDataset(str(mtl_data / mtl.IMAGE_DIR), images)
    batch = collate_uint8([data[i] for i in range(len(data))])[0]
    with torch.no_grad():
        expected = model.eval()(BatchTransform(32)(batch)).numpy()
    np.testing.assert_allclose(heads, expected, rtol=1e-4, atol=1e-5)


def test_eval_reuses_the_features_and_writes_what_training_wrote(temporal_run, mtl_data, tmp_path, capsys):
    features = next((temporal_run / "features").glob("*/test.npy"))
    before = features.stat().st_mtime_ns
    main("temporal", "", ["--eval", "--ckpt", str(temporal_run / "checkpoints" / "best_mtl.pth"), "--data-dir",
                          str(mtl_data), "--output-dir", str(tmp_path), "--feature-dir",
                          str(temporal_run / "features"), "--num-workers", "0", "--device", "cpu",
                          "--precision", "fp32"])
    assert "reusing" in capsys.readouterr().out and features.stat().st_mtime_ns == before
    # training tuned AU thresholds on validation and stored them in its best checkpoint: evaluation applies them
    assert (tmp_path / "test_predictions.txt").read_text() == (temporal_run / "test_predictions.txt").read_text()


def test_the_feature_key_changes_with_the_checkpoint(backbone, tmp_path):
    same = Backbone(str(backbone), "auto", "fp32")
    assert same.key == Backbone(str(backbone), "auto", "fp32").key
    assert same.key != Backbone(str(backbone), "vit", "fp32").key != Backbone(str(backbone), "vit", "bfloat16").key
    other = make_backbone(tmp_path / "other.pth", seed=1)
    assert Backbone(str(other), "auto", "fp32").key != same.key


def test_a_temporal_model_refuses_features_of_another_backbone(temporal_run, mtl_data, tmp_path, capsys):
    other = make_backbone(tmp_path / "other.pth", seed=1)
    with pytest.raises(SystemExit) as exit_info:
        main("temporal", "", ["--eval", "--ckpt", str(temporal_run / "checkpoints" / "best_mtl.pth"), "--data-dir",
                              str(mtl_data), "--backbone-ckpt", str(other), "--output-dir", str(tmp_path / "eval"),
                              "--num-workers", "0", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "was trained on the features of" in capsys.readouterr().err


def test_a_feature_file_cut_short_is_an_error_naming_it(temporal_run, mtl_data, tmp_path, capsys):
    import shutil

    features = tmp_path / "features"
    shutil.copytree(temporal_run / "features", features)
    damaged = next(features.glob("*/val.npy"))
    damaged.write_bytes(damaged.read_bytes()[:-100])
    with pytest.raises(SystemExit):
        main("temporal", "", ["--eval", "--ckpt", str(temporal_run / "checkpoints" / "best_mtl.pth"), "--data-dir",
                              str(mtl_data), "--feature-dir", str(features), "--output-dir", str(tmp_path / "eval"),
                              "--num-workers", "0", "--device", "cpu", "--precision", "fp32"])
    err = capsys.readouterr().err
    assert str(damaged) in err and "cut short" in err


def test_a_test_frame_without_an_image_is_an_error_or_filled_from_its_video(temporal_run, mtl_data, tmp_path,
                                                                            capsys):
    listed = mtl.read_test_list(str(mtl_data / mtl.TEST_LIST_FILE))
    test_list = tmp_path / "test_list.txt"
    absent = listed[3].rsplit("/", 1)[0] + "/09999.jpg"
    test_list.write_text((mtl_data / mtl.TEST_LIST_FILE).read_text() + absent + "\n")
    common = ["--eval", "--ckpt", str(temporal_run / "checkpoints" / "best_mtl.pth"), "--data-dir", str(mtl_data),
              "--test-list", str(test_list), "--feature-dir", str(tmp_path / "features"), "--num-workers", "0",
              "--device", "cpu", "--precision", "fp32", "--output-dir", str(tmp_path / "eval")]
    with pytest.raises(SystemExit):
        main("temporal", "", common)
    assert absent in capsys.readouterr().err
    main("temporal", "", common + ["--allow-missing"])
    rows = (tmp_path / "eval" / "test_predictions.txt").read_text().splitlines()
    assert rows[-1].startswith(absent + ",") and len(rows) == len(listed) + 2


def test_a_crash_then_resume_continues_exactly(mtl_data, backbone, tmp_path, monkeypatch):
    """Random window offsets come from (seed, epoch, window): the resumed epoch cuts the windows the uninterrupted
    one did."""
    from engine import runner

    common = ["--data-dir", str(mtl_data), "--backbone-ckpt", str(backbone), "--feature-dir",
              str(tmp_path / "features"), "--epochs", "3", *FAST]
    main("temporal", "", common + ["--output-dir", str(tmp_path / "straight")])

    class Crash(Exception):
        pass

    save = runner.CheckpointSaver.save

    def crash_after_the_first_epoch(self, name, *args, **kwargs):
        save(self, name, *args, **kwargs)
        if name == "last.pth" and self.state.epoch == 1:
            raise Crash

    monkeypatch.setattr(runner.CheckpointSaver, "save", crash_after_the_first_epoch)
    with pytest.raises(Crash):
        main("temporal", "", common + ["--output-dir", str(tmp_path / "resumed")])
    monkeypatch.undo()
    main("temporal", "", common + ["--output-dir", str(tmp_path / "resumed")])
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.pth", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pth", weights_only=True)["model"]
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_one_and_two_processes_write_identical_features_and_predictions(temporal_run, mtl_data, tmp_path):
    common = ["--eval", "--ckpt", temporal_run / "checkpoints" / "best_mtl.pth", "--data-dir", mtl_data,
              "--num-workers", "0", "--device", "cpu", "--precision", "fp32", "--extract-batch-size", "8",
              "--eval-batch-size", "1"]
    one_and_two_processes("main_temporal.py", common, tmp_path / "one", tmp_path / "two")
    for name in ("test_predictions.txt", "val_predictions.txt"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    for split in ("train", "val", "test"):  # --eval extracts val and test only; train exists in neither
        one = list((tmp_path / "one" / "features").glob(f"*/{split}.npy"))
        two = list((tmp_path / "two" / "features").glob(f"*/{split}.npy"))
        assert len(one) == len(two) == (split != "train")
        if one:
            assert one[0].read_bytes() == two[0].read_bytes()


def test_image_model_flags_are_refused(capsys):
    from engine.cli import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args("temporal", "", ["--demo", "--vit", "small"])
    assert exit_info.value.code == 2 and "--vit" in capsys.readouterr().err


def test_gaps_reach_the_model_and_padding_stays_out_of_real_frames():
    torch.manual_seed(0)
    for kind in ("transformer", "tcn"):
        model = TemporalModel(in_dim=3, kind=kind, width=8, layers=2, heads=2, dropout=0.0, window=6).eval()
        x = torch.randn(1, 6, 3)
        valid = torch.tensor([[True] * 4 + [False] * 2])
        gaps = torch.ones(1, 6)
        out = model(x, gaps, valid)
        noisy = x.clone()
        noisy[:, 4:] = torch.randn(1, 2, 3) * 100  # whatever padding holds
        assert torch.allclose(model(noisy, gaps, valid)[:, :4], out[:, :4], atol=1e-5)
        far = gaps.clone()
        far[0, 2] = 7
        assert not torch.allclose(model(x, far, valid)[:, 2], out[:, 2])


def test_fold_backbones_give_training_frames_out_of_fold_outputs_and_the_rest_their_mean(mtl_data, tmp_path,
                                                                                         capsys):
    from engine.features import Backbone

    members = [make_backbone(tmp_path / f"fold{k}.pth", seed=k, args={"folds": 2, "fold": k}) for k in (1, 0)]
    out = tmp_path / "run"
    main("temporal", "", ["--data-dir", str(mtl_data), "--backbone-ckpt", *map(str, members), "--folds", "2",
                          "--output-dir", str(out), "--epochs", "1", *FAST])
    config = torch.load(out / "checkpoints" / "last.pth", weights_only=True)["model_config"]
    assert config["features"]["folds"] == 2 and config["features"]["parts"] == ["heads"]
    assert config["features"]["backbone"] == [str(members[1]), str(members[0])]  # in fold order
    own = {k: Backbone(str(members[1 - k]), "heads", "fp32").key[:16] for k in (0, 1)}
    cached = {(k, split): np.load(out / "features" / own[k] / f"{split}.npy") for k in (0, 1) for split in
              ("train", "val")}
    train_images = mtl.read_annotations(str(mtl_data / mtl.TRAIN_FILE)).images
    fold = mtl.video_folds(train_images, 2)
    # what the temporal model was trained on, rebuilt by the task from the same files
    from engine.cli import parse_args
    from engine.tasks.temporal import TemporalTask

    task = TemporalTask(parse_args("temporal", "", ["--data-dir", str(mtl_data), "--backbone-ckpt",
                                                    *map(str, members), "--folds", "2", "--output-dir", str(out),
                                                    *FAST]))
    train, val = task.train_features.array, task.val_features.array
    for k in (0, 1):
        np.testing.assert_array_equal(train[fold == k], cached[(k, "train")][fold == k])
    np.testing.assert_allclose(val, (cached[(0, "val")] + cached[(1, "val")]) / 2, rtol=1e-6)
    capsys.readouterr()
    plain = make_backbone(tmp_path / "plain.pth")
    with pytest.raises(SystemExit):
        main("temporal", "", ["--data-dir", str(mtl_data), "--backbone-ckpt", str(members[0]), str(plain),
                              "--folds", "2", "--output-dir", str(tmp_path / "bad"), *FAST])
    assert "was not trained with --folds 2" in capsys.readouterr().err


def test_main_mtl_fold_leaves_the_fold_out_of_training(mtl_data):
    from engine.cli import parse_args
    from engine.tasks.mtl import MTLTask

    images = mtl.read_annotations(str(mtl_data / mtl.TRAIN_FILE)).images
    fold = mtl.video_folds(images, 2)
    assert set(fold) == {0, 1}  # the fixture's training videos fall in both folds
    for k in (0, 1):
        task = MTLTask(parse_args("mtl", "", ["--data-dir", str(mtl_data), "--folds", "2", "--fold", str(k)]))
        assert list(task.train_annotations.images) == [image for image, f in zip(images, fold) if f != k]
