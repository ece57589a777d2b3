"""``--eval --ckpt A B ...`` evaluates an ensemble: every member predicts validation and the test list at its own
model and input size, and the files come from the mean of the members' probabilities and of their VA as each would
write it (clipped to [-1, 1]); one checkpoint given twice writes exactly what it writes alone."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY

from datasets import mtl
from datasets.images import ImageListDataset, collate_uint8
from datasets.transforms import BatchTransform
from engine.entry import main
from models import build_model

# Members without the DAN branch: a random frozen DAN's scores push VA far outside [-1, 1], where the files clip it.
MTL_MEMBER = [*TINY, "--epochs", "1", "--max-steps", "2", "--dan", "none"]
EVAL = ["--num-workers", "0", "--precision", "fp32", "--device", "cpu"]


def train(track, data, out, *flags):
    main(track, "", ["--data-dir", str(data), "--output-dir", str(out), *flags])
    return out / "checkpoints" / ("best_mtl.pth" if track == "mtl" else "best_f1.pth")


@pytest.fixture(scope="module")
def members(mtl_data, lsd_data, tmp_path_factory):
    """Two EMMA checkpoints of different seeds and input sizes, and a CoTEX checkpoint."""
    root = tmp_path_factory.mktemp("members")
    with_48px = [*MTL_MEMBER, "--img-size", "48"]  # later flags win over TINY's 32
    return {"mtl": [train("mtl", mtl_data, root / "emma_a", *MTL_MEMBER),
                    train("mtl", mtl_data, root / "emma_b", *with_48px, "--seed", "1")],
            "lsd": [train("lsd", lsd_data, root / "cotex_a", *TINY, "--epochs", "1", "--max-steps", "2",
                          "--vit-num", "2", "--mask-ratio", "0.5")]}


@pytest.fixture(scope="module")
def evaluate(mtl_data, lsd_data, tmp_path_factory):
    """``evaluate(track, ckpts)``: the output folder and the log of ``--eval --ckpt ckpts`` (run once)."""
    root, done = tmp_path_factory.mktemp("evals"), {}

    def run(track, ckpts):
        key = (track, *map(str, ckpts))
        if key not in done:
            out = root / f"eval{len(done)}"
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                main(track, "", ["--eval", "--ckpt", *map(str, ckpts), "--data-dir",
                                 str(mtl_data if track == "mtl" else lsd_data), "--output-dir", str(out), *EVAL])
            done[key] = out, log.getvalue()
        return done[key]

    return run


def metrics(folder):
    return json.loads((folder / "val_metrics.json").read_text())


@pytest.mark.parametrize("track", ["mtl", "lsd"])
def test_a_checkpoint_given_twice_writes_the_files_it_writes_alone(members, evaluate, track):
    first = members[track][0]
    alone, _ = evaluate(track, [first])
    twice, _ = evaluate(track, [first, first])
    for name in ("val_predictions.txt", "test_predictions.txt"):
        assert (twice / name).read_bytes() == (alone / name).read_bytes(), name
    listed = metrics(twice)
    assert len(listed.pop("members")) == 2 and "members" not in metrics(alone)
    assert listed == metrics(alone)


def model_outputs(checkpoint, images):
    """The raw outputs of a checkpoint's model on ``images``, computed here as a user would."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = build_model(saved["model_config"])
    model.load_state_dict(saved["model"])
    with torch.no_grad():
        return model.eval()(BatchTransform(saved["model_config"]["img_size"])(images)).double().numpy()


def test_an_ensemble_predicts_the_mean_of_its_members_probabilities(members, evaluate, mtl_data):
    ensemble, _ = evaluate("mtl", members["mtl"])
    rows = [row.split(",") for row in (ensemble / "val_predictions.txt").read_text().splitlines()[1:]]
    names = np.array([row[0] for row in rows], dtype=object)
    written = np.array([[float(value) for value in row[1:]] for row in rows])
    data = ImageListDataset(str(mtl_data / mtl.IMAGE_DIR), names)
    images = collate_uint8([data[i] for i in range(len(data))])[0]
    a, b = (model_outputs(path, images) for path in members["mtl"])  # 32 px and 48 px
    assert not np.allclose(a[:, :2], b[:, :2], atol=1e-2)  # two different members

    va = (np.clip(a[:, :2], -1, 1) + np.clip(b[:, :2], -1, 1)) / 2  # each member as it would write VA
    np.testing.assert_allclose(written[:, :2], va, atol=2e-6)
    expr = sum(torch.softmax(torch.from_numpy(m[:, 2:10]), 1).numpy() for m in (a, b)) / 2
    top_two = np.sort(expr, 1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 1e-5  # rows without a near tie
    assert clear.sum() > len(rows) // 2
    np.testing.assert_array_equal(written[clear, 2], expr[clear].argmax(1))
    aus = sum(1 / (1 + np.exp(-m[:, 10:])) for m in (a, b)) / 2  # thresholds: the first member's, 0.5
    clear = np.abs(aus - 0.5) > 1e-5
    np.testing.assert_array_equal(written[:, 3:][clear], (aus >= 0.5)[clear])


def test_the_report_lists_each_members_validation_score(members, evaluate):
    ensemble, log = evaluate("mtl", members["mtl"])
    own = [metrics(evaluate("mtl", [path])[0])["p_mtl"] for path in members["mtl"]]
    assert metrics(ensemble)["members"] == [{"ckpt": str(path), "p_mtl": score}
                                            for path, score in zip(members["mtl"], own)]
    for index, (path, score) in enumerate(zip(members["mtl"], own), 1):
        assert f"member {index} ({path}): validation p_mtl {score:.4f}" in log
    assert f"ensemble of 2 checkpoints: p_mtl {metrics(ensemble)['p_mtl']:.4f}" in log
    assert f"AU thresholds of the ensemble: the first member's ({members['mtl'][0]})" in log


@pytest.mark.parametrize("track", ["temporal", "pretrain"])
def test_several_ckpt_files_outside_mtl_and_lsd_are_a_one_line_error(track, mtl_data, tmp_path, capsys):
    any_file = os.path.join(ROOT, "README.md")  # refused before anything is loaded
    with pytest.raises(SystemExit) as stop:
        main(track, "", ["--eval", "--ckpt", any_file, any_file, "--data-dir", str(mtl_data), "--output-dir",
                         str(tmp_path), *EVAL])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "ensembles are supported by main_mtl.py and main_lsd.py" in lines[0], lines


def test_a_missing_member_is_a_one_line_error(members, mtl_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main("mtl", "", ["--eval", "--ckpt", str(members["mtl"][0]), str(tmp_path / "absent.pth"), "--data-dir",
                         str(mtl_data), "--output-dir", str(tmp_path), *EVAL])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "absent.pth: no such file" in lines[0], lines


def written_va(folder, name="test_predictions.txt"):
    rows = [row.split(",") for row in (folder / name).read_text().splitlines()[1:]]
    return np.array([[float(row[1]), float(row[2])] for row in rows])


def test_a_member_with_out_of_range_valence_counts_as_the_value_it_writes(members, evaluate, tmp_path):
    """A member whose raw VA leaves [-1, 1] (written as the bound) enters the mean with the bound, so the ensemble
    writes the mean of the members' written VA."""
    saved = torch.load(members["mtl"][0], map_location="cpu", weights_only=True)
    last = max(key for key in saved["model"] if key.startswith("va_head.") and key.endswith(".weight"))
    saved["model"][last] = saved["model"][last] * 200  # raw VA far outside [-1, 1] on most frames
    saved["model"][last.replace("weight", "bias")] = saved["model"][last.replace("weight", "bias")] * 200
    loud = tmp_path / "loud.pth"
    torch.save(saved, loud)
    quiet = members["mtl"][1]
    ensemble, _ = evaluate("mtl", [loud, quiet])
    loud_va, quiet_va = written_va(evaluate("mtl", [loud])[0]), written_va(evaluate("mtl", [quiet])[0])
    assert (np.abs(loud_va) == 1.0).mean() > 0.5 and (np.abs(quiet_va) < 1.0).all()  # the case is present
    np.testing.assert_allclose(written_va(ensemble), (loud_va + quiet_va) / 2, atol=1e-6 + 1e-9, rtol=0)
