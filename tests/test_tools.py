"""What users do with a trained model: evaluate it, predict their own images, train in bfloat16."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mnist_jax import engine, evaluate, predict, sweep, train
from mnist_jax.errors import UserError
from mnist_jax.predict import mnist_like
from mnist_jax.workdir import load_model

from conftest import make_config, make_hyper, one_line_error, run_cli, train_epoch


@pytest.fixture(scope="module")
def trained_lenet(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lenet") / "run"
    assert run_cli(train.main, "--model", "lenet", "--epochs", "3", "--train-limit", "16384", "--test-limit", "2000",
                   "--workdir", workdir) == 0
    return workdir


def test_evaluate_reproduces_the_recorded_accuracy_and_writes_its_pngs(trained_lenet, capsys):
    capsys.readouterr()
    assert run_cli(evaluate.main, "--workdir", trained_lenet) == 0
    out = capsys.readouterr().out
    report = json.loads((trained_lenet / "evaluation" / "evaluation.json").read_text())
    recorded = json.loads((trained_lenet / "metrics.jsonl").read_text().splitlines()[report["epoch"] - 1])[
        "test_accuracy"]  # the epoch evaluate chose: the best on validation, by default
    assert report["test_accuracy"] == pytest.approx(recorded, abs=1e-6)
    assert f"test accuracy {recorded:.2%}" in out and "confusion matrix" in out
    assert np.asarray(report["confusion_matrix"]).sum() == 2000
    for png in ("confusion_matrix.png", "most_confident_errors.png"):
        assert (trained_lenet / "evaluation" / png).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_takes_best_or_an_epoch_and_rejects_a_missing_one(trained_lenet, capsys):
    assert run_cli(evaluate.main, "--workdir", trained_lenet, "--checkpoint", "1", "--out", trained_lenet / "e1") == 0
    first = json.loads((trained_lenet / "metrics.jsonl").read_text().splitlines()[0])["test_accuracy"]
    assert json.loads((trained_lenet / "e1" / "evaluation.json").read_text())["test_accuracy"] == \
        pytest.approx(first, abs=1e-6)
    capsys.readouterr()
    assert run_cli(evaluate.main, "--workdir", trained_lenet, "--checkpoint", "9") == 2
    one_line_error(capsys, "no checkpoint 9", "it has 1, 2, 3")


def test_evaluate_a_sweep_member(tmp_path, capsys):
    workdir = tmp_path / "sweep"
    assert run_cli(sweep.main, "--model", "mlp", "--hidden", "32", "--activations", "relu,elu", "--seeds", "1",
                   "--epochs", "1", "--train-limit", "1024", "--test-limit", "300", "--workdir", workdir) == 0
    capsys.readouterr()
    assert run_cli(evaluate.main, "--workdir", workdir) == 2
    one_line_error(capsys, "is a sweep", "--member")
    assert run_cli(evaluate.main, "--workdir", workdir, "--member", "elu,0") == 0
    recorded = json.loads((workdir / "results.json").read_text())["members"][1]["test_accuracy"]
    assert json.loads((workdir / "evaluation" / "elu-seed0-lr0.002" / "evaluation.json").read_text())["test_accuracy"] == \
        pytest.approx(recorded, abs=1e-6)


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory, mnist):
    """20 test digits as PNG files; every third inverted (dark on light), every other one enlarged to 112x112."""
    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for i in range(20):
        image = mnist.x_test[i] if i % 3 != 1 else 255 - mnist.x_test[i]
        picture = Image.fromarray(image)
        if i % 2 == 0:
            picture = picture.resize((112, 112), Image.BILINEAR)
        if i == 5:
            picture = picture.convert("RGB")
        paths.append(folder / f"{i:02d}.png")
        picture.save(paths[-1])
    return paths, mnist.y_test[:20]


def test_predict_names_mnist_digits_saved_as_images(trained_lenet, digit_files, capsys):
    paths, labels = digit_files
    capsys.readouterr()
    assert run_cli(predict.main, "--workdir", trained_lenet, *paths) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 20
    predicted = [int(line.split("\t")[1]) for line in lines]
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in paths]
    assert sum(p == t for p, t in zip(predicted, labels)) >= 19


def test_an_unreadable_file_is_named_and_the_others_still_predicted(trained_lenet, digit_files, tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    capsys.readouterr()
    assert run_cli(predict.main, "--workdir", trained_lenet, "--json", digit_files[0][0], bad,
                   tmp_path / "missing.png", digit_files[0][1]) == 1
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [r["path"] for r in rows] == [str(digit_files[0][0]), str(digit_files[0][1])]
    assert all(len(r["probabilities"]) == 10 and 0 <= r["digit"] <= 9 for r in rows)
    errors = [line for line in captured.err.splitlines() if not line.startswith("using checkpoint of epoch")]
    assert len(errors) == 2 and "notes.png" in errors[0] and "missing.png" in errors[1]


def test_a_loaded_model_predicts_with_its_best_checkpoint_by_default(trained_lenet, mnist):
    rows = [json.loads(line) for line in (trained_lenet / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda row: (row["val_accuracy"], row["epoch"]))
    model = load_model(trained_lenet)
    assert model.step == best["epoch"] and model.member == {"activation": "relu", "seed": 0, "lr": 0.002,
                                                            "weight_decay": 0.2, "b1": 0.9, "label_smoothing": 0.0}
    logits = model.predict(mnist.x_test[:2000])
    assert logits.shape == (2000, 10)
    assert np.mean(logits.argmax(-1) == mnist.y_test[:2000]) == pytest.approx(best["test_accuracy"], abs=1e-6)
    assert load_model(trained_lenet, checkpoint="latest").step == 3
    with pytest.raises(UserError, match="uint8 of shape"):
        model.predict(mnist.x_test[:4].astype(np.float32))


def test_preprocessing_inverts_crops_and_centres_like_mnist(tmp_path):
    canvas = np.full((300, 200), 240, np.uint8)  # light paper
    canvas[40:160, 20:60] = 10  # a dark, tall stroke far from the centre
    Image.fromarray(canvas).save(tmp_path / "stroke.jpg")
    image = mnist_like(tmp_path / "stroke.jpg")
    assert image.shape == (28, 28) and image.dtype == np.uint8
    assert image[0, 0] == 0 and image.max() >= 240  # white digit on black
    rows, cols = np.nonzero(image > 0)
    assert rows.max() - rows.min() + 1 <= 21 and cols.max() - cols.min() + 1 <= 21  # fits the 20x20 box
    ys, xs = np.indices(image.shape)
    # centre of mass at the centre, to within the half pixel an integer shift allows
    assert abs((ys * image).sum() / image.sum() - 13.5) <= 0.75 and abs((xs * image).sum() / image.sum() - 13.5) <= 0.75


def test_bfloat16_training_stays_within_half_a_point_of_float32(small_mnist):
    x_train, y_train, x_test, y_test = map(jnp.asarray, small_mnist)
    accuracies = {}
    for dtype in ("float32", "bfloat16"):
        config = make_config("mlp", hidden=(128,), batch_size=64, epochs=3, train_size=len(y_train), dtype=dtype)
        hyper = make_hyper("relu", 2e-3, 0)
        state = engine.initial_state(config, hyper)
        for _ in range(config.epochs):
            state, _ = jax.jit(train_epoch, static_argnums=0)(config, state, hyper, x_train, y_train)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
        accuracies[dtype] = float(engine.evaluate(config, state.params, hyper, x_test, y_test)["accuracy"])
    assert accuracies["float32"] > 0.8
    assert abs(accuracies["float32"] - accuracies["bfloat16"]) <= 0.005
