"""Every device and every host: data-parallel train, multi-process sweeps, the two convolution forms, sweep strategies.

Several devices are simulated on the CPU (`--xla_force_host_platform_device_count`) and several hosts are local
processes joined by JAX's distributed runtime over gloo, so each test runs in subprocesses.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax.numpy as jnp
import pytest

from mnist_jax import evaluate, population, predict, settings, train
from mnist_jax.workdir import load_member

from conftest import SMALL, make_config, member, population_epoch, run_cli

ROOT = Path(__file__).resolve().parents[1]
# Twice the images of SMALL (the later flag wins), so that accuracies compare to within 2 of 512 test images.
SCALE = [*SMALL, "--train-limit", "2048", "--test-limit", "512", "--validation-size", "1000"]
SWEEP = [*SCALE, "--activations", "elu,relu,leaky_relu", "--seeds", "1", "--lrs", "0.002", "--epochs", "3"]


def command(module, *argv):
    return [sys.executable, "-m", f"mnist_jax.{module}", *map(str, argv)]


def environment(devices=1):
    return {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def run_ok(argv, devices=1):
    result = subprocess.run(argv, env=environment(devices), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lenet_one_and_four(tmp_path_factory):
    """The same LeNet run on 1 device and data-parallel on 4, short enough (32 steps) that the different summation
    order stays at rounding level: over 128 steps AdamW amplified it to 1.4% in the validation loss (AVX2 CPU)."""
    root = tmp_path_factory.mktemp("devices")
    argv = ["--model", "lenet", "--epochs", "2", "--train-limit", "1024", "--test-limit", "1000",
            "--validation-size", "1000"]
    for devices in (1, 4):
        run_ok(command("train", *argv, "--workdir", root / f"d{devices}"), devices)
    return root, argv


def test_train_on_four_devices_lands_with_the_one_device_result(lenet_one_and_four):
    root, _ = lenet_one_and_four
    one, four = rows(root / "d1"), rows(root / "d4")
    for a, b in zip(one, four):
        for key in ("train_loss", "val_loss", "test_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-3)  # summation order across devices only
        assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 2 / 1000
    assert json.loads((root / "d4" / "summary.json").read_text())["devices_used"] == 4
    assert json.loads((root / "d1" / "summary.json").read_text())["devices_used"] == 1


def test_a_four_device_checkpoint_restores_on_one_for_evaluate_and_predict(lenet_one_and_four, tmp_path, mnist,
                                                                          capsys):
    workdir = lenet_one_and_four[0] / "d4"
    assert run_cli(evaluate.main, "--workdir", workdir, "--out", tmp_path / "e") == 0
    evaluation = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    recorded = next(row for row in rows(workdir) if row["epoch"] == evaluation["epoch"])["test_accuracy"]
    assert evaluation["test_accuracy"] == pytest.approx(recorded, abs=1e-6)
    from PIL import Image
    Image.fromarray(mnist.x_test[0]).save(tmp_path / "seven.png")
    capsys.readouterr()
    assert run_cli(predict.main, "--workdir", workdir, tmp_path / "seven.png") == 0
    assert capsys.readouterr().out.split("\t")[1] == "7"


def test_a_one_device_checkpoint_resumes_on_four(lenet_one_and_four, tmp_path):
    root, argv = lenet_one_and_four
    workdir = tmp_path / "moved"
    shutil.copytree(root / "d1", workdir)
    shutil.rmtree(workdir / "checkpoints" / "2")  # as if stopped after epoch 1
    result = run_ok(command("train", *argv, "--workdir", workdir), devices=4)
    assert "resuming" in result.stdout
    assert rows(workdir)[-1]["test_loss"] == pytest.approx(rows(root / "d1")[-1]["test_loss"], rel=1e-3)


def test_a_batch_that_does_not_split_over_the_devices_is_one_line(tmp_path):
    result = subprocess.run(command("train", *SCALE, "--batch-size", "66", "--workdir", tmp_path / "w"),
                            env=environment(4), capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--batch-size 66 does not split over 4 devices" in result.stderr.strip().splitlines()[-1]


def launch_processes(workdir, n=2, devices=2, extra=()):
    """n processes of one sweep; their output goes to files (a full pipe would stall a process, and with it all)."""
    port = free_port()
    processes = []
    for i in range(n):
        out, err = (open(f"{workdir}.{i}.{name}", "w+") for name in ("out", "err"))
        processes.append(subprocess.Popen(
            command("sweep", *SWEEP, *extra, "--workdir", workdir, "--coordinator-address", f"127.0.0.1:{port}",
                    "--num-processes", n, "--process-id", i, "--distributed-timeout", 60),
            env=environment(devices), stdout=out, stderr=err, text=True))
        processes[-1].files = (out, err)
    return processes


def wait_all(processes, timeout=240):
    """(stdout, stderr) of each process, once all have ended well."""
    outputs = []
    for p in processes:
        p.wait(timeout=timeout)
        for f in p.files:
            f.seek(0)
        outputs.append(tuple(f.read() for f in p.files))
        assert p.returncode == 0, outputs[-1][1][-3000:]
    return outputs


@pytest.fixture(scope="module")
def one_process_sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep1") / "run"
    run_ok(command("sweep", *SWEEP, "--workdir", workdir))
    return workdir


def assert_same_members(a_dir, b_dir):
    a = json.loads((a_dir / "results.json").read_text())["members"]
    b = json.loads((b_dir / "results.json").read_text())["members"]
    assert [(m["activation"], m["seed"]) for m in a] == [(m["activation"], m["seed"]) for m in b]
    for x, y in zip(a, b):
        assert abs(x["test_accuracy"] - y["test_accuracy"]) <= 2 / 512
        assert y["val_loss"] == pytest.approx(x["val_loss"], rel=1e-3)


def test_a_sweep_over_two_processes_gives_the_one_process_members(one_process_sweep, tmp_path):
    workdir = tmp_path / "two"
    (out0, err0), _ = wait_all(launch_processes(workdir))
    assert "on 4 cpu device(s) in 2 process(es)" in out0
    assert "[Gloo]" not in out0 and "[Gloo]" in err0  # runtime chatter stays off the record on stdout
    assert_same_members(one_process_sweep, workdir)
    environment_record = json.loads((workdir / "results.json").read_text())["environment"]
    assert (environment_record["process_count"], environment_record["device_count"]) == (2, 4)
    assert len(rows(workdir)) == 3  # one record, written once


def test_a_two_process_sweep_killed_after_its_first_checkpoint_resumes_to_the_bit(tmp_path):
    workdir = tmp_path / "killed"
    slow = ("--train-limit", "16384", "--epochs", "2")  # an epoch long enough to be killed in the middle of
    processes = launch_processes(workdir, extra=slow)
    deadline = time.time() + 180
    while not (workdir / "checkpoints" / "1").is_dir():
        assert time.time() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.01)
    for p in processes:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not (workdir / "results.json").exists()
    (out0, _), _ = wait_all(launch_processes(workdir, extra=slow))
    assert "resuming" in out0
    straight = tmp_path / "straight"
    wait_all(launch_processes(straight, extra=slow))
    for spec in ("elu,0", "relu,0", "leaky_relu,0"):
        chex.assert_trees_all_equal(load_member(straight, spec)[0].state, load_member(workdir, spec)[0].state)


@pytest.mark.parametrize("case, fragments", [
    ("bad address", ["--coordinator-address 'nowhere'", "HOST:PORT"]),
    ("nobody listening", ["no process 0 answered", "within 3 s"]),
    ("flags missing", ["--process-id missing", "go together"]),
])
def test_a_bad_coordinator_is_one_line_within_seconds(case, fragments, tmp_path):
    port = free_port()
    flags = {"bad address": ["--coordinator-address", "nowhere", "--num-processes", "2", "--process-id", "0"],
             "nobody listening": ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                                  "--process-id", "1"],
             "flags missing": ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2"]}[case]
    started = time.time()
    result = subprocess.run(command("sweep", *SWEEP, "--workdir", tmp_path / "w", *flags, "--distributed-timeout",
                                    "3"), env=environment(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and time.time() - started < 20
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err


def test_mismatched_process_counts_are_one_line_on_both_within_seconds(tmp_path):
    port = free_port()
    started = time.time()
    processes = [subprocess.Popen(command("sweep", *SWEEP, "--workdir", tmp_path / "w", "--coordinator-address",
                                          f"127.0.0.1:{port}", "--num-processes", n, "--process-id", i,
                                          "--distributed-timeout", 10),
                                  env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i, n in ((0, 3), (1, 2))]
    for p in processes:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 2 and "--num-processes 2, process 0 with 3" in err.strip(), err
        assert len(err.strip().splitlines()) == 1
    assert time.time() - started < 30


@pytest.mark.parametrize("chunk", [1, 2])
def test_members_mapped_in_chunks_train_as_the_full_vmap_does(small_mnist, chunk):
    x_train, y_train = jnp.asarray(small_mnist[0]), jnp.asarray(small_mnist[1])
    config = make_config("lenet", batch_size=64, epochs=1, train_size=len(y_train))
    members = [member("elu", 0, 1e-3), member("relu", 1, 3e-3), member("leaky_relu", 2, 2e-3)]
    hyper = settings.hyper(members)
    state = population.initial_states(config, hyper, shared_order=False)
    chunked = population_epoch(config, shared_order=False, vmap_chunk=chunk)(state, hyper, x_train, y_train)
    vmapped = population_epoch(config, shared_order=False, vmap_chunk=None)(state, hyper, x_train, y_train)
    chex.assert_trees_all_close(chunked, vmapped, atol=1e-4, rtol=1e-4)


def test_a_toeplitz_checkpoint_evaluates_with_the_standard_convolution_to_the_same_accuracy(tmp_path, capsys):
    workdir = tmp_path / "lenet"
    argv = ["--model", "lenet", "--epochs", "1", "--train-limit", "2048", "--test-limit", "1000",
            "--validation-size", "1000", "--workdir", workdir]
    assert run_cli(train.main, *argv, "--conv", "toeplitz") == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["conv"] == "toeplitz"
    reports = {}
    for conv in ("lax", "toeplitz"):
        assert run_cli(evaluate.main, "--workdir", workdir, "--conv", conv, "--out", tmp_path / conv) == 0
        reports[conv] = json.loads((tmp_path / conv / "evaluation.json").read_text())
    assert reports["lax"]["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-3)
    assert reports["lax"]["test_loss"] == pytest.approx(reports["toeplitz"]["test_loss"], rel=1e-4)
    capsys.readouterr()
    assert run_cli(train.main, *argv, "--conv", "lax") == 0
    assert "already holds a finished run" in capsys.readouterr().out  # the form is no part of the run's identity


def test_a_coordinator_port_already_taken_is_one_line_for_process_0(tmp_path):
    with socket.create_server(("", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(command("sweep", *SWEEP, "--workdir", tmp_path / "w", "--coordinator-address",
                                        f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "0"),
                                env=environment(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot listen on port {port}" in result.stderr.strip().splitlines()[-1]
