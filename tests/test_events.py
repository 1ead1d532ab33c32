"""TensorBoard event files, read back with TensorBoard's own readers and checked against metrics.jsonl."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard import context
from tensorboard.backend.event_processing import (data_provider, event_accumulator, plugin_event_accumulator,
                                                  plugin_event_multiplexer)
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import backend_context, plugin_data_pb2

from mnist_jax import engine, sweep, train

from conftest import SMALL, make_config, run_cli

ROOT = Path(__file__).resolve().parents[1]

QUICK = [*SMALL, "--validation-size", "512"]  # fewer held-out images: less evaluation per epoch
TAGS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy", "val_loss": "val/loss",
        "val_accuracy": "val/accuracy", "test_loss": "test/loss", "test_accuracy": "test/accuracy",
        "learning_rate": "learning_rate", "epoch_seconds": "time/epoch_seconds",
        "images_per_second": "time/images_per_second"}


def rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def read_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard run as both of TensorBoard's readers see it; they must agree."""
    legacy = event_accumulator.EventAccumulator(str(run_dir))
    legacy.Reload()
    seen = {tag: [(s.step, s.value) for s in legacy.Scalars(tag)] for tag in legacy.Tags()["scalars"]}
    served = plugin_event_accumulator.EventAccumulator(str(run_dir))  # what `tensorboard` serves without its data server
    served.Reload()
    assert {tag: [(t.step, t.tensor_proto.float_val[0]) for t in served.Tensors(tag)] for tag in seen} == seen
    return seen


def hparams_of(run_dir) -> dict:
    reader = event_accumulator.EventAccumulator(str(run_dir))
    reader.Reload()
    content = reader.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
            for name, value in start.hparams.items()}


def assert_matches(scalars: dict, metric_rows: list[dict]):
    assert set(scalars) == set(TAGS.values())
    for column, tag in TAGS.items():
        assert [step for step, _ in scalars[tag]] == [row["epoch"] for row in metric_rows], tag
        assert [value for _, value in scalars[tag]] == pytest.approx([row[column] for row in metric_rows],
                                                                     rel=1e-6), tag


def test_a_train_run_writes_its_metrics_rows_as_tensorboard_scalars(tmp_path):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *QUICK, "--epochs", "2", "--lr", "0.003", "--seed", "5", "--workdir", workdir) == 0
    run_dir = workdir  # the run is the workdir itself: `tensorboard --logdir checkpoints/` names it by its folder
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 1 and not (workdir / "tb").exists()
    assert_matches(read_scalars(run_dir), rows(workdir))
    assert hparams_of(run_dir) == {"activation": "relu", "seed": "5", "lr": 0.003, "model": "mlp",
                                   "optimizer": "adamw", "schedule": "warmup-cosine", "weight_decay": 0.2, "b1": 0.9, "label_smoothing": 0.0,
                                   "batch_size": "64", "epochs": "2", "hidden": "32", "dtype": "float32"}


def test_a_command_line_ends_with_its_output_whole(tmp_path):
    """`python -m mnist_jax.train` ends without the interpreter's teardown (mnist_jax.cli): what it printed reaches a
    pipe, every row reaches the event file, and the exit status is the command's, for a run and for bad input."""
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "mnist_jax.train", *QUICK, "--epochs", "2"]
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": str(ROOT)}  # a pipe buffers
    done = subprocess.run([*command, "--workdir", str(workdir)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("final test accuracy")
    assert_matches(read_scalars(workdir), rows(workdir))
    refused = subprocess.run([*command, "--lr", "0.01", "--workdir", str(workdir)], capture_output=True, text=True,
                             env=env)  # another configuration in the same workdir: one line, status 2
    assert refused.returncode == 2 and refused.stderr.startswith("error: ") and len(refused.stderr.splitlines()) == 1


def test_each_sweep_member_is_a_tensorboard_run_with_its_hparams(tmp_path):
    workdir = tmp_path / "sweep"
    assert run_cli(sweep.main, *QUICK, "--activations", "elu,relu", "--seeds", "1", "--lrs", "0.001,0.01",
                   "--epochs", "2", "--workdir", workdir) == 0
    metric_rows = rows(workdir)
    names = sorted(p.name for p in workdir.iterdir() if list(p.glob("events.out.tfevents.*")))
    assert names == ["elu-seed0-lr0.001", "elu-seed0-lr0.01", "relu-seed0-lr0.001", "relu-seed0-lr0.01"]
    for i, member in enumerate(metric_rows[0]["members"]):
        run_dir = workdir / f"{member['activation']}-seed{member['seed']}-lr{member['lr']:g}"
        member_rows = [{**row["members"][i], "epoch": row["epoch"], "epoch_seconds": row["epoch_seconds"],
                        "images_per_second": row["images_per_second"]} for row in metric_rows]
        assert_matches(read_scalars(run_dir), member_rows)
        hparams = hparams_of(run_dir)
        assert (hparams["activation"], hparams["seed"], hparams["lr"]) == (member["activation"], "0", member["lr"])
        assert (hparams["model"], hparams["hidden"], hparams["epochs"]) == ("mlp", "32", "2")


def test_the_hparams_tab_compares_every_member_and_marks_what_differs(tmp_path):
    logdir = tmp_path / "checkpoints"
    assert run_cli(sweep.main, *QUICK, "--activations", "elu,relu", "--seeds", "2", "--lrs", "0.001", "--epochs", "1",
                   "--workdir", logdir / "sweep") == 0
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(logdir=str(logdir), multiplexer=mux,
                               data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)))
    hparams, request = backend_context.Context(tb), context.RequestContext()
    content = hparams.hparams_metadata(request, "")
    assert sorted(content) == ["sweep/elu-seed0-lr0.001", "sweep/elu-seed1-lr0.001", "sweep/relu-seed0-lr0.001",
                               "sweep/relu-seed1-lr0.001"]  # run names without a tb/ between
    experiment = hparams.experiment_from_metadata(request, "", True, content,
                                                  hparams.hparams_from_data_provider(request, "", None))
    differs = {info.name: info.differs for info in experiment.hparam_infos}
    assert differs["activation"] and differs["seed"] and not differs["lr"] and not differs["batch_size"]
    seeds = [value.string_value for info in experiment.hparam_infos if info.name == "seed"
             for value in info.domain_discrete.values]
    assert sorted(seeds) == ["0", "1"]  # whole numbers read as themselves, not 0.00


def test_a_resumed_run_continues_its_curves_without_duplicate_epochs(tmp_path):
    workdir = tmp_path / "run"
    argv = [*QUICK, "--epochs", "3", "--workdir", workdir]
    assert run_cli(train.main, *argv) == 0
    # The process died after writing epoch 3's events, before its checkpoint was complete: epoch 3 is trained again.
    shutil.rmtree(workdir / "checkpoints" / "3")
    assert run_cli(train.main, *argv) == 0
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 2  # one event file per launch
    assert_matches(read_scalars(workdir), rows(workdir))


def test_the_learning_rate_is_that_of_each_epochs_last_step():
    config = make_config("mlp", epochs=3, train_size=640, batch_size=64)  # 10 steps an epoch, warmup 1 epoch
    assert engine.learning_rate(config, 0.01, 1) == pytest.approx(0.01 * 9 / 10)
    assert engine.learning_rate(config, 0.01, 2) < 0.01
    assert engine.learning_rate(config, 0.01, 3) < 1e-4  # cosine decays to zero at the last step
    constant = make_config("mlp", epochs=3, train_size=640, batch_size=64, schedule="constant")
    assert [engine.learning_rate(constant, 0.01, epoch) for epoch in (1, 2, 3)] == [0.01] * 3
