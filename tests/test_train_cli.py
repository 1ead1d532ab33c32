"""`python -m mnist_jax.train` as a user runs it: outputs, resume, and one clear line for every bad input."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mnist_jax import train
from mnist_jax.data import bundled_dir, read_idx, write_idx
from mnist_jax.workdir import load_run

from conftest import SMALL, kill_after_first_checkpoint_then_resume, one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_main_job_writes_metrics_summary_and_checkpoints(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *SMALL, "--epochs", "2", "--workdir", workdir) == 0
    out = capsys.readouterr().out
    assert "data: mnist from bundled" in out and "final test accuracy" in out
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        assert set(row) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
                            "test_accuracy", "learning_rate", "diverged", "epoch_seconds", "images_per_second"}
        assert row["epoch_seconds"] > 0 and row["images_per_second"] > 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["model"] == "mlp" and summary["activation"] == "relu" and summary["seed"] == 0
    assert summary["test_accuracy"] == rows[-1]["test_accuracy"] > 0.5
    assert summary["val_accuracy"] == rows[-1]["val_accuracy"] > 0.5
    assert summary["data"]["source"] == "bundled" and summary["backend"] == jax.default_backend()
    assert (summary["data"]["train_images"], summary["data"]["validation_images"]) == (1024, 5000)
    assert summary["hyperparameters"]["optimizer"] == "adamw" and summary["hyperparameters"]["schedule"] == \
        "warmup-cosine"
    assert summary["versions"]["jax"] == jax.__version__
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [1, 2]
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_finished_run_started_again_says_so(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *SMALL, "--epochs", "1", "--workdir", workdir) == 0
    first = json.loads((workdir / "summary.json").read_text())["test_accuracy"]
    capsys.readouterr()
    assert run_cli(train.main, *SMALL, "--epochs", "1", "--workdir", workdir) == 0
    out = capsys.readouterr().out
    assert "already holds a finished run" in out and f"{first:.2%}" in out


def test_a_workdir_of_another_configuration_is_refused_and_fresh_starts_over(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *SMALL, "--epochs", "1", "--workdir", workdir) == 0
    capsys.readouterr()
    assert run_cli(train.main, *SMALL, "--epochs", "1", "--activation", "elu", "--workdir", workdir) == 2
    one_line_error(capsys, "activation was relu, now elu", "--fresh")
    assert (workdir / "checkpoints" / "1").is_dir()  # nothing lost
    assert run_cli(train.main, *SMALL, "--epochs", "1", "--activation", "elu", "--workdir", workdir, "--fresh") == 0
    assert json.loads((workdir / "summary.json").read_text())["activation"] == "elu"


def train_command(workdir, epochs=4):
    return [sys.executable, "-m", "mnist_jax.train", *SMALL, "--train-limit", "16384", "--epochs", str(epochs),
            "--workdir", str(workdir)]


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(train_command(tmp_path / "straight"), check=True, env=env, capture_output=True)
    kill_after_first_checkpoint_then_resume(train_command(tmp_path / "killed"), env, tmp_path / "killed",
                                            "summary.json")
    straight, killed_state = load_run(tmp_path / "straight").state, load_run(tmp_path / "killed").state
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(killed_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]


@pytest.mark.parametrize("argv, fragments", [
    (["--model", "resnet"], ["--model", "resnet"]),
    (["--activation", "tanh"], ["--activation", "tanh"]),
    (["--epochs", "0"], ["--epochs", "positive"]),
    (["--batch-size", "-3"], ["--batch-size", "positive"]),
    (["--lr", "nan"], ["--lr", "positive finite"]),
    (["--lr", "1e40"], ["--lr", "positive finite", "float32"]),  # finite in Python, infinite as a float32
    (["--lr", "1e-50"], ["--lr", "positive finite", "float32"]),  # zero as a float32
    (["--weight-decay", "1e39"], ["--weight-decay", "non-negative finite", "float32"]),
    (["--hidden", "256,x"], ["--hidden"]),
])
def test_bad_arguments_get_one_line_and_exit_2(argv, fragments, capsys):
    assert run_cli(train.main, *argv) == 2
    one_line_error(capsys, *fragments)


def test_a_missing_data_dir_is_named(tmp_path, capsys):
    assert run_cli(train.main, "--data-source", "idx", "--data-dir", tmp_path / "nowhere",
                   "--workdir", tmp_path / "w") == 2
    one_line_error(capsys, "nowhere", "does not exist")


def test_a_truncated_idx_file_is_named(tmp_path, capsys):
    for path in bundled_dir().glob("*-ubyte.gz"):
        write_idx(tmp_path / path.name.removesuffix(".gz"), read_idx(path)[:300])
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    assert run_cli(train.main, "--data-source", "idx", "--data-dir", tmp_path, "--workdir", tmp_path / "w") == 2
    one_line_error(capsys, str(images), "truncated")


def test_tfds_without_data_or_tensorflow_fails_fast(tmp_path, capsys):
    started = time.time()
    code = run_cli(train.main, "--data-source", "tfds", "--data-dir", tmp_path, "--workdir", tmp_path / "w")
    assert code == 2 and time.time() - started < 20
    one_line_error(capsys, "tfds", "bundled")


def test_a_corrupted_checkpoint_is_named_and_kept(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *SMALL, "--epochs", "2", "--workdir", workdir) == 0
    for path in (workdir / "checkpoints" / "2" / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"\0" * 5)
    capsys.readouterr()
    assert run_cli(train.main, *SMALL, "--epochs", "2", "--workdir", workdir) == 2
    one_line_error(capsys, "checkpoint step 2", "corrupted")
    assert (workdir / "checkpoints" / "1").is_dir() and (workdir / "checkpoints" / "2").is_dir()


def test_help_documents_every_flag():
    result = subprocess.run([sys.executable, "-m", "mnist_jax.train", "--help"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    for flag in ["--model", "--activation", "--epochs", "--batch-size", "--lr", "--seed", "--workdir", "--fresh",
                 "--data-source", "--data-dir", "--dataset", "--validation-size", "--optimizer", "--schedule"]:
        assert flag in result.stdout
