"""benchmarks/bench.py runs each measurement and reports it as JSON lines (tiny sizes; speed itself is not tested)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

TINY_MODEL = ["--vit", "nano", "--img-size", "32", "--patch-size", "8", "--precision", "fp32", "--device", "cpu",
              "--default-malloc"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", os.path.join(ROOT, "benchmarks", "bench.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_measurements(records, runs, **settings):
    """``runs`` measurement lines, then a final line holding the best of them; all with a positive speed."""
    assert len(records) == runs + 1
    *measurements, final = records
    assert [record["run"] for record in measurements] == list(range(runs))
    assert final["final"] is True and final["runs"] == runs
    assert final["img_per_s"] == max(record["img_per_s"] for record in measurements) > 0
    for record in records:
        for key, value in settings.items():
            assert record[key] == value


@pytest.mark.parametrize("model, extra", [("emma", []), ("cotex", ["--mask-ratio", "0.5"])])
def test_train_reports_speed_step_time_memory_and_settings(bench, capsys, model, extra):
    bench.main(["train", "--model", model, *TINY_MODEL, "--batch-size", "2", "--steps", "1", "--warmup", "0",
                "--repeat", "2", *extra])
    records = json_lines(capsys.readouterr().out)
    check_measurements(records, 2, bench="train", model=model, batch_size=2, precision="fp32", steps=1)
    for record in records:
        assert record["step_s"] > 0 and record["peak_mem_mb"] > 0 and record["train_gflop_per_img"] > 0
    assert records[0]["mask_ratio"] == (0.5 if model == "cotex" else None)


def test_pretrain_reports_mae_steps_with_their_flops(bench, capsys):
    bench.main(["pretrain", *TINY_MODEL, "--decoder-dim", "32", "--decoder-depth", "1", "--decoder-heads", "2",
                "--batch-size", "2", "--steps", "1", "--warmup", "0", "--repeat", "2", "--mask-ratio", "0.5"])
    records = json_lines(capsys.readouterr().out)
    check_measurements(records, 2, bench="pretrain", model="mae", batch_size=2, precision="fp32", mask_ratio=0.5)
    assert records[0]["train_gflop_per_img"] > 0 and records[0]["step_s"] > 0


def test_extract_reports_feature_extraction_beside_inference(bench, capsys):
    bench.main(["extract", *TINY_MODEL, "--frame-size", "16", "--batch-size", "3", "--steps", "1", "--warmup", "0"])
    records = json_lines(capsys.readouterr().out)
    check_measurements(records, 1, bench="extract", model="emma", parts=["vit", "heads", "dan"])
    assert records[-1]["feature_dim"] == 128 + 22 + 8 and records[-1]["ratio_to_eval"] > 0


def test_temporal_reports_windows_and_the_epoch_time_at_abaw4_size(bench, capsys):
    bench.main(["temporal", "--device", "cpu", "--precision", "fp32", "--in-dim", "8", "--window", "6",
                "--width", "8", "--heads", "2", "--layers", "1", "--batch-size", "2", "--steps", "1", "--warmup",
                "0", "--default-malloc"])
    records = json_lines(capsys.readouterr().out)
    check_measurements(records, 1, bench="temporal", window=6, stride=3)
    final = records[-1]
    assert final["img_per_s"] == pytest.approx(final["windows_per_s"] * 6, rel=1e-2)
    assert final["abaw4_epoch_s"] == pytest.approx(-(-142_333 // 3) / final["windows_per_s"], rel=1e-2)


def test_data_counts_normalised_batches_of_the_training_loader(bench, capsys, mtl_data):
    bench.main(["data", "--data-dir", str(mtl_data), "--batch-size", "4", "--workers", "0", "--batches", "2",
                "--warmup", "1", "--img-size", "32", "--device", "cpu", "--default-malloc"])
    records = json_lines(capsys.readouterr().out)
    check_measurements(records, 1, bench="data", batch_size=4, workers=0)
    assert records[-1]["augment"].startswith("TrainAugment(img_size=32") and records[-1]["batch_ms"] > 0


def test_eval_reports_inference_speed_on_random_frames(bench, capsys):
    bench.main(["eval", "--model", "cotex", *TINY_MODEL, "--frame-size", "16", "--batch-size", "3", "--steps", "2",
                "--warmup", "0"])
    records = json_lines(capsys.readouterr().out)
    check_measurements(records, 1, bench="eval", model="cotex", data="random")
    assert records[-1]["images"] == 6


def test_eval_predicts_a_validation_split(bench, capsys, mtl_data):
    bench.main(["eval", "--model", "emma", *TINY_MODEL, "--batch-size", "8", "--warmup", "0", "--workers", "0",
                "--data-dir", str(mtl_data)])
    records = json_lines(capsys.readouterr().out)
    check_measurements(records, 1, bench="eval", data=str(mtl_data))
    with open(os.path.join(mtl_data, "validation_set_annotations.txt")) as handle:
        assert records[-1]["images"] == len(handle.read().split()) - 1


def test_runs_as_a_script_and_its_last_line_is_the_final_result():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, os.path.join("benchmarks", "bench.py"), "train", "--model", "cotex",
                             *TINY_MODEL[:-1],
                             "--batch-size", "2", "--steps", "1", "--warmup", "1", "--threads", "1", "--no-flops"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    records = json_lines(result.stdout)
    assert records[-1]["final"] is True and records[-1]["img_per_s"] > 0
    assert records[-1]["malloc"] == "keep_freed" and records[-1]["threads"] == 1
    assert "train_gflop_per_img" not in records[-1]


def test_pairs_alternate_the_two_commands_and_summarise_the_ratio_within_each_pair(tmp_path):
    """Stand-in benchmarks print a JSON line with the next speed of their list and record that they ran."""
    log = tmp_path / "order"
    stub = tmp_path / "stub.py"
    stub.write_text("import json, sys\n"
                    "name, speeds = sys.argv[1], [float(s) for s in sys.argv[2].split(',')]\n"
                    f"log = open({str(log)!r}, 'a+')\n"
                    "log.seek(0)\n"
                    "done = sum(1 for line in log if line.strip() == name)\n"
                    "log.write(name + '\\n')\n"
                    "print(json.dumps({'run': 0, 'img_per_s': 0.1}))\n"
                    "print(json.dumps({'final': True, 'img_per_s': speeds[done]}))\n")
    baseline, candidate = [2.0, 1.0, 4.0], [3.0, 1.5, 4.4]
    command = [sys.executable, os.path.join("benchmarks", "pairs.py"), "--pairs", "3",
               "--baseline", f"{sys.executable} {stub} base {','.join(map(str, baseline))}",
               "--candidate", f"{sys.executable} {stub} cand {','.join(map(str, candidate))}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    *pairs, final = json_lines(result.stdout)
    assert log.read_text().split() == ["base", "cand", "cand", "base", "base", "cand"]  # the order swaps every pair
    expected = [c / b for b, c in zip(baseline, candidate)]
    assert [p["ratio"] for p in pairs] == pytest.approx(expected, abs=1e-3)
    assert [p["baseline_img_per_s"] for p in pairs] == baseline and pairs[1]["first"] == "candidate"
    assert final["geometric_mean"] == pytest.approx((1.5 * 1.5 * 1.1) ** (1 / 3), abs=1e-3)
    assert (final["min"], final["max"]) == (1.1, 1.5)

    log.unlink()
    failing = [*command[:-1], f"{sys.executable} -c \"import sys; sys.exit('no such checkout')\""]
    result = subprocess.run(failing, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "exited 1" in result.stderr and "no such checkout" in result.stderr
    assert "Traceback" not in result.stderr
