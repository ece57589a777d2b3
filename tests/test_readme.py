"""The documentation's commands run in order, as written: every command in the bash blocks of README.md, then of each
docs/*.md in file-name order, is either run here (with fewer epochs and steps appended and smaller generated data
sets, so it takes seconds) or marked in its page as needing a GPU, the real data or a checkout of another
repository. The README stays a short guide that links every page of docs/, and every link between the pages
resolves."""

import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import ENTRY_TRACKS, ROOT

README = os.path.join(ROOT, "README.md")
MAX_README_LINES, MAX_README_CHARS = 300, 20_000
QUICK_START = "pip install -r requirements.txt && python main_mtl.py --demo\npython -m pytest -q\n"
# Appended to training and evaluation commands: later flags win, so the documented command runs in seconds. Only what
# leaves the contract between the commands alone is shrunk (epochs, steps, workers): model, input size, batch and
# precision stay as documented, so that a training command and the evaluation of its checkpoint meet as a user's do.
SHORTER = ["--epochs", "1", "--warmup-epochs", "0", "--max-steps", "2", "--num-workers", "0", "--log-interval", "1"]
# Relative output and data folders of a command (runs/..., data/...) are moved under the test's temporary folder.
RELATIVE_FOLDER = re.compile(r"(?<![\w/.-])(runs|data)/")


def pages():
    """README.md, then docs/*.md in file-name order: the order their commands run in."""
    return [README, *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def documented_commands():
    """(page, command) of every bash block of every page, continuation lines joined, in order."""
    commands = []
    for page in pages():
        for block in re.findall(r"```bash\n(.*?)```", read(page), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip() and not line.strip().startswith("#"):
                    commands.append((os.path.relpath(page, ROOT), " ".join(line.split())))
    return commands


def is_marked(command):
    """A command that cannot run here: its comment says it needs a GPU, the real data, or a checkout of another
    repository (the original implementations the benchmarks compare against)."""
    comment = command.partition("#")[2]
    return "needs" in comment and any(word in comment for word in ("GPU", "real data", "checkout"))


def split_command(piece):
    """``VAR=value ... program args`` -> (environment assignments, argv)."""
    argv = shlex.split(piece.partition("#")[0])
    assignments = {}
    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
        name, _, value = argv.pop(0).partition("=")
        assignments[name] = value
    return assignments, argv


def entry_script(argv):
    """The entry point a command runs (``python main_x.py`` or ``torchrun ... main_x.py``), or None."""
    return next((a for a in argv if a in ENTRY_TRACKS), None)


def test_quick_start_is_two_commands_in_one_block():
    blocks = re.findall(r"```bash\n(.*?)```", read(README), flags=re.S)
    assert blocks[0] == QUICK_START


def test_readme_is_a_short_guide_that_links_every_page_of_docs():
    text = read(README)
    assert len(text.splitlines()) <= MAX_README_LINES, f"README.md has {len(text.splitlines())} lines"
    assert len(text) <= MAX_README_CHARS, f"README.md has {len(text)} characters"
    linked = set(re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#[^)]*)?\)", text))
    for page in linked:
        assert os.path.isfile(os.path.join(ROOT, page)), f"README.md links {page}, which does not exist"
    present = {os.path.relpath(page, ROOT) for page in pages()[1:]}
    assert present, "docs/ holds no page"
    assert not present - linked, f"pages of docs/ the README does not link: {sorted(present - linked)}"


def prose(text):
    """The text of a page outside its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchors(text):
    """The anchors of a page's headings, as GitHub makes them."""
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", prose(text), flags=re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in pages():
        text = read(page)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(text)):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(resolved):
                broken.append(f"{os.path.relpath(page, ROOT)}: {target} (no such file)")
            elif anchor and resolved.endswith(".md") and anchor not in anchors(read(resolved)):
                broken.append(f"{os.path.relpath(page, ROOT)}: {target} (no such heading)")
    assert not broken


def test_every_documented_command_is_runnable_here_or_marked():
    commands = documented_commands()
    assert len(commands) >= 20
    for page, command in commands:
        if not is_marked(command):
            assert "/data/" not in command and "weights/" not in command, f"{page}: unmarked command needs data: " \
                                                                          f"{command}"


def test_documented_commands_name_existing_scripts_and_flags():
    """Marked commands too: every script a command names exists, and an entry point's flags parse (argparse only:
    names, choices and value types; nothing is read)."""
    from engine.cli import build_parser

    for page, command in documented_commands():
        for piece in command.split("&&"):
            _, argv = split_command(piece)
            for word in argv:
                if re.fullmatch(r"[\w./-]+\.(py|sh|sbatch)", word) and not word.startswith("/"):
                    assert os.path.isfile(os.path.join(ROOT, word)), f"{page}: {word} does not exist: {command}"
            script = entry_script(argv)
            if script is None:
                continue
            parser = build_parser(ENTRY_TRACKS[script], "")
            parser.allow_abbrev = False  # a page spells each flag in full
            try:
                parser.parse_args(argv[argv.index(script) + 1:])
            except SystemExit:
                pytest.fail(f"{page}: {script} does not accept: {command}")


def prepare(command, tmp_path):
    """The command made to run in ``tmp_path`` at a small size: (environment assignments, argv) per ``&&`` part;
    None for the test command itself."""
    if command == "python -m pytest -q":
        return None  # this very suite
    parts = []
    for piece in command.split("&&"):
        assignments, argv = split_command(piece)
        if argv[:2] == ["pip", "install"]:
            continue  # the environment running the tests has installed requirements.txt already
        argv = [RELATIVE_FOLDER.sub(lambda match: f"{tmp_path}/{match.group(1)}/", a) for a in argv]
        if argv[1:3] == ["-m", "datasets.synthetic"]:  # fewer frames per video and images per class, same layout
            shrunk = (("--frames", "12"), ("--per-class", "50"), ("--count", "48"))
            if argv[3:4] == ["tracks"]:  # its demo-sized set: fewer videos too (the MTL sets keep theirs for the
                shrunk += (("--videos", "16"),)  # batches of the commands that train on them)
            for flag, value in shrunk:
                if flag in argv:
                    argv[argv.index(flag) + 1] = value
        script = entry_script(argv)
        if script is not None and "--demo" not in argv:
            argv += SHORTER
        if "benchmarks/bench.py" in argv:
            argv += ["--vit", "nano", "--img-size", "32", "--patch-size", "8", "--steps", "1"]
        if argv[0] == "python":
            argv[0] = sys.executable
        elif argv[0] == "torchrun":
            argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", *argv[1:]]
        parts.append((assignments, argv))
    return parts


def demo_folder(script, argv):
    """The name of the folder a demo command writes to by default (``runs/<name>``), as its entry point's parser
    resolves it from the command's flags."""
    from engine.cli import parse_args

    flags = argv[argv.index(script) + 1:]
    return os.path.basename(os.path.normpath(parse_args(ENTRY_TRACKS[script], "", flags).output_dir))


@pytest.mark.slow
def test_documented_commands_run_in_order(tmp_path):
    env = dict(os.environ, ABAW_DEMO_SIZE="small", ABAW_DEMO_DATA=str(tmp_path / "demo_data"), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    ran = 0
    for page, command in documented_commands():
        if is_marked(command):
            continue
        prepared = prepare(command, tmp_path)
        if prepared is None:
            continue
        for assignments, argv in prepared:
            script = entry_script(argv)
            if "--demo" in argv and "--output-dir" not in argv and script is not None:  # its own folder, in tmp_path
                argv += ["--output-dir", str(tmp_path / "runs" / demo_folder(script, argv))]
            result = subprocess.run(argv, cwd=ROOT, env=dict(env, **assignments), capture_output=True, text=True,
                                    timeout=300)
            assert result.returncode == 0, f"{page}: {command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            ran += 1
    assert ran >= 15
    runs = tmp_path / "runs"
    for demo in ("demo_mtl", "demo_cotex", "demo_mtl_mae"):  # the README's demos, and fine-tuning from the MAE demo
        assert (runs / demo / "test_metrics.json").is_file()
    assert (runs / "demo_pretrain" / "checkpoints" / "last.pth").is_file()
    temporal = json.loads((runs / "demo_temporal" / "test_metrics.json").read_text())
    assert {"p_mtl", "frame_p_mtl", "frame_p_mtl_smoothed"} <= set(temporal)  # over the MTL demo's backbone
    assert (runs / "synth_emma_eval" / "test_predictions.txt").is_file()
    ensemble = json.loads((runs / "synth_emma_ensemble" / "val_metrics.json").read_text())
    assert len(ensemble["members"]) == 2
    for task in ("va", "expr", "au"):  # the per-video tracks' demo-sized run and its --eval
        assert (runs / "demo_tracks_eval" / f"test_predictions_{task}.txt").is_file()
    assert (runs / "synth_emma_ddp" / "checkpoints" / "last.pth").is_file()  # two processes under torchrun


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
