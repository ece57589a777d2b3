"""The stage contract: every task implements the written interface, the code that runs tasks never asks which one it
runs, each shared fact has one definition, files are replaced one way, and the parsed flags are never rewritten."""

import copy
import os
import re
import stat
import subprocess
import sys

import pytest
from conftest import ROOT, TINY

from engine import runner
from engine.cli import parse_args
from engine.task import Selection, Task
from engine.tasks import TASKS, task_class
from utils.atomic import atomic_write, write_text_atomic


def is_task_module(path: str) -> bool:
    """The stages and their registry, the one place where code may ask which track it runs."""
    return path.startswith("engine/tasks/")


def interface_members():
    members = {name for name, value in vars(Task).items() if not name.startswith("_") and callable(value)}
    return members | set(Task.__annotations__)


def python_files():
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    return [path for path in files if os.path.isfile(os.path.join(ROOT, path))]


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        return handle.read()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_provides_each_member_of_the_interface(name, mtl_data, lsd_data):
    cls = TASKS[name]
    data = mtl_data if name in ("mtl", "temporal") else lsd_data
    extra = ["--backbone-ckpt", os.path.join(ROOT, "README.md")] if name == "temporal" else []  # any existing file
    task = cls(parse_args(name, "", ["--data-dir", str(data), *extra]))
    missing = sorted(member for member in interface_members() if not hasattr(task, member))
    assert not missing, f"{cls.__name__} lacks {missing}"
    assert task.selection.main in task.selection.metrics
    assert task_class(name) is cls and cls.name == name


def test_no_module_outside_the_tasks_branches_on_the_track():
    pattern = re.compile(r"""(track|\.name)\s*[!=]=|[!=]=\s*["'](mtl|lsd)["']|["'](mtl|lsd)["']\s*[!=]=""")
    offenders = [f"{path}:{number}" for path in python_files()
                 if path.startswith(("engine/", "utils/", "benchmarks/", "models/")) and not is_task_module(path)
                 for number, line in enumerate(read(path).splitlines(), 1) if pattern.search(line)]
    assert not offenders


def test_os_replace_is_called_in_one_place_outside_the_tests():
    callers = [path for path in python_files() if not path.startswith("tests/") and "os.replace(" in read(path)]
    assert callers == ["utils/atomic.py"]


@pytest.mark.parametrize("fact", ["VA_MISSING = ", "EXPR_MISSING = ", "AU_MISSING = ", "NUM_AU = ", "NUM_EXPR = ",
                                  "SMOOTHING_WINDOWS = ", "OUT_AU = ", "OUT_EXPR = "])
def test_each_abaw_fact_is_defined_once(fact):
    definitions = [path for path in python_files() if not path.startswith("tests/")
                   for line in read(path).splitlines() if line.startswith(fact)]
    assert definitions == ["utils/abaw.py"]


def test_an_interrupted_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "file.txt"
    write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as handle:
            handle.write("half of the new")
            raise RuntimeError("crash while writing")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["file.txt"]
    write_text_atomic(path, "new\n")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_text() == "new\n" and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_selection_keeps_each_metric_that_improves():
    selection = Selection({"mtl": "p_mtl", "va": "va"})
    best = {"mtl": 1.0}
    assert selection.improved({"p_mtl": 0.5, "va": 0.1}, best) == ["va"]
    assert selection.improved({"p_mtl": 1.5, "va": 0.1}, best) == ["mtl"]
    assert best == {"mtl": 1.5, "va": 0.1} and selection.main == "mtl"


def test_a_run_reads_the_parsed_flags_and_never_rewrites_them(mtl_data, tmp_path):
    args = parse_args("mtl", "", ["--data-dir", str(mtl_data), "--output-dir", str(tmp_path), "--epochs", "1",
                                  "--max-steps", "2", "--tune-au-thresholds", "--smooth-va", "auto", *TINY])
    parsed = copy.deepcopy(vars(args))
    runner.train(args)
    assert vars(args) == parsed
    evaluation = parse_args("mtl", "", ["--eval", "--data-dir", str(mtl_data), "--output-dir", str(tmp_path / "eval"),
                                        "--ckpt", str(tmp_path / "checkpoints" / "best_mtl.pth"),
                                        "--num-workers", "0", "--precision", "fp32"])
    parsed = copy.deepcopy(vars(evaluation))
    runner.evaluate_only(evaluation)
    assert vars(evaluation) == parsed


def test_lsd_batch_follows_the_mask_ratio_as_a_default_not_as_a_rewrite():
    args = parse_args("lsd", "", ["--data-dir", ROOT, "--mask-ratio", "0.5"])
    assert args.batch_size == 128 and "batch_size" not in args.typed


def test_au_thresholds_without_eval_is_a_one_line_error(tmp_path):
    thresholds = tmp_path / "au_thresholds.json"
    thresholds.write_text('{"au_thresholds": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}')
    result = subprocess.run([sys.executable, "main_mtl.py", "--data-dir", ROOT, "--au-thresholds", str(thresholds)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--au-thresholds applies to --eval" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_stage_lives_in_engine_tasks():
    """``engine/`` keeps the life cycle; each stage is a module of ``engine/tasks/`` whose task the registry names."""
    leftovers = [path for path in python_files() if path.startswith("engine/") and path.endswith("_task.py")]
    assert not leftovers
    for cls in TASKS.values():
        assert cls.__module__.startswith("engine.tasks."), cls


def module_imports() -> dict[str, set[str]]:
    """Each module of the four packages -> the modules of those packages it imports, lazily inside functions too."""
    import ast

    modules = {}
    for path in python_files():
        parts = path[:-3].split("/")
        if parts[0] in ("engine", "datasets", "models", "utils"):
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    imports = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(read(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        imports[name] = {other for other in found if other in modules and other != name}
    return imports


def test_no_two_modules_import_each_other():
    imports = module_imports()
    assert {"engine.tasks", "engine.train", "utils.dist"} <= imports["engine.runner"]  # lazy imports counted too
    assert "engine.demo" in imports["engine.cli"]
    circles = sorted((a, b) for a in imports for b in imports[a] if a < b and a in imports.get(b, ()))
    assert not circles
