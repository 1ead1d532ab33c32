"""An exported model: one file, JAX alone, the same predictions as its workdir."""

import subprocess
import sys

import numpy as np
import pytest

from mnist_jax import export, predict, train
from mnist_jax.errors import UserError
from mnist_jax.workdir import load_model

from conftest import one_line_error, run_cli

QUICK = ["--train-limit", "2048", "--test-limit", "256", "--validation-size", "256", "--epochs", "1"]


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("export") / "lenet"
    assert run_cli(train.main, "--model", "lenet", *QUICK, "--workdir", workdir) == 0
    return workdir


def test_an_exported_model_predicts_the_same_classes_as_its_workdir_on_the_test_set(lenet, tmp_path, mnist, capsys):
    path = tmp_path / "model.jax"
    assert run_cli(export.main, "--workdir", lenet, "--to", path) == 0
    assert "checkpoint of epoch 1" in capsys.readouterr().err
    images = np.asarray(mnist.x_test)  # all 10,000, not only those the run was tested on
    from_workdir = load_model(lenet).predict(images)
    from_file = export.ExportedModel(path).predict(images)
    np.testing.assert_allclose(from_file, from_workdir, rtol=1e-4, atol=1e-4)
    assert (from_file.argmax(1) == from_workdir.argmax(1)).all()
    # any batch size, one image included
    np.testing.assert_allclose(export.ExportedModel(path).predict(images[:1]), from_workdir[:1], rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="uint8 of shape"):  # the file takes what the workdir's model takes
        export.ExportedModel(path).predict(images[:4].astype(np.float32))


def test_the_file_runs_with_jax_alone(lenet, tmp_path, mnist):
    path = tmp_path / "model.jax"
    assert run_cli(export.main, "--workdir", lenet, "--to", path) == 0
    np.save(tmp_path / "x.npy", np.asarray(mnist.x_test[:100]))
    script = ("import sys, numpy as np, jax; sys.modules['mnist_jax'] = None; "
              f"e = jax.export.deserialize(bytearray(open({str(path)!r}, 'rb').read())); "
              f"print(np.asarray(e.call(np.load({str(tmp_path / 'x.npy')!r}))).argmax(1).tolist())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert eval(out) == load_model(lenet).predict(np.asarray(mnist.x_test[:100])).argmax(1).tolist()


def test_predict_takes_an_exported_model_file(lenet, tmp_path, capsys):
    path = tmp_path / "model.jax"
    assert run_cli(export.main, "--workdir", lenet, "--to", path) == 0
    image = tmp_path / "seven.png"
    from PIL import Image
    canvas = np.zeros((28, 28), np.uint8)
    canvas[6:8, 8:20], canvas[8:22, 17:19] = 255, 255
    Image.fromarray(canvas).save(image)
    capsys.readouterr()
    assert run_cli(predict.main, "--workdir", lenet, image) == 0
    by_workdir = capsys.readouterr().out
    assert run_cli(predict.main, "--model-file", path, image) == 0
    by_file = capsys.readouterr().out
    assert by_file.split("\t")[:2] == by_workdir.split("\t")[:2]


@pytest.mark.parametrize("argv, fragments", [
    (["--model-file", "{tmp}/missing.jax"], ["cannot read the model file", "missing.jax"]),
    (["--model-file", "{tmp}/junk.jax"], ["is not a model file written by python -m mnist_jax.export"]),
    ([], ["--workdir DIR", "--model-file FILE"]),
])
def test_a_bad_model_file_is_one_line(argv, fragments, tmp_path, capsys):
    (tmp_path / "junk.jax").write_bytes(b"not an export at all")
    image = tmp_path / "x.png"
    from PIL import Image
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(image)
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert run_cli(predict.main, *argv, image) == 2
    one_line_error(capsys, *fragments)


def test_export_into_a_missing_folder_is_one_line(lenet, tmp_path, capsys):
    assert run_cli(export.main, "--workdir", lenet, "--to", tmp_path / "no" / "such" / "model.jax") == 2
    one_line_error(capsys, "could not write", "model.jax")

