"""--bn-adapt: the hybrid stem's BatchNorm statistics re-estimated on the validation images (AdaBN)."""

from contextlib import nullcontext

import pytest
import torch
from conftest import TINY, run_main
from torch import nn

from engine.entry import main
from utils.checkpoint import load_checkpoint as load

HYBRID = ["--patch-embed", "hybrid", "--vit-num", "2", "--mask-ratio", "0.5"]


def _images(count, size, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator) for _ in range(count)]


def test_adapt_batchnorm_gives_the_first_layer_the_mean_of_the_batches_statistics():
    from datasets.transforms import BatchTransform
    from engine.evaluate import adapt_batchnorm, hybrid_stems
    from models.vit import build_vit

    torch.manual_seed(0)
    vit = build_vit("nano", img_size=32, patch_size=8, patch_embed="hybrid")
    other = nn.BatchNorm2d(3)  # a BatchNorm outside the stem (as a frozen DAN's) keeps its statistics
    model = nn.ModuleDict({"vit": vit, "other": other}).eval()
    other.running_mean.fill_(0.25)
    images = _images(10, 40, seed=1)  # 40 px images resized to the model's 32 px, as evaluation frames are
    dataset = [(image, 0, index) for index, image in enumerate(images)]
    transform = BatchTransform(32)
    stem = hybrid_stems(model)[0]
    before = stem[1].running_mean.clone()

    seen = adapt_batchnorm(model, dataset, transform, batch_size=4, num_workers=0, device=torch.device("cpu"),
                           autocast=nullcontext)
    assert seen == 10
    # the first BatchNorm's input is conv1 of the transformed batches: its statistics are the mean over the batches
    # (4, 4, 2 images) of each batch's per-channel mean and unbiased variance
    means, variances = [], []
    with torch.no_grad():
        for start in range(0, 10, 4):
            out = stem[0](transform(torch.stack(images[start:start + 4])))
            means.append(out.mean(dim=(0, 2, 3)))
            variances.append(out.var(dim=(0, 2, 3), unbiased=True))
    torch.testing.assert_close(stem[1].running_mean, torch.stack(means).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stem[1].running_var, torch.stack(variances).mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.equal(stem[1].running_mean, before)
    assert torch.all(other.running_mean == 0.25)
    assert all(m.momentum == 0.1 for m in stem.modules() if isinstance(m, nn.BatchNorm2d))
    assert not stem.training  # back in the mode it was in

    first = [b.clone() for b in stem.buffers()]  # the same images in the same batches: the same statistics
    adapt_batchnorm(model, dataset, transform, 4, 0, torch.device("cpu"), nullcontext)
    assert all(torch.equal(a, b) for a, b in zip(first, stem.buffers()))

    # a cap on the images: that many, evenly spaced from the first to the last (here 0, 3, 6, 9, one batch)
    assert adapt_batchnorm(model, dataset, transform, 4, 0, torch.device("cpu"), nullcontext, max_images=4) == 4
    with torch.no_grad():
        out = stem[0](transform(torch.stack([images[i] for i in (0, 3, 6, 9)])))
    torch.testing.assert_close(stem[1].running_mean, out.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("count, limit", [(10, 4), (5, 5), (3, 8), (1024 * 3 + 7, 1024), (2, 1)])
def test_evenly_spaced_indices_are_distinct_sorted_and_reach_both_ends(count, limit):
    from engine.evaluate import evenly_spaced

    indices = evenly_spaced(count, limit)
    assert len(indices) == min(count, limit) and indices == sorted(set(indices))
    assert indices[0] == 0 and (indices[-1] == count - 1 or limit == 1)


def _stem_state(state):
    return {k: v for k, v in state.items() if ".patch_embed.proj." in k and ("running_" in k or "num_batches" in k)}


@pytest.fixture(scope="module")
def adapted_runs(lsd_data, tmp_path_factory):
    """A tiny hybrid masked CoTEX trained with and without --bn-adapt, same seed."""
    runs = {}
    for name, extra in (("plain", []), ("adapted", ["--bn-adapt"])):
        out = tmp_path_factory.mktemp(name)
        main("lsd", "", ["--data-dir", str(lsd_data), "--output-dir", str(out), "--epochs", "2", "--max-steps", "2",
                         *TINY, *HYBRID, *extra])
        runs[name] = out
    return runs


def test_bn_adapt_changes_only_the_stems_statistics_and_they_are_the_validation_images(adapted_runs, lsd_data):
    from datasets.transforms import BatchTransform
    from engine.cli import parse_args
    from engine.evaluate import adapt_batchnorm
    from engine.tasks import make_task
    from models import build_model

    plain = load(adapted_runs["plain"] / "checkpoints" / "last.pth")
    adapted = load(adapted_runs["adapted"] / "checkpoints" / "last.pth")
    stats = _stem_state(adapted["model"])
    assert stats and any(not torch.equal(stats[k], plain["model"][k]) for k in stats)
    for key, value in plain["model"].items():  # training itself is unchanged: every weight is identical
        if key not in stats:
            assert torch.equal(value, adapted["model"][key]), key

    # the plain run's model adapted here on the validation split gives the adapted run's statistics
    args = parse_args("lsd", "", ["--data-dir", str(lsd_data), *TINY, *HYBRID])
    task = make_task(args)
    model = build_model(plain["model_config"])
    model.load_state_dict(plain["model"])
    adapt_batchnorm(model, task.val_split(), BatchTransform(32), 16, 0, torch.device("cpu"), nullcontext,
                    task.eval_collate)
    for key, value in _stem_state(model.state_dict()).items():
        if "num_batches" not in key:
            assert torch.equal(value, stats[key]), key


def test_eval_with_bn_adapt_writes_the_training_runs_files(adapted_runs, lsd_data, tmp_path, capsys):
    run = adapted_runs["adapted"]
    result = run_main(capsys, "main_lsd.py", "--eval", "--ckpt", run / "checkpoints" / "best_f1.pth", "--bn-adapt",
                      "--data-dir", lsd_data, "--output-dir", tmp_path, *TINY)
    assert "--bn-adapt: BatchNorm statistics of the hybrid patch embedding from" in result.stdout + result.stderr
    for name in ("val_predictions.txt", "test_predictions.txt"):
        assert (tmp_path / name).read_bytes() == (run / name).read_bytes(), name


def test_bn_adapt_without_a_hybrid_stem_is_a_one_line_error(lsd_data, tmp_path, capsys):
    result = run_main(capsys, "main_lsd.py", "--data-dir", lsd_data, "--output-dir", tmp_path, "--epochs", "1",
                      *TINY, "--bn-adapt", check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--bn-adapt" in lines[0] and "--patch-embed hybrid" in lines[0]
