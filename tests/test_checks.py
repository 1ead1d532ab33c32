"""Checks that refuse what cannot be trusted: IDX files that hold the wrong thing, an empty member list, paired
differences that claim too much, and sweep plots that say what was trained and which members diverged."""

import json

import numpy as np
import pytest

from mnist_jax import plots, results, sweep, train
from mnist_jax.data import SPLIT_FILES, load_idx_dir, write_idx
from mnist_jax.workdir import Layout

from conftest import SMALL, make_config, one_line_error, run_cli

# ------------------------------------------------------------------------------------------------ IDX checks


def idx_dir(directory, **replace):
    """A small valid IDX folder (300 train, 40 test images), with the arrays in `replace` written instead."""
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (300, 28, 28), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, 300, dtype=np.uint8),
              "test_images": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, 40, dtype=np.uint8), **replace}
    directory.mkdir()
    for key, array in arrays.items():
        write_idx(directory / SPLIT_FILES[key], array)
    return directory


def train_on(directory, tmp_path) -> int:
    return run_cli(train.main, *SMALL, "--train-limit", "256", "--validation-size", "0", "--epochs", "1",
                   "--data-source", "idx", "--data-dir", directory, "--workdir", tmp_path / "run")


def test_an_empty_test_split_is_refused_in_one_line_naming_the_file(tmp_path, capsys):
    directory = idx_dir(tmp_path / "idx", test_images=np.zeros((0, 28, 28), np.uint8),
                        test_labels=np.zeros(0, np.uint8))
    assert train_on(directory, tmp_path) == 2
    one_line_error(capsys, str(directory / SPLIT_FILES["test_images"]), "holds no images", "download it again")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("labels", [
    np.random.default_rng(1).integers(0, 10, 300).astype(np.float32) + 0.5,  # would be truncated to 0-9
    np.full(300, np.nan, np.float64),  # would train on garbage and end "DIVERGED"
], ids=["float", "nan"])
def test_labels_that_are_not_integers_are_refused_saying_what_the_file_must_hold(tmp_path, capsys, labels):
    directory = idx_dir(tmp_path / "idx", train_labels=labels)
    assert train_on(directory, tmp_path) == 2
    one_line_error(capsys, str(directory / SPLIT_FILES["train_labels"]), "not integers", "0-9",
                   "unsigned bytes (IDX type 0x08)", "download it again")


def test_integer_labels_of_a_wider_type_are_still_read(tmp_path):
    labels = np.random.default_rng(1).integers(0, 10, 300).astype(np.int32)  # what write_idx of a Dataset writes
    ds = load_idx_dir(idx_dir(tmp_path / "idx", train_labels=labels))
    np.testing.assert_array_equal(ds.y_train, labels)


@pytest.mark.parametrize("replace, file, fragments", [
    ({"test_images": np.zeros((40, 27, 27), np.uint8)}, "test_images", ["uint8 images of 28x28", "IDX type 0x08"]),
    ({"train_images": np.zeros((300, 28, 28), np.float32)}, "train_images", ["float32", "uint8 images of 28x28"]),
    ({"train_labels": np.full(300, 10, np.uint8)}, "train_labels", ["outside 0-9", "one label 0-9 per image"]),
    ({"test_labels": np.zeros(39, np.uint8)}, "test_labels", ["for 40 images", "one label 0-9 per image"]),
], ids=["27x27", "float-images", "label-10", "label-count"])
def test_a_split_file_holding_the_wrong_thing_says_what_it_must_hold_and_what_to_do(tmp_path, capsys, replace, file,
                                                                                   fragments):
    directory = idx_dir(tmp_path / "idx", **replace)
    assert train_on(directory, tmp_path) == 2
    one_line_error(capsys, str(directory / SPLIT_FILES[file]), *fragments, "check it is the right file",
                   "download it again")


# ------------------------------------------------------------------------------------------- empty member lists


@pytest.mark.parametrize("flag", ["--lrs=", "--activations=", "--seed-list=", "--lrs=,"])
def test_an_empty_member_list_is_refused_in_one_line(tmp_path, capsys, flag):
    assert run_cli(sweep.main, flag, *SMALL, "--epochs", "1", "--workdir", tmp_path / "sweep") == 2
    one_line_error(capsys, f"argument {flag.rstrip('=,')}", "empty list", "one or more comma-separated values")
    assert not (tmp_path / "sweep").exists()


# ------------------------------------------------------------------------------------------- paired differences


DEFAULTS = {"weight_decay": 0.2, "b1": 0.9, "label_smoothing": 0.0}  # what the scripted members share


def member(activation, seed, test, lr=0.01, val=None, diverged=False):
    return {"activation": activation, "lr": lr, "seed": seed, **DEFAULTS, "val_accuracy": test if val is None else val,
            "test_accuracy": test, "train_loss": 0.1, "diverged": diverged, "stalled": False, "epoch_to_98": None,
            "epoch_to_99": None, "epochs_trained": 2}


def pair(a_tests, b_tests) -> dict:
    """The paired difference of test accuracy, relu (a) - leaky_relu (b), seed by seed; accuracies as float32
    (as the engine reports them), so that equal differences come out equal only to float32 rounding."""
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    members = [member(a, seed, f32(t)) for seed, (ta, tb) in enumerate(zip(a_tests, b_tests))
               for a, t in (("relu", ta), ("leaky_relu", tb))]
    cell = {"lr": 0.01, **DEFAULTS}
    (p,) = results.paired_differences(members, {"relu": cell, "leaky_relu": cell})
    return p


def test_two_seeds_with_the_same_difference_are_too_few_to_tell_not_a_winner():
    p = pair([0.9800, 0.9700], [0.9807, 0.9707])  # the case: -0.070 points both times, zero spread
    assert p["n"] == 2 and p["ci95_low"] == pytest.approx(p["ci95_high"], abs=1e-6)  # the interval has no width
    assert p["verdict"] == "too few seeds to tell"


def test_two_seeds_whose_interval_excludes_zero_are_still_too_few_to_tell():
    p = pair([0.9800, 0.9700], [0.9807, 0.9708])
    assert p["ci95_high"] < 0  # the t interval alone would call leaky_relu better
    assert p["verdict"] == "too few seeds to tell"


def test_three_seeds_that_all_gave_the_same_difference_are_too_few_to_tell():
    assert pair([0.98, 0.97, 0.96], [0.99, 0.98, 0.97])["verdict"] == "too few seeds to tell"


def test_three_seeds_with_spread_and_an_interval_excluding_zero_name_the_better_activation():
    worse = pair([0.980, 0.970, 0.960], [0.990, 0.981, 0.969])
    assert worse["ci95_high"] < 0 and worse["verdict"] == "leaky_relu better"
    assert pair([0.990, 0.981, 0.969], [0.980, 0.970, 0.960])["verdict"] == "relu better"
    assert pair([0.98, 0.97, 0.96], [0.99, 0.96, 0.965])["verdict"] == "not distinguishable from seed noise"


def test_fewer_epochs_to_a_threshold_with_spread_over_three_seeds_is_sooner():
    members = [{**member(a, seed, 0.99), "epoch_to_98": epochs}
               for seed, pairs in enumerate([(3, 5), (4, 6), (2, 5)]) for a, epochs in zip(("elu", "relu"), pairs)]
    cell = {"lr": 0.01, **DEFAULTS}
    (p,) = results.paired_differences(members, {"elu": cell, "relu": cell}, "epoch_to_98")
    assert p["verdict"] == "elu sooner"


# ------------------------------------------------------------------------------------- results files and plots


def rows_of(finals: list[dict], epochs: int = 2) -> list[dict]:
    """Metrics rows of a sweep whose members end as `finals` (earlier epochs a little lower)."""
    return [{"epoch": e, "epoch_seconds": 1.0,
             "members": [{**m, "val_accuracy": m["val_accuracy"] - 0.01 * (epochs - e),
                          "diverged": m["diverged"] and e == epochs} for m in finals]}
            for e in range(1, epochs + 1)]


def zero_spread_finals(diverged: bool = False) -> list[dict]:
    """relu and leaky_relu at two lrs over 2 seeds; relu is 0.070 points behind on both seeds at lr 0.01."""
    finals = []
    for seed in range(2):
        finals += [member("relu", seed, 0.9800 - 0.01 * seed, lr=0.01, val=0.95),
                   member("leaky_relu", seed, 0.9807 - 0.01 * seed, lr=0.01, val=0.95),
                   member("relu", seed, 0.5, lr=1.0, val=0.3 + 0.1 * seed, diverged=diverged and seed == 1),
                   member("leaky_relu", seed, 0.6, lr=1.0, val=0.4)]
    return finals


def test_results_record_each_verdict_and_state_the_rule(tmp_path):
    layout = Layout(tmp_path)
    text = results.write_results(layout, rows_of(zero_spread_finals()), environment={}, title="mlp 32: adamw")
    report = json.loads(layout.results_json.read_text())
    assert {"members", "summary", "selection", "paired_differences", "epochs", "train_seconds",
            "environment"} <= set(report)
    (test_pair,) = [p for p in report["paired_differences"] if p["metric"] == "test_accuracy"]
    assert test_pair["verdict"] == "too few seeds to tell"
    assert "leaky_relu better" not in text and "too few seeds to tell" in text
    assert results.RULE in text and "at least 3 seeds" in results.RULE
    assert text == layout.results_md.read_text()


def test_sweep_plots_are_titled_with_the_model_and_recipe():
    title = results.recipe_title(make_config("lenet", optimizer="sgd", schedule="constant", epochs=1),
                                 [{"weight_decay": 0.0}])
    assert title.startswith("lenet: sgd, constant schedule, weight decay 0") and title.endswith("batch 128, 1 epoch")
    assert results.recipe_title(make_config("mlp", hidden=(256, 128), epochs=12), [{"weight_decay": 0.2}]).startswith(
        "mlp 256x128: adamw, warmup-cosine schedule, weight decay 0.2")
    # where the members differ in weight decay, the title does not name one
    assert "weight decay" not in results.recipe_title(make_config("mlp"), [{"weight_decay": 0.1}, {"weight_decay": 0.2}])


def test_sweep_plots_carry_the_title_and_mark_the_diverged_members(tmp_path):
    def write(folder, diverged):
        layout = Layout(tmp_path / folder)
        layout.root.mkdir()
        results.write_results(layout, rows_of(zero_spread_finals(diverged)), {}, title="mlp 32: adamw, 2 epochs")
        return layout

    marked, plain = write("marked", True), write("plain", False)
    titles = json.loads(marked.results_json.read_text())["plots"]
    assert set(titles) == {"learning_curves.png", "validation_vs_lr.png"}
    assert all(t.startswith("mlp 32: adamw, 2 epochs\n") for t in titles.values())
    for layout in (marked, plain):
        for png in (layout.learning_curves, layout.validation_vs_lr):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.diverged_points(rows_of(zero_spread_finals(True))[-1]["members"]) == [("relu", 1.0, 0.4)]
    assert plots.diverged_points(rows_of(zero_spread_finals(False))[-1]["members"]) == []
    # The same accuracies, one member diverged: only the marker (and its legend entry) differs.
    assert marked.learning_curves.read_bytes() == plain.learning_curves.read_bytes()
    assert marked.validation_vs_lr.read_bytes() != plain.validation_vs_lr.read_bytes()
