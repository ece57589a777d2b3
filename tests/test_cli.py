"""Flags: typed values always win over the demo's settings, precision auto needs native bf16, launchers run under sh."""

import json
import os
import shutil
import subprocess

import pytest
import torch
from conftest import ROOT, run_entry

from engine import demo, runtime
from engine.cli import parse_args
from engine.tasks import task_class


@pytest.fixture(autouse=True)
def full_size_demo(monkeypatch):
    monkeypatch.delenv("ABAW_DEMO_SIZE", raising=False)


@pytest.mark.parametrize("track, flags, expected", [
    ("mtl", ["--epochs", "30"], {"epochs": 30}),  # 30 is also the parser's default
    # linear is also the parser's default; a patchify demo trains its own number of epochs
    # the patchify layer has no stem blocks
    ("mtl", ["--patch-embed", "linear"], {"patch_embed": "linear", "epochs": demo.PATCHIFY_RUN["epochs"],
                                          "stem_blocks": None}),
    # MAE weights fit the patchify layer, which has no BatchNorm to adapt
    ("lsd", ["--mae-ckpt", "a.pth"], {"mae_ckpt": ["a.pth"], "patch_embed": "linear",
                                      "epochs": demo.PATCHIFY_RUN["epochs"], "bn_adapt": False, "stem_blocks": None}),
    ("lsd", ["--no-bn-adapt"], {"bn_adapt": False}),
    ("mtl", ["--mae-ckpt", "a.pth", "--epochs", "2"], {"mae_ckpt": ["a.pth"], "patch_embed": "linear", "epochs": 2,
                                                        "stem_blocks": None}),
    ("lsd", ["--stem-blocks", "2"], {"stem_blocks": [2]}),  # ResNet-18's, typed
    ("mtl", ["--batch-size", "100"], {"batch_size": 100}),  # 100 is also the parser's default
    ("lsd", ["--batch-size", "64"], {"batch_size": 64}),
    ("lsd", ["--mask-ratio", "0.75"], {"mask_ratio": 0.75, "batch_size": demo.DEMO_COMMON["batch_size"]}),
])
def test_a_typed_flag_wins_over_the_demo_whatever_its_value(track, flags, expected):
    args = parse_args(track, "", ["--demo", *flags])
    for key, value in expected.items():
        assert getattr(args, key) == value, key
    settings = demo.run_settings(task_class(track))
    for key, value in settings.items():  # every flag not typed takes the demo's value
        if key not in expected:
            assert getattr(args, key) == value, key


def test_stem_blocks_need_the_hybrid_patch_embedding_and_one_count_per_stage(capsys):
    with pytest.raises(SystemExit):
        parse_args("mtl", "", ["--data-dir", ROOT, "--stem-blocks", "1"])
    assert "it needs --patch-embed hybrid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args("lsd", "", ["--data-dir", ROOT, "--patch-embed", "hybrid", "--patch-size", "8",
                               "--stem-blocks", "1", "1", "1"])
    assert "has 2 ResNet stages" in capsys.readouterr().err
    args = parse_args("lsd", "", ["--data-dir", ROOT, "--patch-embed", "hybrid", "--patch-size", "32",
                                  "--stem-blocks", "1", "2", "1", "1"])
    assert args.stem_blocks == [1, 2, 1, 1]


def test_typed_stem_blocks_are_checked_against_a_checkpoints_stem():
    from engine.task import check_model_flags
    from utils.errors import UserError

    resnet18_stem = dict(name="emma", vit_size="nano", img_size=48, patch_size=8, patch_embed="hybrid")
    for typed in (["2"], ["2", "2"]):  # ResNet-18's blocks, which a config leaves unrecorded
        check_model_flags(resnet18_stem, parse_args("mtl", "", ["--demo", "--stem-blocks", *typed]), "a.pth")
    with pytest.raises(UserError, match=r"--stem-blocks 1 \(the checkpoint: 2 2\)"):
        check_model_flags(resnet18_stem, parse_args("mtl", "", ["--demo", "--stem-blocks", "1"]), "a.pth")
    check_model_flags(dict(resnet18_stem, stem_blocks=[1]), parse_args("mtl", "", ["--demo", "--stem-blocks", "1",
                                                                                   "1"]), "a.pth")
    # not typed: the checkpoint decides, whatever the demo's value
    check_model_flags(resnet18_stem, parse_args("mtl", "", ["--demo"]), "a.pth")


def test_flags_without_demo_keep_the_reference_defaults_and_derived_batch():
    args = parse_args("lsd", "", ["--data-dir", ROOT, "--mask-ratio", "0.5"])
    assert (args.batch_size, args.epochs, args.patch_embed) == (128, 6, "linear")
    assert parse_args("lsd", "", ["--data-dir", ROOT, "--mask-ratio", "0.5", "--batch-size", "64"]).batch_size == 64
    assert parse_args("mtl", "", ["--data-dir", ROOT]).typed == ["data_dir"]


def test_demo_says_which_of_its_settings_the_flags_replaced_and_args_json_has_what_ran(tmp_path):
    env = {"ABAW_DEMO_SIZE": "small", "ABAW_DEMO_DATA": str(tmp_path / "demo_data")}
    result = run_entry("main_lsd.py", "--demo", "--epochs", "2", "--output-dir", tmp_path / "run", env=env)
    first = [line for line in result.stdout.splitlines() if "demo settings" in line]
    assert first and "--epochs 2 (demo: 1)" in first[0] and "--output-dir" in first[0]
    ran = json.loads((tmp_path / "run" / "args.json").read_text())
    assert ran["epochs"] == 2 and ran["vit"] == "nano" and ran["patch_embed"] == "hybrid"
    records = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(records) == 2


@pytest.mark.parametrize("flags, native", [
    ("fpu sse2 avx2 avx512f avx512bw", False),  # AVX-512 alone: oneDNN emulates bf16, 3x slower than fp32
    ("fpu sse2 avx2", False),
    ("fpu avx2 avx512f avx512_bf16", True),
    ("fpu avx512f amx_bf16 amx_tile", True),
    ("fp asimd bf16 i8mm", True),  # Arm
])
def test_precision_auto_picks_bf16_only_on_a_cpu_with_native_bf16(tmp_path, monkeypatch, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    key = "Features" if "asimd" in flags else "flags"
    cpuinfo.write_text(f"processor\t: 0\n{key}\t\t: {flags}\n\nprocessor\t: 1\n{key}\t\t: {flags}\n")
    original = runtime.cpu_flags
    monkeypatch.setattr(runtime, "cpu_flags", lambda: original(str(cpuinfo)))
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("auto", cpu) == (torch.bfloat16 if native else None)
    assert runtime.resolve_precision("bf16", cpu) == torch.bfloat16 and runtime.resolve_precision("fp32", cpu) is None


@pytest.mark.parametrize("supported", [True, False])
def test_precision_auto_on_a_gpu_follows_its_bf16_support(monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert runtime.resolve_precision("auto", torch.device("cuda", 0)) == (torch.bfloat16 if supported else None)


LAUNCHERS = ["train_EMMA.sh", "train_masked_CoTEX.sh", "eval_EMMA.sh", "eval_masked_CoTEX.sh", "slurm_EMMA.sbatch",
             "pretrain_MAE.sh", "train_temporal.sh", "train_video.sh"]
DASH = shutil.which("dash")


@pytest.mark.skipif(DASH is None, reason="dash is not installed")
@pytest.mark.parametrize("script", LAUNCHERS)
def test_every_launcher_is_posix_sh(script):
    result = subprocess.run([DASH, "-n", os.path.join(ROOT, "shs", script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(DASH is None, reason="dash is not installed")
@pytest.mark.parametrize("script, entry, ngpus", [
    ("train_EMMA.sh", "main_mtl.py", "1"), ("train_EMMA.sh", "main_mtl.py", "4"),
    ("train_masked_CoTEX.sh", "main_lsd.py", "1"), ("train_masked_CoTEX.sh", "main_lsd.py", "2"),
    ("eval_EMMA.sh", "main_mtl.py", "1"), ("eval_masked_CoTEX.sh", "main_lsd.py", "1"),
    ("pretrain_MAE.sh", "main_pretrain.py", "1"), ("pretrain_MAE.sh", "main_pretrain.py", "8"),
    ("train_temporal.sh", "main_temporal.py", "1"), ("train_temporal.sh", "main_temporal.py", "2"),
    ("train_video.sh", "main_video.py", "1"), ("train_video.sh", "main_video.py", "2"),
])
def test_launchers_under_dash_reach_their_entry_point_with_flags_it_accepts(tmp_path, script, entry, ngpus):
    """python and torchrun are stand-ins that record their arguments; the recorded flags must parse."""
    record = tmp_path / "argv"
    for tool in ("python", "torchrun"):
        stub = tmp_path / tool
        stub.write_text(f'#!/bin/sh\necho "$0" > {record}\nfor a in "$@"; do echo "$a" >> {record}; done\n')
        stub.chmod(0o755)
    data_dir = f"{ROOT} {ROOT}/tests" if "pretrain" in script else ROOT
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", NGPUS=ngpus, DATA_DIR=data_dir,
               MAE_CKPT="a.pth b.pth" if "CoTEX" in script else "a.pth", CKPT=os.path.join(ROOT, "README.md"),
               BACKBONE_CKPT=os.path.join(ROOT, "README.md"))
    extra = ["--warmup-epochs", "1"] if "pretrain" in script else []  # the recipe warms up for 40 epochs
    result = subprocess.run([DASH, os.path.join("shs", script), "--epochs", "8", *extra], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    tool, *argv = record.read_text().splitlines()
    assert os.path.basename(tool) == ("torchrun" if ngpus != "1" else "python")
    if ngpus != "1":
        assert argv[:2] == ["--nproc_per_node", ngpus]
        argv = argv[2:]
    assert argv[0] == entry
    args = parse_args({"main_mtl.py": "mtl", "main_lsd.py": "lsd", "main_pretrain.py": "pretrain",
                       "main_temporal.py": "temporal", "main_video.py": "video"}[entry], "", argv[1:])
    if "pretrain" in script:  # several folders, and the effective batch of MAE's recipe
        assert args.data_dir == [ROOT, f"{ROOT}/tests"] and args.mask_ratio == 0.75 and args.norm_pix_loss
        assert args.batch_size * args.accum_iter * int(ngpus) == 4096 and args.epochs == 8
        return
    if "temporal" in script:
        assert (args.window, args.stride, args.layers, args.width, args.epochs) == (100, 50, 4, 128, 8)
    if "video" in script:
        assert (args.track_name, args.audio, args.frames_per_video, args.layers, args.epochs) == ("emi", "logmel", 32,
                                                                                                  2, 8)
    assert args.data_dir == ROOT
    if "train" in script:
        assert args.epochs == 8 and args.vit == "base"  # the user's --epochs comes last and wins over the recipe's
    if "CoTEX" in script and "train" in script:
        assert args.mae_ckpt == ["a.pth", "b.pth"] and args.vit_num == 2 and args.mask_ratio == 0.75
