"""Both entry points train, resume exactly, run under torchrun, and leave every file SPEC.md lists."""

import json
import os
import shutil
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, run_entry, run_main, run_torchrun
from sklearn.metrics import f1_score

from engine.cli import parse_args
from engine.entry import main
from engine.tasks import MTLTask
from utils.optim import WarmupCosine

MTL_FILES = ["args.json", "log.jsonl", "val_metrics.json", "val_predictions.txt", "test_predictions.txt",
             "test_metrics.json", "checkpoints/last.pth", "checkpoints/best_mtl.pth", "checkpoints/best_va.pth",
             "checkpoints/best_expr.pth", "checkpoints/best_au.pth", "expr_confusion.png", "au_f1.png",
             "va_density.png"]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def mtl_run(mtl_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mtl_run")
    main("mtl", "", ["--data-dir", str(mtl_data), "--output-dir", str(out), "--epochs", "2", *TINY])
    return out


def test_mtl_trains_and_writes_every_output_file(mtl_run):
    for name in MTL_FILES:
        assert (mtl_run / name).is_file(), name
    assert any(name.startswith("events.") for name in os.listdir(mtl_run / "tb"))
    records = [json.loads(line) for line in (mtl_run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert {"lr", "train", "val", "images_per_s", "seconds"} <= set(records[0])
    metrics = json.loads((mtl_run / "val_metrics.json").read_text())
    for key in ("p_mtl", "ccc_v", "ccc_a", "f1_expr", "acc_expr", "f1_au", "f1_per_au", "f1_per_expr", "counts"):
        assert key in metrics
    checkpoint = load(mtl_run / "checkpoints" / "last.pth")
    assert checkpoint["epoch"] == 1 and checkpoint["model_config"]["name"] == "emma"  # index, as in log.jsonl
    assert {"model", "optimizer", "scaler", "step", "args", "rng", "au_thresholds"} <= set(checkpoint)


def test_lsd_trains_and_writes_every_output_file(lsd_data, tmp_path):
    main("lsd", "", ["--data-dir", str(lsd_data), "--output-dir", str(tmp_path), "--epochs", "1", "--vit-num", "2",
                     "--mask-ratio", "0.5", *TINY])
    for name in ["args.json", "log.jsonl", "val_metrics.json", "val_predictions.txt", "test_predictions.txt",
                 "test_metrics.json", "checkpoints/last.pth", "checkpoints/best_f1.pth", "lsd_confusion.png"]:
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "val_metrics.json").read_text())
    assert {"f1", "acc", "f1_per_class", "confusion"} <= set(metrics)
    rows = (tmp_path / "val_predictions.txt").read_text().splitlines()
    assert rows[0] == "image,expression" and "/" in rows[1]  # <class folder>/<file>,<int>


def test_val_metrics_match_an_independent_recomputation_from_the_files(mtl_run, mtl_data):
    metrics = json.loads((mtl_run / "val_metrics.json").read_text())
    labels = {}
    for row in (mtl_data / "validation_set_annotations.txt").read_text().splitlines()[1:]:
        fields = row.split(",")
        labels[fields[0]] = [float(x) for x in fields[1:]]
    rows = [row.split(",") for row in (mtl_run / "val_predictions.txt").read_text().splitlines()[1:]]
    pred = np.array([[float(x) for x in row[1:]] for row in rows])
    true = np.array([labels[row[0]] for row in rows])

    def ccc(x, y):
        return 2 * np.cov(x, y, bias=True)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)

    for index, key in ((0, "ccc_v"), (1, "ccc_a")):
        known = true[:, index] != -5
        assert metrics[key] == pytest.approx(ccc(pred[known, index], true[known, index]), abs=2e-5)
    known = true[:, 2] != -1
    assert metrics["f1_expr"] == pytest.approx(f1_score(true[known, 2], pred[known, 2], average="macro",
                                                        labels=list(range(8)), zero_division=0), abs=1e-9)
    per_au = [f1_score(true[true[:, 3 + i] != -1, 3 + i], pred[true[:, 3 + i] != -1, 3 + i], zero_division=0)
              for i in range(12)]
    assert metrics["f1_au"] == pytest.approx(np.mean(per_au), abs=1e-9)


def test_mtl_constant_baseline_scores_the_best_constants_as_recomputed_independently(mtl_data):
    task = MTLTask(parse_args("mtl", "", ["--data-dir", str(mtl_data)]))
    test = np.loadtxt(mtl_data / "test_set_annotations.txt", delimiter=",", skiprows=1, usecols=range(1, 16))
    train = np.loadtxt(mtl_data / "training_set_annotations.txt", delimiter=",", skiprows=1, usecols=range(1, 16))
    baseline = task.constant_baseline(test)
    assert baseline["ccc_v"] == pytest.approx(0.0, abs=1e-12) and baseline["ccc_a"] == pytest.approx(0.0, abs=1e-12)
    labelled = train[:, 2] >= 0
    mode = np.bincount(train[labelled, 2].astype(int)).argmax()
    known = test[:, 2] >= 0
    assert baseline["f1_expr"] == pytest.approx(f1_score(test[known, 2], np.full(known.sum(), mode), average="macro",
                                                         labels=list(range(8)), zero_division=0), abs=1e-9)
    # every AU predicted present: F1 = 2p / (1 + p) with p the AU's positive rate among its labelled frames
    rates = [(test[test[:, 3 + i] >= 0, 3 + i] == 1).mean() for i in range(12)]
    assert baseline["f1_au"] == pytest.approx(np.mean([2 * p / (1 + p) for p in rates]), abs=1e-9)
    assert baseline["f1_au"] > 0


def test_resume_auto_continues_with_the_right_epoch_and_step(mtl_data, tmp_path, capsys):
    common = ["--data-dir", str(mtl_data), "--output-dir", str(tmp_path), *TINY]
    main("mtl", "", common + ["--epochs", "1", "--seed", "3"])
    first = load(tmp_path / "checkpoints" / "last.pth")
    main("mtl", "", common + ["--epochs", "2"])  # an untyped --seed takes the resumed run's streams
    second = load(tmp_path / "checkpoints" / "last.pth")
    assert (first["epoch"], second["epoch"]) == (0, 1)
    assert (first["train_state"]["epoch"], second["train_state"]["epoch"]) == (1, 2)  # the next epoch to run
    assert second["step"] == 2 * first["step"] > 0
    assert second["args"]["seed"] == json.loads((tmp_path / "args.json").read_text())["seed"] == 3
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]

    # a typed --seed other than the run's would be ignored by the resume: refused, and nothing is written
    last = (tmp_path / "checkpoints" / "last.pth").read_bytes()
    result = run_main(capsys, "main_mtl.py", *common, "--epochs", "3", "--seed", "4", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--seed 4" in result.stderr and "--seed 3" in result.stderr and "--output-dir" in result.stderr
    assert (tmp_path / "checkpoints" / "last.pth").read_bytes() == last
    run_main(capsys, "main_mtl.py", *common, "--epochs", "3", "--seed", "3")
    assert load(tmp_path / "checkpoints" / "last.pth")["train_state"]["epoch"] == 3


def test_layer_decay_reaches_the_optimizer():
    args = parse_args("mtl", "", ["--demo", "--vit", "nano", "--img-size", "32", "--patch-size", "8"])
    task = MTLTask(args)
    from models import build_model

    model = build_model(task.model_config())
    optimizer = torch.optim.AdamW(task.param_groups(model), lr=1.0)
    schedule = WarmupCosine(lr=2e-3, min_lr=1e-6, warmup_epochs=1, epochs=4)
    value = schedule.apply(optimizer, 2.5)
    assert value == pytest.approx(1e-6 + (2e-3 - 1e-6) * 0.5 * (1 + np.cos(np.pi * 1.5 / 3)))
    depth = len(model.vit.blocks)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            if name.startswith("va_head"):
                expected = args.va_lr  # constant, as the reference's separate Adam
            else:
                sub = name[len("vit."):]
                layer = (0 if sub.split(".")[0] in ("cls_token", "pos_embed", "patch_embed")
                         else int(sub.split(".")[1]) + 1 if sub.startswith("blocks.") else depth + 1)
                expected = value * args.layer_decay ** (depth + 1 - layer)  # the MAE fine-tuning rule
            assert group["lr"] == pytest.approx(expected, rel=1e-9), name
            assert group["weight_decay"] == (0.0 if p.ndim == 1 or "token" in name or "pos_embed" in name
                                             or name.startswith("va_head") else args.weight_decay), name


def test_old_underscore_flags_parse():
    args = parse_args("mtl", "", ["--data_dir", ROOT, "--batch_size", "4", "--epoch_num", "3", "--blr", "1e-3",
                                  "--min_lr", "1e-5", "--accum_iter", "2", "--drop_path_rate", "0.2",
                                  "--layer_decay", "0.7", "--weight_decay", "0.01", "--clip_grad", "1",
                                  "--warmup_epochs", "1", "--num_workers", "0", "--mae_pretrained_model_paths", "a",
                                  "--exp_pretrained_model_paths", "b"])
    assert (args.batch_size, args.epochs, args.min_lr, args.accum_iter, args.drop_path, args.layer_decay,
            args.weight_decay, args.clip_grad, args.warmup_epochs, args.mae_ckpt, args.dan_ckpt) == (
        4, 3, 1e-5, 2, 0.2, 0.7, 0.01, 1.0, 1.0, ["a"], "b")
    args = parse_args("lsd", "", ["--data_path", ROOT, "--mask_rate", "0.5", "--vit_num", "4", "--lambda_JS", "10",
                                  "--lambda_CE", "2", "--pretrained_model_paths", "a", "b"])
    assert (args.mask_ratio, args.vit_num, args.lambda_js, args.lambda_ce, args.mae_ckpt) == (0.5, 4, 10.0, 2.0,
                                                                                             ["a", "b"])
    assert args.batch_size == 128  # 64 * int(1 / (1 - 0.5)), as the reference


@pytest.mark.parametrize("script, flags, words", [
    ("main_lsd.py", ["--data-dir", ROOT, "--mask-ratio", "1.5"], "--mask-ratio"),
    ("main_lsd.py", ["--data-dir", ROOT, "--vit-num", "3", "--mae-ckpt", "a.pth", "b.pth"], "--vit-num 3"),
    ("main_mtl.py", [], "--data-dir is required"),
    ("main_mtl.py", ["--data-dir", ROOT, "--batch-size", "-4"], "--batch-size"),
])
def test_bad_flag_values_give_one_line_and_exit_code_2(script, flags, words, capsys):
    # The first case runs as a new process (the exit status a shell sees), the others in this one.
    in_process = flags != ["--data-dir", ROOT, "--mask-ratio", "1.5"]
    result = run_main(capsys, script, *flags, check=False) if in_process else run_entry(script, *flags, check=False,
                                                                                        timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.stderr


@pytest.mark.dist
def test_two_gloo_processes_train_and_count_the_world_in_the_lr(mtl_data, tmp_path):
    result = run_torchrun(2, "main_mtl.py", "--data-dir", mtl_data, "--output-dir", tmp_path, "--epochs", "1", *TINY,
                          "--patch-embed", "hybrid", "--bn-adapt")
    # every parameter DDP buckets is in the layout its gradient comes in (no extra copy per step)
    assert "Grad strides do not match" not in result.stderr + result.stdout
    args = json.loads((tmp_path / "args.json").read_text())
    assert args["world_size"] == 2
    assert args["lr"] == pytest.approx(args["blr"] * 8 * 2 * 2 / 256)
    checkpoint = load(tmp_path / "checkpoints" / "last.pth")
    assert checkpoint["epoch"] == 0 and len(checkpoint["rng"]) == 2
    from models import build_model

    model = build_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])

    # --bn-adapt: each rank read the whole validation split, so the statistics are what one process computes
    from datasets.transforms import BatchTransform
    from engine.cli import parse_args
    from engine.evaluate import adapt_batchnorm
    from engine.tasks import make_task

    task = make_task(parse_args("mtl", "", ["--data-dir", str(mtl_data), *TINY, "--patch-embed", "hybrid"]))
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1): the same sums in the same order
    try:
        adapt_batchnorm(model, task.val_split(), BatchTransform(32), 16, 0, torch.device("cpu"), nullcontext,
                        task.eval_collate)
    finally:
        torch.set_num_threads(threads)
    assert saved and all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_eval_writes_the_same_files_as_training_from_the_best_checkpoint(mtl_run, mtl_data, tmp_path):
    main("mtl", "", ["--eval", "--ckpt", str(mtl_run / "checkpoints" / "best_mtl.pth"), "--data-dir", str(mtl_data),
                     "--output-dir", str(tmp_path), *TINY])
    for name in ("val_predictions.txt", "test_predictions.txt"):
        assert (tmp_path / name).read_bytes() == (mtl_run / name).read_bytes(), name


@pytest.mark.dist
def test_eval_with_two_processes_writes_files_identical_to_one_process_on_an_odd_split(mtl_run, mtl_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(mtl_data, data)
    rows = (data / "validation_set_annotations.txt").read_text().splitlines()
    if (len(rows) - 1) % 2 == 0:
        rows = rows[:-1]
    (data / "validation_set_annotations.txt").write_text("\n".join(rows) + "\n")
    test_rows = (data / "MTL_Challenge_test_set_release.txt").read_text().splitlines()
    if (len(test_rows) - 1) % 2 == 0:
        (data / "MTL_Challenge_test_set_release.txt").write_text("\n".join(test_rows[:-1]) + "\n")
    ckpt = mtl_run / "checkpoints" / "best_mtl.pth"
    flags = ["--eval", "--ckpt", ckpt, "--data-dir", data, *TINY, "--eval-batch-size", "4"]
    run_entry("main_mtl.py", *flags, "--output-dir", tmp_path / "one")
    run_torchrun(2, "main_mtl.py", *flags, "--output-dir", tmp_path / "two")
    for name in ("val_predictions.txt", "test_predictions.txt"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    one, two = (json.loads((tmp_path / run / "val_metrics.json").read_text()) for run in ("one", "two"))
    assert one["counts"] == two["counts"] and one["p_mtl"] == pytest.approx(two["p_mtl"], abs=1e-9)
    assert len((tmp_path / "one" / "val_predictions.txt").read_text().splitlines()) == len(rows)


@pytest.mark.parametrize("size, batch, world", [(11, 4, 2), (1, 4, 3), (7, 3, 8), (12, 4, 3), (0, 4, 2)])
def test_eval_shards_are_the_single_process_batches_and_cover_every_sample_once(size, batch, world):
    from engine.evaluate import ShardedBatches

    single = ShardedBatches(size, batch, 0, 1).batches
    assert [i for b in single for i in b] == list(range(size))
    shards = [ShardedBatches(size, batch, rank, world).batches for rank in range(world)]
    assert sorted(map(tuple, (b for shard in shards for b in shard))) == sorted(map(tuple, single))


def sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_eval_rebuilds_the_model_and_its_input_size_from_the_checkpoint_alone(mtl_run, mtl_data, tmp_path):
    # no model flag at all: the checkpoint (32 px, nano) decides, not the defaults (224 px, base); the precision is
    # the training run's (auto would be bf16 on a CPU that computes it natively)
    main("mtl", "", ["--eval", "--ckpt", str(mtl_run / "checkpoints" / "best_mtl.pth"), "--data-dir", str(mtl_data),
                     "--output-dir", str(tmp_path), "--eval-batch-size", "16", "--num-workers", "0",
                     "--precision", "fp32"])
    for name in ("val_predictions.txt", "test_predictions.txt"):
        assert (tmp_path / name).read_bytes() == (mtl_run / name).read_bytes(), name


@pytest.mark.parametrize("flags, words", [(["--img-size", "64"], "--img-size 64 (the checkpoint: 32)"),
                                          (["--vit", "base"], "--vit base (the checkpoint: nano)"),
                                          (["--patch-size", "16"], "--patch-size 16 (the checkpoint: 8)"),
                                          (["--dan", "none"], "--dan none (the checkpoint: frozen)")])
def test_eval_names_a_model_flag_that_contradicts_the_checkpoint_in_one_line(mtl_run, mtl_data, tmp_path, capsys,
                                                                             flags, words):
    with pytest.raises(SystemExit) as stop:
        main("mtl", "", ["--eval", "--ckpt", str(mtl_run / "checkpoints" / "best_mtl.pth"), "--data-dir",
                         str(mtl_data), "--output-dir", str(tmp_path), "--num-workers", "0", *flags])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and lines[0].startswith("error: "), lines


def test_eval_with_tuning_leaves_a_read_only_checkpoint_byte_identical_and_the_thresholds_apply_again(
        mtl_run, mtl_data, tmp_path):
    ckpt = tmp_path / "released.pth"
    shutil.copy(mtl_run / "checkpoints" / "best_mtl.pth", ckpt)
    ckpt.chmod(0o444)
    before = sha256(ckpt)
    common = ["--eval", "--ckpt", str(ckpt), "--data-dir", str(mtl_data), "--num-workers", "0"]
    main("mtl", "", common + ["--output-dir", str(tmp_path / "tuned"), "--tune-au-thresholds"])
    assert sha256(ckpt) == before
    saved = json.loads((tmp_path / "tuned" / "au_thresholds.json").read_text())
    tuned = json.loads((tmp_path / "tuned" / "val_metrics.json").read_text())
    assert saved["au_thresholds"] == tuned["au_thresholds"] and len(saved["au_thresholds"]) == 12
    main("mtl", "", common + ["--output-dir", str(tmp_path / "again"), "--au-thresholds",
                              str(tmp_path / "tuned" / "au_thresholds.json")])
    again = json.loads((tmp_path / "again" / "val_metrics.json").read_text())
    assert again["au_thresholds"] == tuned["au_thresholds"] and again["f1_au"] == tuned["f1_au"]
    for name in ("val_predictions.txt", "test_predictions.txt"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "tuned" / name).read_bytes(), name
    assert sha256(ckpt) == before


def test_best_checkpoints_hold_what_evaluation_needs_and_only_last_resumes(mtl_run, mtl_data, tmp_path):
    best = load(mtl_run / "checkpoints" / "best_mtl.pth")
    assert {"model", "model_config", "metrics", "au_thresholds", "epoch"} <= set(best)
    assert not {"optimizer", "rng", "train_state"} & set(best)
    assert (mtl_run / "checkpoints" / "best_mtl.pth").stat().st_size < (mtl_run / "checkpoints" / "last.pth").stat(
    ).st_size
    result = run_entry("main_mtl.py", "--data-dir", mtl_data, "--output-dir", tmp_path, *TINY,
                       "--resume", mtl_run / "checkpoints" / "best_mtl.pth", check=False, timeout=120)
    assert result.returncode == 2 and "last.pth" in result.stderr and "Traceback" not in result.stderr
