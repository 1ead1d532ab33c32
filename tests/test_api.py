"""The Python API: train.run, sweep.run and workdir.load_model do what the command lines do."""

import json

import chex
import jax
import numpy as np
import pytest

from mnist_jax import engine, sweep, train, workdir
from mnist_jax.errors import UserError

from conftest import SMALL, run_cli

SETTINGS = {"model": "mlp", "hidden": (32,), "batch_size": 64, "train_limit": 1024, "test_limit": 256, "epochs": 2}


def rows(path):
    return [{k: v for k, v in json.loads(line).items() if k not in ("epoch_seconds", "images_per_second")}
            for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "run"
    return path, train.run(workdir=path, **SETTINGS)


def test_train_run_returns_the_summary_and_trains_as_the_command_line_does(api_run, tmp_path):
    path, summary = api_run
    assert summary == json.loads((path / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["test_accuracy"] > 0.5
    argv = [*SMALL, "--epochs", "2", "--workdir", tmp_path / "cli"]
    assert run_cli(train.main, *argv) == 0
    assert rows(path) == rows(tmp_path / "cli")
    chex.assert_trees_all_equal(workdir.load_model(path, "latest").state,
                                workdir.load_model(tmp_path / "cli", "latest").state)


def test_train_run_of_a_finished_workdir_trains_nothing_and_returns_its_summary(api_run):
    path, summary = api_run
    before = (path / "metrics.jsonl").read_text()
    assert train.run(workdir=path, **SETTINGS) == summary
    assert (path / "metrics.jsonl").read_text() == before


def test_load_model_predicts_the_logits_the_engine_computes(api_run, small_mnist):
    path, _ = api_run
    model = workdir.load_model(path)  # the best checkpoint by validation accuracy
    images = small_mnist[2][:50]
    logits = model.predict(images)
    expected = engine.predict_logits(model.config, model.state.params, model.hyper, jax.numpy.asarray(images))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert logits.shape == (50, 10) and model.step in (1, 2)
    with pytest.raises(UserError, match="uint8"):
        model.predict(images.astype(np.float32))


def test_sweep_run_returns_the_results_and_its_members_load_as_models(tmp_path):
    results = sweep.run(workdir=tmp_path / "s", **{**SETTINGS, "epochs": 1}, activations=["relu", "elu"], seeds=1,
                        lrs=[0.001, 0.003])
    assert results == json.loads((tmp_path / "s" / "results.json").read_text())
    assert [(m["activation"], m["lr"]) for m in results["members"]] == \
        [("relu", 0.001), ("relu", 0.003), ("elu", 0.001), ("elu", 0.003)]
    assert {s["activation"] for s in results["selection"]} == {"relu", "elu"}
    model = workdir.load_model(tmp_path / "s", member="elu,0,0.003")
    assert model.member == {"activation": "elu", "seed": 0, "lr": 0.003, "weight_decay": 0.2, "b1": 0.9,
                            "label_smoothing": 0.0}
    with pytest.raises(UserError, match="is a sweep"):
        workdir.load_model(tmp_path / "s")
