"""Honest selection: a fixed validation split, the best checkpoint and the learning rates chosen on it, never on test."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import checkpoint, cli, engine, evaluate, results, settings, sweep, train
from mnist_jax.data import VALIDATION_SIZE, split_validation
from mnist_jax.loop import fit
from mnist_jax.workdir import Layout, load_run, selection_of

from conftest import SMALL, make_config, make_hyper, one_line_error, run_cli
from conftest import member as member_settings


def test_the_validation_split_is_disjoint_fixed_and_of_the_asked_size():
    train, validation = split_validation(60000, 5000)
    assert len(validation) == 5000 and len(train) == 55000
    assert not set(train) & set(validation) and set(train) | set(validation) == set(range(60000))
    again_train, again_validation = split_validation(60000, 5000)
    np.testing.assert_array_equal(validation, again_validation)
    np.testing.assert_array_equal(train, again_train)
    assert len(np.unique(np.asarray(validation) // 6000)) == 10  # spread over the file, not its tail


@pytest.mark.parametrize("parse", [
    lambda: cli.parse(train.parser(), ["--seed", "3", "--train-limit", "2000"]),
    lambda: cli.parse(sweep.parser(), ["--seed-list", "11,12", "--train-limit", "2000"]),
])
def test_every_run_and_member_holds_out_the_same_images_whatever_its_seed(parse, mnist, capsys):
    _, splits, record = cli.load_data(parse())
    _, held_out = split_validation(len(mnist.y_train), VALIDATION_SIZE)
    np.testing.assert_array_equal(splits["val"][0], mnist.x_train[held_out])
    train_images = {image.tobytes() for image in splits["train"][0]}
    assert not train_images & {image.tobytes() for image in splits["val"][0]}
    assert len(splits["train"][1]) == 2000 and record["validation"]["images"] == VALIDATION_SIZE
    assert "using 2000 train, 5000 val, 10000 test" in capsys.readouterr().out


def test_train_records_the_validation_metrics_of_the_held_out_images(tmp_path, mnist):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *SMALL, "--epochs", "2", "--validation-size", "3000", "--workdir", workdir) == 0
    model = load_run(workdir)
    _, held_out = split_validation(len(mnist.y_train), 3000)
    expected = engine.evaluate(model.config, model.state.params, model.hyper, jnp.asarray(mnist.x_train[held_out]),
                               jnp.asarray(mnist.y_train[held_out]))
    row = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["val_accuracy"] == pytest.approx(float(expected["accuracy"]), abs=1e-6)
    assert json.loads((workdir / "summary.json").read_text())["data"]["validation_images"] == 3000
    assert json.loads((workdir / "run.json").read_text())["validation"]["images"] == 3000


class ScriptedTrainer:
    """A loop.Trainer that trains nothing and scores each epoch as scripted: {epoch: (val, test) accuracy}."""

    label, steps_per_epoch, batch_size, piece_member_steps, members_per_device, members = "fake", 2, 32, 1, 1, None

    def __init__(self, scripted):
        self.config = make_config("mlp", hidden=(8,), batch_size=32, epochs=3, train_size=64)
        self.member = member_settings("relu", 0, 1e-3)
        self.hyper, self.scripted = make_hyper("relu", 1e-3, 0), scripted

    def init(self):
        return engine.initial_state(self.config, self.hyper)

    def abstract(self):
        raise AssertionError("nothing to resume")

    def order(self, state):
        return engine.batch_order(self.config, state)

    def piece(self, state, order, length):
        return lambda state, order, first: (state, {"loss_sum": jnp.float32(length), "correct": jnp.int32(0)})

    def evaluate(self, state):
        metric = lambda accuracy: {"loss": 1.0 - accuracy, "accuracy": accuracy}  # noqa: E731
        val, test = self.scripted[int(state.epoch)]
        return {"val": metric(val), "test": metric(test)}

    def learning_rate(self, epoch):
        return engine.learning_rate(self.config, self.member["lr"], epoch)

    def describe(self, row):
        return str(row)

    def board_runs(self):
        return [(settings.member_folders([self.member])[0], settings.hparams(self.config, self.member))]


def test_the_best_checkpoint_follows_validation_not_test(tmp_path):
    scripted = {1: (0.70, 0.95), 2: (0.90, 0.60), 3: (0.80, 0.90)}  # epoch: (val, test) accuracy, disagreeing
    fit(Layout(tmp_path), ScriptedTrainer(scripted), epochs=3, meta={})
    manager = checkpoint.open_manager(tmp_path / "checkpoints")
    assert manager.best_step() == 2
    manager.close()
    assert selection_of(tmp_path, 2) == {"metric": "val_accuracy", "value": pytest.approx(0.90)}


def test_without_validation_the_best_checkpoint_is_the_latest(tmp_path):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *SMALL, "--epochs", "2", "--validation-size", "0", "--workdir", workdir) == 0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert all("val_accuracy" not in row for row in rows)
    assert load_run(workdir, "best").step == 2
    assert selection_of(workdir, 2) == {"metric": "epoch", "value": 2.0}


def test_evaluate_best_says_which_epoch_and_metric_chose_it(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *SMALL, "--epochs", "3", "--workdir", workdir) == 0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda row: (row["val_accuracy"], row["epoch"]))
    capsys.readouterr()
    assert run_cli(evaluate.main, "--workdir", workdir, "--checkpoint", "best") == 0
    out = capsys.readouterr().out
    assert f"checkpoint of epoch {best['epoch']} (best by val_accuracy {best['val_accuracy']:.4g})" in out
    report = json.loads((workdir / "evaluation" / "evaluation.json").read_text())
    assert report["epoch"] == best["epoch"]
    assert report["selected_by"] == {"checkpoint": "best", "metric": "val_accuracy",
                                     "value": pytest.approx(best["val_accuracy"])}


def member(activation, lr, seed, val, test=0.9, diverged=False):
    return {"activation": activation, "lr": lr, "seed": seed, "weight_decay": 0.2, "b1": 0.9, "label_smoothing": 0.0,
            "val_accuracy": val, "test_accuracy": test,
            "train_loss": 0.1, "diverged": diverged, "stalled": False, "epoch_to_98": None, "epoch_to_99": None,
            "epochs_trained": 12}


def test_selection_takes_each_activations_lr_of_best_mean_validation_accuracy():
    members = [member("relu", 0.001, s, v) for s, v in enumerate([0.95, 0.97])] + \
              [member("relu", 0.01, s, v, test=0.99) for s, v in enumerate([0.96, 0.95])] + \
              [member("elu", 0.001, s, v) for s, v in enumerate([0.90, 0.92])] + \
              [member("elu", 0.01, s, v, test=0.5) for s, v in enumerate([0.93, 0.94])]
    selection = results.select(results.summarize(members))
    assert [(s["activation"], s["lr"]) for s in selection] == [("relu", 0.001), ("elu", 0.01)]
    assert selection[0]["mean_val_accuracy"] == pytest.approx(0.96)
    assert selection[1]["mean_test_accuracy"] == pytest.approx(0.5)  # reported, never chosen on


def test_a_tie_in_validation_accuracy_goes_to_the_smaller_learning_rate():
    members = [member("relu", lr, s, 0.9) for lr in (0.03, 0.003, 0.3) for s in range(2)]
    assert results.select(results.summarize(members))[0]["lr"] == 0.003


def test_a_diverged_member_counts_with_the_accuracy_of_its_frozen_parameters():
    members = [member("relu", 0.001, 0, 0.90), member("relu", 0.001, 1, 0.90),
               member("relu", 0.1, 0, 0.99), member("relu", 0.1, 1, 0.10, diverged=True)]
    assert results.select(results.summarize(members))[0]["lr"] == 0.001  # mean 0.545 at lr 0.1


def test_a_member_that_ends_near_chance_without_diverging_is_named_stalled():
    def final(seed, val, diverged=False):
        return {"activation": "relu", "seed": seed, "lr": 0.1, "weight_decay": 0.2, "b1": 0.9, "label_smoothing": 0.0,
                "val_accuracy": val, "test_accuracy": val,
                "train_loss": None if diverged else 2.3, "diverged": diverged}

    rows = [{"epoch": 1, "members": [final(0, 0.40), final(1, 0.90), final(2, 0.40)]},
            {"epoch": 2, "members": [final(0, 0.098), final(1, 0.97), final(2, 0.10, diverged=True)]}]
    members = results.member_results(rows)
    assert [m["stalled"] for m in members] == [True, False, False]  # the blown-up one is named as diverged
    summary = results.summarize(members)
    selection = results.select(summary)
    assert (summary[0]["n_stalled"], selection[0]["n_stalled"]) == (1, 1)
    text = results.markdown(summary, selection, results.comparisons(members, selection), members)
    assert "(1 diverged, 1 stalled)" in text and "Stalled (" in text and "relu seed 0 lr 0.1" in text


def test_without_validation_nothing_is_selected_and_comparisons_are_per_lr():
    members = [{k: v for k, v in member(a, lr, s, 0.9).items() if k != "val_accuracy"}
               for a in ("relu", "elu") for lr in (0.001, 0.01) for s in range(3)]
    assert results.select(results.summarize(members)) == []
    pairs = results.comparisons(members, [])
    assert [(p["lr_a"], p["lr_b"], p["n"]) for p in pairs] == [(0.001, 0.001, 3), (0.01, 0.01, 3)]


def test_a_sweep_writes_the_selection_its_members_validation_numbers_imply(tmp_path):
    workdir = tmp_path / "sweep"
    assert run_cli(sweep.main, *SMALL, "--activations", "elu,relu", "--seeds", "2", "--lrs", "0.0003,0.003,0.3",
                   "--epochs", "2", "--validation-size", "3000", "--workdir", workdir) == 0
    report = json.loads((workdir / "results.json").read_text())
    for chosen in report["selection"]:
        means = {}
        for m in report["members"]:
            if m["activation"] == chosen["activation"]:
                means.setdefault(m["lr"], []).append(m["val_accuracy"])
        best = max(means, key=lambda lr: (np.mean(means[lr]), -lr))
        assert chosen["lr"] == best
        assert chosen["mean_val_accuracy"] == pytest.approx(np.mean(means[best]))
    assert [s["activation"] for s in report["selection"]] == ["elu", "relu"]
    assert {(p["a"], p["lr_a"], p["b"], p["lr_b"]) for p in report["paired_differences"]} == \
        {("elu", report["selection"][0]["lr"], "relu", report["selection"][1]["lr"])}
    assert "**" in (workdir / "results.md").read_text()


@pytest.mark.parametrize("argv, fragments", [
    (["--validation-size", "-1"], ["--validation-size", "non-negative"]),
    (["--validation-size", "60000"], ["--validation-size 60000", "training images"]),
    (["--validation-size", "59950"], ["50 training images remain", "batch of 128"]),
    (["--optimizer", "lbfgs"], ["--optimizer", "lbfgs"]),
    (["--schedule", "linear"], ["--schedule", "linear"]),
])
def test_bad_split_and_recipe_values_get_one_line_errors(argv, fragments, tmp_path, capsys):
    assert run_cli(train.main, *argv, "--workdir", tmp_path / "w") == 2
    one_line_error(capsys, *fragments)


def test_a_workdir_from_before_validation_splits_is_refused_with_what_to_do(tmp_path, capsys):
    workdir = tmp_path / "old"
    assert run_cli(train.main, *SMALL, "--epochs", "1", "--workdir", workdir) == 0
    record = json.loads((workdir / "run.json").read_text())
    del record["format"], record["validation"]
    (workdir / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    for main, argv in ((train.main, [*SMALL, "--epochs", "1"]), (evaluate.main, [])):
        assert run_cli(main, *argv, "--workdir", workdir) == 2
        one_line_error(capsys, "before validation splits", "--fresh")
    assert run_cli(train.main, *SMALL, "--epochs", "1", "--workdir", workdir, "--fresh") == 0


def test_sgd_with_a_constant_schedule_learns_and_is_recorded(tmp_path):
    workdir = tmp_path / "sgd"
    assert run_cli(train.main, *SMALL, "--epochs", "2", "--optimizer", "sgd", "--schedule", "constant", "--lr", "0.05",
                   "--workdir", workdir) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["hyperparameters"] == {
        "learning_rate": 0.05, "optimizer": "sgd", "schedule": "constant", "weight_decay": 0.0, "b1": 0.9,
        "label_smoothing": 0.0, "batch_size": 64, "epochs": 2, "hidden": [32], "dtype": "float32"}
    assert summary["val_accuracy"] > 0.7
    assert json.loads((workdir / "run.json").read_text())["config"]["optimizer"] == "sgd"


def test_a_constant_schedule_keeps_the_peak_learning_rate_and_warmup_cosine_does_not():
    def multipliers(schedule):  # warmup of 8 steps, 16 in all
        return [float(engine.SCHEDULES[schedule](8, 16)(step)) for step in (0, 8, 15)]

    assert multipliers("constant") == [1.0, 1.0, 1.0]
    first, peak, last = multipliers("warmup-cosine")
    assert first == 0.0 and peak == pytest.approx(1.0) and last < 0.05


def test_each_optimizer_has_its_own_default_weight_decay_and_b1_and_a_given_one_wins():
    assert member_settings(optimizer="adamw")["weight_decay"] == engine.OPTIMIZERS["adamw"].weight_decay == 0.2
    assert member_settings(optimizer="sgd")["weight_decay"] == engine.OPTIMIZERS["sgd"].weight_decay == 0.0
    assert member_settings(optimizer="sgd", weight_decay=1e-4)["weight_decay"] == 1e-4
    assert member_settings(optimizer="adamw", weight_decay=0.0)["weight_decay"] == 0.0  # a given zero is no default
    assert member_settings(optimizer="sgd")["b1"] == engine.OPTIMIZERS["sgd"].b1 == 0.9
    assert member_settings(optimizer="adamw", b1=0.5)["b1"] == 0.5


def test_convergence_is_compared_at_the_selected_lrs_over_the_seeds_where_both_reached_the_threshold():
    members = []
    for seed, (elu, relu) in enumerate([(3, 5), (4, 6), (3, None), (1, 4)]):
        members += [{**member("elu", 0.01, seed, 0.99), "epoch_to_98": elu},
                    {**member("relu", 0.01, seed, 0.99), "epoch_to_98": relu}]
    pairs = results.comparisons(members, results.select(results.summarize(members)))
    (sooner,) = [p for p in pairs if p["metric"] == "epoch_to_98"]
    assert (sooner["n"], sooner["mean_difference"]) == (3, pytest.approx(-7 / 3))  # seed 2: relu never reached 98%
    assert results.markdown(results.summarize(members), results.select(results.summarize(members)), pairs,
                            members).count("elu sooner") == 1
