"""The benchmark runs end to end on tiny settings and writes every figure the README quotes."""

import json
import re
import shlex
from pathlib import Path

import numpy as np

from mnist_jax import bench

from conftest import one_line_error, run_cli


def test_benchmark_smoke_run_writes_its_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert run_cli(bench.main, "--train-limit", "512", "--epochs", "1", "--seeds", "1", "--time-to-99-seeds", "2",
                   "--json", out, "--torch-python", "/nonexistent/python") == 0
    results = json.loads(out.read_text())
    for model in ("lenet", "mlp"):
        assert results[model]["epoch_seconds"] > 0 and results[model]["images_per_second"] > 0
    sweep = results["lenet_sweep"]
    assert sweep["members"] == 3 and sweep["sequential_epoch_seconds"] > 0
    assert {s["vmap_chunk"] for s in sweep["strategies"].values()} == {None, 1, 3, 5}
    assert all(s["epoch_seconds"] > 0 for s in sweep["strategies"].values())
    assert results["lenet"]["lax_conv_epoch_seconds"] > 0
    assert results["lenet_pieces"]["pieces"] == 4 and results["lenet_pieces"]["pieces_epoch_seconds"] > 0
    for model, members in bench.LARGE_SWEEPS.items():
        assert results["sweep_pieces"][model]["members"] == members
        assert results["sweep_pieces"][model]["piece_seconds"] > 0
    assert results["environment"]["cpu"] and "avx512f" in results["environment"]  # the CPU with its vector width
    for key in ("cold_seconds", "warm_seconds", "epoch_cold_seconds", "epoch_warm_seconds"):
        assert results["compile_lenet"][key] > 0
    assert results["matmul_peak_gflops"] > 0
    assert results["torch"] is None  # that interpreter does not exist: the reference is skipped, not fatal
    fast = results["time_to_99"]["mnist_jax"]
    assert fast["argv"] == bench.TIME_TO_99_ARGV and len(fast["runs"]) == 2 and "tuomaso" not in results["time_to_99"]
    assert [r["seed"] for r in fast["runs"]] == [0, 1] and all(r["train_seconds"] > 0 for r in fast["runs"])
    assert fast["cold_compile_seconds"] > 0 and fast["std_test_accuracy"] >= 0
    for model, layers in (("lenet", {"conv1", "conv2", "dense", "pooling"}), ("mlp", {"dense"})):
        profile = results["profile"][model]
        assert layers | {"optimizer", "activations"} <= set(profile["parts_us"]) and profile["step_us"] > 0
    parts = results["command_parts"]["parts_seconds"]
    assert set(parts) == {"imports", *bench.COMMAND_PARTS, "other"}
    assert all(seconds > 0 for part, seconds in parts.items() if part != "other")  # each part's functions found
    out = capsys.readouterr().out
    assert f"on the CPU {results['environment']['cpu']!r} (avx512f: " in out  # each ratio printed with its CPU
    assert "| lenet epoch seconds" in out and "| conv1 |" in out and "| curves.png |" in out


def test_a_json_that_cannot_be_written_or_a_single_time_to_99_run_is_one_line_before_any_measuring(tmp_path, capsys):
    assert run_cli(bench.main, "--json", tmp_path / "missing" / "bench.json") == 2
    one_line_error(capsys, "missing", "No such file or directory")
    # one run has no standard deviation (it was NaN, written as such into the JSON)
    assert run_cli(bench.main, "--time-to-99-seeds", "1", "--json", tmp_path / "bench.json") == 2
    one_line_error(capsys, "--time-to-99-seeds", "at least 2")
    assert not (tmp_path / "bench.json").exists()


def test_the_documented_fast_recipe_is_the_one_the_benchmark_times():
    # users copy the command from docs/performance.md; the benchmark's time-to-99% entry runs TIME_TO_99_ARGV
    text = (Path(__file__).resolve().parents[1] / "docs" / "performance.md").read_text()
    section = text.split("## Time to 99%", 1)[1]
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    assert shlex.split(command) == ["python", "-m", "mnist_jax.train", *bench.TIME_TO_99_ARGV]


def test_the_pytorch_reference_gets_its_images_saved_once_and_a_failure_is_one_note(tmp_path, capsys):
    calls = tmp_path / "calls"
    interpreter = tmp_path / "python"  # stands in for a Python with torch: records its arguments, then answers
    interpreter.write_text(f"""#!/bin/sh
echo "$@" >> {calls}
if [ "$2" != "--images" ] || [ ! -s "$3" ]; then echo "no images" >&2; exit 3; fi
case "$*" in *--first-seed\\ 1*) echo "RuntimeError: out of memory" >&2; exit 3;; esac
echo '{{"ok": true}}'
""")
    interpreter.chmod(0o755)
    images, labels = np.zeros((4, 28, 28), np.uint8), np.arange(4)
    with bench.torch_reference(str(interpreter), images, labels, (images, labels)) as run:
        assert run("--time-to-99", "1", "--first-seed", "0") == {"ok": True}
        assert run("--time-to-99", "1", "--first-seed", "1") is None
    first, second = (line.split() for line in calls.read_text().splitlines())
    assert first[1:9] == second[1:9]  # the same four saved arrays, each with its flag
    assert first[1:9:2] == ["--images", "--labels", "--test-images", "--test-labels"]
    assert capsys.readouterr().err.strip() == \
        "note: the PyTorch reference failed (exit status 3): RuntimeError: out of memory"
    with bench.torch_reference(str(tmp_path / "missing"), images, labels) as run:
        assert run("--epochs", "1") is None
    assert "cannot run" in capsys.readouterr().err
