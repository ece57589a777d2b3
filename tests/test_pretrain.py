"""MAE pretraining (main_pretrain.py): the model against direct computations, the checkpoint format against
facebookresearch/mae's layout and the fine-tuning loaders, the runner's guarantees (resume, DDP), figures, bad input."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, run_entry, run_torchrun

from datasets import folders, synthetic
from engine.entry import main
from models import build_model
from models.mae import MAE, normalise_patches, patchify, sincos_position_embedding, unpatchify
from models.vit import build_vit, load_mae_weights

# A configuration that pretrains in seconds on one CPU core.
TINY = ["--vit", "nano", "--img-size", "32", "--patch-size", "8", "--decoder-dim", "32", "--decoder-depth", "1",
        "--decoder-heads", "2", "--batch-size", "8", "--warmup-epochs", "0", "--num-workers", "0", "--precision",
        "fp32", "--device", "cpu", "--log-interval", "2", "--blr", "1e-3"]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    synthetic.generate_faces(str(root), count=40, size=32, seed=5, workers=1, progress=False)
    return root / "faces"


@pytest.fixture(scope="module")
def pretrain_run(faces, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain_run")
    main("pretrain", "", ["--data-dir", str(faces), "--output-dir", str(out), "--epochs", "2", "--val-fraction",
                          "0.2", *TINY])
    return out


def run_main(*args):
    main("pretrain", "", [str(arg) for arg in args])


def tiny_mae(**kwargs):
    torch.manual_seed(0)
    return MAE("nano", 32, 8, decoder_dim=32, decoder_depth=1, decoder_heads=2, **kwargs)


# ---- the model


def test_masking_keeps_int_l_times_one_minus_r_patches_with_a_mask_per_sample():
    model = tiny_mae()
    images = torch.randn(6, 3, 32, 32)
    for ratio in (0.75, 0.5, 0.9):
        _, _, mask = model(images, mask_ratio=ratio)
        kept = int(16 * (1 - ratio))
        assert torch.equal((mask == 0).sum(1), torch.full((6,), kept))
        assert len({tuple(row.tolist()) for row in mask}) > 1  # samples are masked differently
    tokens, order = model.encode(images, 0.75)
    assert tokens.shape == (6, 1 + 4, 128)
    assert torch.equal(order.sort(1).values, torch.arange(16).expand(6, -1))  # a permutation per sample


def test_loss_counts_the_dropped_patches_only():
    model = tiny_mae(norm_pix_loss=False)
    images = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, 16)
    target = patchify(images, 8)
    mask = model.mask_of(noise.argsort(1), 4)
    visible_error = torch.randn_like(target) * (1 - mask)[..., None] * 100
    model.decode = lambda tokens, order: target + visible_error  # exact on dropped patches, far off on visible ones
    loss, _, _ = model(images, mask_ratio=0.75, noise=noise)
    assert torch.allclose(loss, torch.zeros(3), atol=1e-6)
    dropped_error = torch.full_like(target, 0.5) * mask[..., None]
    model.decode = lambda tokens, order: target + dropped_error
    loss, _, _ = model(images, mask_ratio=0.75, noise=noise)
    assert torch.allclose(loss, torch.full((3,), 0.25), atol=1e-6)


def test_norm_pix_loss_matches_a_direct_computation():
    model = tiny_mae(norm_pix_loss=True)
    images = torch.rand(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    loss, predicted, mask = model(images, mask_ratio=0.75, noise=noise)
    pixels = images.numpy()
    expected = []
    for b in range(2):
        errors, weights = [], []
        for row in range(4):
            for col in range(4):
                # a patch's pixels, rows then columns then channels (MAE's order)
                patch = pixels[b, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8].transpose(1, 2, 0).reshape(-1)
                target = (patch - patch.mean()) / np.sqrt(patch.var(ddof=1) + 1e-6)
                p = row * 4 + col
                errors.append(((predicted[b, p].detach().numpy() - target) ** 2).mean())
                weights.append(mask[b, p].item())
        expected.append(np.dot(errors, weights) / np.sum(weights))
    assert np.allclose(loss.detach().numpy(), expected, rtol=1e-5)
    assert torch.allclose(unpatchify(patchify(images, 8), 8), images)
    assert torch.allclose(normalise_patches(torch.ones(1, 2, 5)), torch.zeros(1, 2, 5))


def test_sincos_embeddings_match_an_independent_formula():
    dim, grid = 16, 3
    table = sincos_position_embedding(dim, grid).numpy()
    assert table.shape == (1 + grid * grid, dim) and not table[0].any()
    for row in range(grid):
        for col in range(grid):
            for channel in range(dim):
                half, k = divmod(channel, dim // 2)  # first half: the column, second half: the row
                position = col if half == 0 else row
                j = k % (dim // 4)
                angle = position / 10000 ** (j / (dim // 4))
                value = np.sin(angle) if k < dim // 4 else np.cos(angle)
                assert abs(table[1 + row * grid + col, channel] - value) < 1e-6
    model = tiny_mae()
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    assert torch.equal(model.pos_embed[0], sincos_position_embedding(128, 4))


# ---- data


def test_folders_are_found_at_any_depth_joined_restricted_and_split_by_name(tmp_path, faces):
    nested = tmp_path / "nested" / "a" / "b"
    nested.mkdir(parents=True)
    for name in ("000001.jpg", "000002.png"):
        (nested / name).write_bytes((faces / "000001.jpg").read_bytes())
    (nested / "notes.txt").write_text("not an image")
    (tmp_path / "nested" / ".hidden").mkdir()
    (tmp_path / "nested" / ".hidden" / "x.jpg").write_bytes(b"")
    images = folders.find_images([str(faces), str(tmp_path / "nested")])
    assert len(images) == 42 and images.other_files == 1
    assert list(images.names[-2:]) == ["a/b/000001.jpg", "a/b/000002.png"]
    listing = tmp_path / "list.txt"
    listing.write_text("image,label\n000003.jpg 0\na/b/000002.png,1\nmissing.jpg\n")
    kept = folders.restrict(images, str(listing), log=lambda line: None)
    assert sorted(kept.names) == ["000003.jpg", "a/b/000002.png"]
    held = folders.held_out(images, 0.25)
    assert 0 < held.sum() < len(images)
    # the split of an image depends on its name only: adding images leaves the others where they were
    fewer = folders.held_out(images.subset(range(40)), 0.25)
    assert np.array_equal(fewer, held[:40])


def test_random_resized_crop_draws_boxes_within_the_image_and_the_collate_carries_mask_seeds(faces):
    import random

    augment = folders.PretrainAugment(24)
    for seed in range(50):
        params = augment.params(random.Random(seed))
        top, left, height, width = augment.box(30, 40, params)
        assert 0 <= top and top + height <= 30 and 0 <= left and left + width <= 40
        assert 0.2 * 1200 * 0.6 <= height * width <= 1200
    dataset = folders.FaceImages(folders.find_images([str(faces)]), min_side=8)
    samples = [((dataset[i][0], augment.params(random.Random(i))), i) for i in range(4)]
    (images, seeds), indices, dropped = augment.collate(samples)
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.uint8
    assert seeds.shape == (4, 1) and len(set(seeds[:, 0].tolist())) == 4 and dropped == []


# ---- the entry point


def test_pretraining_writes_mae_checkpoints_metrics_and_figures(pretrain_run):
    for name in ("args.json", "log.jsonl", "val_metrics.json", "loss_curve.png", "reconstructions_epoch000.png",
                 "reconstructions_epoch001.png", "checkpoints/last.pth", "checkpoints/best_loss.pth"):
        assert (pretrain_run / name).is_file(), name
    records = [json.loads(line) for line in (pretrain_run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1] and "loss" in records[0]["val"]
    metrics = json.loads((pretrain_run / "val_metrics.json").read_text())
    assert metrics["images"] > 0 and metrics["masks"] == metrics["images"] and metrics["mask_ratio"] == 0.75
    assert 0 < metrics["loss"] < 10
    checkpoint = load(pretrain_run / "checkpoints" / "last.pth")
    assert {"model", "optimizer", "epoch", "scaler", "args"} <= set(checkpoint)  # facebookresearch/mae's entries
    assert len(checkpoint["scaler"]) > 0  # loadable into an enabled GradScaler, as MAE's resume does
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight", "cls_token", "pos_embed",
                "mask_token", "decoder_embed.weight", "decoder_blocks.0.mlp.fc1.weight", "decoder_norm.weight",
                "decoder_pred.weight", "decoder_pos_embed"):
        assert key in checkpoint["model"], key
    model = build_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"], strict=True)
    # the figures are images with content, not blank canvases
    import matplotlib.image

    for name in ("reconstructions_epoch001.png", "loss_curve.png"):
        pixels = matplotlib.image.imread(pretrain_run / name)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0.05, name


def test_a_pretrain_checkpoint_initialises_the_fine_tuning_vits(pretrain_run):
    checkpoint = load(pretrain_run / "checkpoints" / "last.pth")
    vit = build_vit("nano", 32, num_classes=6, patch_size=8)
    report = load_mae_weights(vit, str(pretrain_run / "checkpoints" / "last.pth"), log=lambda line: None)
    assert "mask_token" in report["ignored"] and report["pos_embed_resampled"] is None
    assert torch.equal(vit.state_dict()["blocks.1.mlp.fc2.weight"], checkpoint["model"]["blocks.1.mlp.fc2.weight"])
    assert torch.equal(vit.state_dict()["pos_embed"], checkpoint["model"]["pos_embed"])


def test_mtl_and_lsd_fine_tune_from_a_pretrain_checkpoint(pretrain_run, mtl_data, lsd_data, tmp_path, capsys):
    from conftest import TINY as FINE_TUNE

    path = pretrain_run / "checkpoints" / "last.pth"
    for track, data in (("mtl", mtl_data), ("lsd", lsd_data)):
        main(track, "", ["--data-dir", str(data), "--output-dir", str(tmp_path / track), "--epochs", "1",
                         "--max-steps", "2", "--mae-ckpt", str(path), *FINE_TUNE])
        assert f"MAE weights from {path}: loaded" in capsys.readouterr().out


def test_eval_repeats_exactly_for_any_batch_size_and_counts_images_and_masks(pretrain_run, faces, tmp_path):
    checkpoint = pretrain_run / "checkpoints" / "last.pth"
    values = []
    # fp32: on a CPU with AMX, oneDNN's bf16 kernels for a batch of 5 and of 16 may round an image's values apart
    for batch, out in (("5", "a"), ("16", "b")):
        main("pretrain", "", ["--eval", "--ckpt", str(checkpoint), "--data-dir", str(faces), "--output-dir",
                              str(tmp_path / out), "--eval-batch-size", batch, "--eval-masks", "2", "--num-workers",
                              "0", "--device", "cpu", "--precision", "fp32"])
        values.append(json.loads((tmp_path / out / "val_metrics.json").read_text()))
    assert values[0] == values[1]
    assert values[0]["images"] == 40 and values[0]["masks"] == 80 and values[0]["masks_per_image"] == 2
    assert (tmp_path / "a" / "reconstructions.png").is_file()


def test_two_gloo_processes_give_the_loss_of_one_at_the_same_effective_batch(faces, tmp_path):
    flags = ["--data-dir", faces, "--epochs", "1", "--val-fraction", "0.2", *TINY]
    one = [*flags, "--output-dir", tmp_path / "one"]
    one[one.index("--batch-size") + 1] = "8"
    run_main(*one)
    two = [*flags, "--output-dir", tmp_path / "two"]
    two[two.index("--batch-size") + 1] = "4"
    run_torchrun(2, "main_pretrain.py", *two)
    losses = [json.loads((tmp_path / name / "val_metrics.json").read_text())["loss"] for name in ("one", "two")]
    assert abs(losses[0] - losses[1]) < 1e-4 * losses[0], losses
    a, b = (load(tmp_path / name / "checkpoints" / "last.pth")["model"] for name in ("one", "two"))
    assert max((a[key] - b[key]).abs().max().item() for key in a) < 1e-4


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(faces, tmp_path):
    flags = ["--data-dir", str(faces), "--epochs", "2", "--val-fraction", "0.2", *TINY]
    flags[flags.index("--batch-size") + 1] = "4"
    run_entry("main_pretrain.py", *flags, "--output-dir", tmp_path / "whole")  # one thread, as the runs below
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "main_pretrain.py", *flags, "--output-dir", str(tmp_path / "cut")],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "cut" / "checkpoints" / "last.pth"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        try:
            if last.is_file() and load(last)["epoch"] >= 0:
                break
        except Exception:  # being replaced right now
            pass
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_entry("main_pretrain.py", *flags, "--output-dir", tmp_path / "cut")
    whole, cut = load(tmp_path / "whole" / "checkpoints" / "last.pth"), load(last)
    assert whole["step"] == cut["step"] and whole["epoch"] == cut["epoch"] == 1
    for key, value in whole["model"].items():
        assert torch.equal(value, cut["model"][key]), key


def official_layout_checkpoint(path, epoch=3, encoder_only=False):
    """A file as facebookresearch/mae's main_pretrain saves it (random weights): model, optimizer in its two groups,
    epoch, an enabled GradScaler's state, and its flags as an argparse.Namespace."""
    model = tiny_mae()
    state = model.state_dict()
    if encoder_only:
        torch.save({"model": {k: v for k, v in state.items() if not k.startswith(("decoder_", "mask_token"))}}, path)
        return state
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if p.ndim <= 1 or n.endswith(".bias")], "weight_decay": 0.0},
              {"params": [p for n, p in named if not (p.ndim <= 1 or n.endswith(".bias"))], "weight_decay": 0.05}]
    optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95))
    model(torch.randn(2, 3, 32, 32))[0].mean().backward()
    optimizer.step()
    scaler = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 7}
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "scaler": scaler,
                "args": argparse.Namespace(model="mae_vit_nano", mask_ratio=0.75)}, path)
    return model.state_dict()


def test_an_official_mae_training_checkpoint_continues_training(faces, tmp_path, capsys):
    path = tmp_path / "checkpoint-3.pth"
    official_layout_checkpoint(path, epoch=3)
    out = tmp_path / "run"
    run_main("--data-dir", faces, "--output-dir", out, "--epochs", "5", "--resume", path, "--val-fraction", "0.2",
             *TINY)
    assert "facebookresearch/mae training checkpoint (epoch 3)" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [4]  # epochs 0-3 were done
    assert load(out / "checkpoints" / "last.pth")["epoch"] == 4


def test_init_loads_weights_an_encoder_only_file_leaves_the_decoder_new(faces, tmp_path, capsys):
    path = tmp_path / "encoder.pth"
    state = official_layout_checkpoint(path, encoder_only=True)
    out = tmp_path / "run"
    run_main("--data-dir", faces, "--output-dir", out, "--epochs", "1", "--init", path, "--max-steps", "1", "--blr",
             "0", "--val-fraction", "0.2", *TINY[:-2])
    printed = capsys.readouterr().out
    assert "new (not in the file)" in printed and "decoder" in printed
    saved = load(out / "checkpoints" / "last.pth")["model"]
    assert torch.equal(saved["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])  # lr 0: unchanged


# ---- bad input: one line, exit status 2


def error_of(capsys, *args):
    """The error line a failing command ends with on stderr (exit status 2), run in this process."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_main(*args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]  # after the warnings of the run, if any


def test_an_empty_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = error_of(capsys, "--data-dir", tmp_path / "empty", "--output-dir", tmp_path / "out", *TINY)
    assert "holds no image" in line


def test_a_mask_ratio_outside_0_1_is_refused(capsys):
    for ratio in ("0", "1", "1.5"):
        line = error_of(capsys, "--demo", "--mask-ratio", ratio)
        assert "--mask-ratio" in line and "(0, 1)" in line


def test_a_checkpoint_of_another_size_lists_the_keys_and_shapes(faces, tmp_path, capsys):
    path = tmp_path / "small.pth"
    official_layout_checkpoint(path, encoder_only=True)
    flags = list(TINY)
    flags[flags.index("nano")] = "tiny"
    line = error_of(capsys, "--data-dir", faces, "--output-dir", tmp_path / "out", "--init", path, *flags)
    assert "does not fit this MAE" in line and "shape mismatches" in line and "checkpoint (" in line


def test_non_images_and_images_smaller_than_a_patch_are_skipped_counted_then_stop(faces, tmp_path, capsys):
    import shutil

    import cv2

    data = tmp_path / "faces"
    shutil.copytree(faces, data)
    (data / "broken.jpg").write_bytes(b"not a jpeg at all")
    cv2.imwrite(str(data / "tiny.png"), np.zeros((4, 4, 3), np.uint8))
    run_main("--data-dir", data, "--output-dir", tmp_path / "ok", "--epochs", "1", "--val-fraction", "0",
             "--max-bad-images", "0.2", *TINY)
    printed = capsys.readouterr()
    assert "skipped" in printed.err and "no validation set" in printed.out
    for name in range(20):
        (data / f"bad{name}.jpg").write_bytes(b"garbage")
    line = error_of(capsys, "--data-dir", data, "--output-dir", tmp_path / "stop", "--epochs", "1",
                    "--val-fraction", "0", *TINY)
    assert "could not be decoded" in line and "--max-bad-images" in line
