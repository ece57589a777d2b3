"""The README's commands run in order, as written: every command in its bash blocks is either run here (with fewer
epochs and steps appended and smaller generated data sets, so it takes seconds) or marked in the README as needing a
GPU, the real data or a checkout of another repository."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import ENTRY_TRACKS, ROOT

README = os.path.join(ROOT, "README.md")
# Appended to training and evaluation commands: later flags win, so the documented command runs in seconds. Only what
# leaves the contract between the commands alone is shrunk (epochs, steps, workers): model, input size, batch and
# precision stay as documented, so that a training command and the evaluation of its checkpoint meet as a user's do.
SHORTER = ["--epochs", "1", "--warmup-epochs", "0", "--max-steps", "2", "--num-workers", "0", "--log-interval", "1"]


def readme_commands():
    """Commands of the README's bash blocks, continuation lines joined, in order."""
    with open(README) as handle:
        text = handle.read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.strip().startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def is_marked(command):
    """A command that cannot run here: its comment says it needs a GPU, the real data, or a checkout of another
    repository (the original implementations the benchmarks compare against)."""
    comment = command.partition("#")[2]
    return "needs" in comment and any(word in comment for word in ("GPU", "real data", "checkout"))


def test_every_readme_command_is_runnable_here_or_marked():
    commands = readme_commands()
    assert len(commands) >= 10
    runnable = [c for c in commands if not is_marked(c)]
    for command in runnable:
        assert "/data/ABAW4" not in command and "weights/" not in command, f"unmarked command needs data: {command}"


def prepare(command, tmp_path):
    """The command made to run in ``tmp_path`` at a small size; None for the test command itself."""
    if command == "python -m pytest -q":
        return None  # this very suite
    parts = []
    for piece in command.split("&&"):
        argv = shlex.split(piece.partition("#")[0])
        if argv[:2] == ["pip", "install"]:
            continue  # the environment running the tests has installed requirements.txt already
        argv = [a.replace("runs/", f"{tmp_path}/runs/").replace("data/synth", f"{tmp_path}/data/synth") for a in argv]
        if argv[1:3] == ["-m", "datasets.synthetic"]:  # fewer frames per video and images per class, same layout
            shrunk = (("--frames", "12"), ("--per-class", "50"))
            if argv[3:4] == ["tracks"]:  # its demo-sized set: fewer videos too (the MTL sets keep theirs for the
                shrunk += (("--videos", "16"),)  # batches of the commands that train on them)
            for flag, value in shrunk:
                if flag in argv:
                    argv[argv.index(flag) + 1] = value
        script = next((a for a in argv if a.endswith(".py")), None)
        if script in ENTRY_TRACKS and "--demo" not in argv:
            argv += SHORTER
        if script == "benchmarks/bench.py":
            argv += ["--vit", "nano", "--img-size", "32", "--patch-size", "8", "--steps", "1"]
        if argv[0] == "python":
            argv[0] = sys.executable
        elif argv[0] == "torchrun":
            argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", *argv[1:]]
        parts.append(argv)
    return parts


def demo_folder(argv):
    """The name of the folder a demo writes to by default (``runs/<name>``)."""
    from engine.tasks import task_class

    script = next(a for a in argv if a.endswith(".py"))
    return os.path.basename(task_class(ENTRY_TRACKS[script]).demo_run["output_dir"])


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path):
    env = dict(os.environ, ABAW_DEMO_SIZE="small", ABAW_DEMO_DATA=str(tmp_path / "demo_data"), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    ran = 0
    for command in readme_commands():
        if is_marked(command):
            continue
        prepared = prepare(command, tmp_path)
        if prepared is None:
            continue
        for argv in prepared:
            if "--demo" in argv and "--output-dir" not in argv:  # the demo's own folder, under tmp_path
                argv += ["--output-dir", str(tmp_path / "runs" / demo_folder(argv))]
            result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            ran += 1
    assert ran >= 7
    assert (tmp_path / "runs" / "synth_emma_eval" / "test_predictions.txt").is_file()
    assert (tmp_path / "runs" / "demo_mtl" / "test_metrics.json").is_file()
    assert (tmp_path / "runs" / "demo_mtl_mae" / "test_metrics.json").is_file()  # fine-tuned from the MAE demo
    for task in ("va", "expr", "au"):  # the per-video tracks' demo-sized run and its --eval
        assert (tmp_path / "runs" / "demo_tracks_eval" / f"test_predictions_{task}.txt").is_file()
    temporal = json.loads((tmp_path / "runs" / "demo_temporal" / "test_metrics.json").read_text())
    assert {"p_mtl", "frame_p_mtl", "frame_p_mtl_smoothed"} <= set(temporal)  # over the MTL demo's backbone


@pytest.mark.parametrize("script, track", sorted(ENTRY_TRACKS.items()))
def test_help_documents_every_flag(script, track, capsys, monkeypatch):
    import runpy

    from engine.cli import build_parser

    parser = build_parser(track, "")
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help text"
    if script == "main_mtl.py":  # one entry point as a new process, the others' --help in this one
        result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0
        text = result.stdout
    else:
        monkeypatch.setattr(sys, "argv", [script, "--help"])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
        assert exit_.value.code == 0
        text = capsys.readouterr().out
    assert "torchrun --nproc_per_node 8" in text  # the module docstring with the exact commands
    for action in parser._actions:
        assert action.option_strings[0] in text
