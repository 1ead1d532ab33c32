"""predict on the files users really have: one bad image never stops the others, EXIF orientation, names that are
not plain text; evaluate and predict load the checkpoint chosen on validation unless told otherwise."""

import io
import json
import os
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_jax import evaluate, predict, train
from mnist_jax.predict import MAX_PIXELS, mnist_like
from mnist_jax.workdir import load_model

from conftest import run_cli


@pytest.fixture(scope="module")
def trained_mlp(tmp_path_factory):
    """The default MLP after 2 epochs on 8192 images (about 93% test accuracy, a few seconds), validated on 1000."""
    workdir = tmp_path_factory.mktemp("mlp") / "run"
    assert run_cli(train.main, "--model", "mlp", "--epochs", "2", "--train-limit", "8192", "--test-limit", "500",
                   "--validation-size", "1000", "--workdir", workdir) == 0
    return workdir


def png_header(path, width, height):
    """A valid PNG that declares width x height pixels but holds one row: what a decompression bomb looks like
    until it is decoded, written in microseconds."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b""))
    return path


def predictions(out):
    """stdout's `path<TAB>digit<TAB>probability` lines as (path, digit)."""
    rows = [line.split("\t") for line in out.splitlines()]
    assert all(len(row) == 3 for row in rows), out
    return [(row[0], int(row[1])) for row in rows]


def test_a_mixed_batch_names_each_bad_file_once_and_predicts_every_good_one(trained_mlp, mnist, tmp_path, capsys):
    good = []
    for i in range(4):
        good.append(tmp_path / f"digit{i}.png")
        Image.fromarray(mnist.x_test[i]).save(good[-1])
    (tmp_path / "notes.png").write_text("not an image")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "blank\n.png")  # a name that would break the line
    specks = np.zeros((2000, 2000), np.uint8)
    specks[0, 0] = specks[-1, -1] = 255  # the digit vanishes when scaled to 20x20: was a NaN ValueError
    Image.fromarray(specks).save(tmp_path / "specks.png")
    png_header(tmp_path / "over_limit.png", 6400, MAX_PIXELS // 6400 + 1)  # just over: PIL only warned
    png_header(tmp_path / "bomb.png", 100_000, 100_000)  # far over: was a DecompressionBombError traceback
    whole = good[0].read_bytes()
    (tmp_path / "truncated.png").write_bytes(whole[:len(whole) // 2])
    over = "over the limit of 40 megapixels"
    bad = [(tmp_path / "notes.png", "not an image format"), (f"'{tmp_path}/blank\\n.png'", "blank image"),
           (tmp_path / "specks.png", "no digit found"), (tmp_path / "over_limit.png", over),
           (tmp_path / "bomb.png", over), (tmp_path / "truncated.png", "cannot be decoded"),
           (tmp_path / "missing.png", "no such file")]
    files = [good[0], tmp_path / "notes.png", good[1], tmp_path / "blank\n.png", tmp_path / "specks.png",
             tmp_path / "over_limit.png", good[2], tmp_path / "bomb.png", tmp_path / "truncated.png",
             tmp_path / "missing.png", good[3]]
    capsys.readouterr()
    assert run_cli(predict.main, "--workdir", trained_mlp, *files) == 1
    captured = capsys.readouterr()
    alone = load_model(trained_mlp).predict(np.stack([mnist_like(p) for p in good])).argmax(-1)
    assert predictions(captured.out) == [(str(p), digit) for p, digit in zip(good, alone)]
    assert "Traceback" not in captured.err
    errors = captured.err.splitlines()[1:]  # after the line naming the checkpoint
    assert len(errors) == len(bad), captured.err
    for line, (name, problem) in zip(errors, bad):
        assert line.startswith(f"error: {name}: ") and problem in line, line


def test_a_batch_where_every_image_is_good_exits_0(trained_mlp, mnist, tmp_path, capsys):
    Image.fromarray(mnist.x_test[0]).save(tmp_path / "seven.png")
    assert run_cli(predict.main, "--workdir", trained_mlp, tmp_path / "seven.png") == 0
    assert predictions(capsys.readouterr().out) == [(str(tmp_path / "seven.png"), 7)]


def test_a_thin_stroke_on_a_large_image_stays_as_visible_as_an_mnist_digit(tmp_path):
    drawing = Image.new("L", (1000, 1000), 0)
    ImageDraw.Draw(drawing).line([(100, 100), (900, 100), (400, 900)], fill=255, width=4)  # a 7 of 4-pixel strokes
    drawing.save(tmp_path / "thin_seven.png")
    image = mnist_like(tmp_path / "thin_seven.png")
    assert image.max() == 255 and (image > 127).sum() >= 12  # not a faint ghost of the digit


def test_a_16_bit_grayscale_png_reads_as_its_8_bit_original(mnist, tmp_path):
    Image.fromarray(mnist.x_test[0]).save(tmp_path / "8bit.png")
    Image.fromarray(mnist.x_test[0].astype(np.uint16) * 257).save(tmp_path / "16bit.png")
    np.testing.assert_array_equal(mnist_like(tmp_path / "16bit.png"), mnist_like(tmp_path / "8bit.png"))


@pytest.mark.parametrize("orientation, stored_turned",
                         [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)])
def test_an_exif_rotated_jpeg_is_read_upright(trained_mlp, mnist, tmp_path, capsys, orientation, stored_turned):
    upright = Image.fromarray(mnist.x_test[1]).resize((112, 112), Image.BILINEAR)  # a 2
    upright.save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = orientation  # how a camera says its stored pixels must turn to be viewed upright
    upright.transpose(stored_turned).save(tmp_path / "phone.jpg", quality=95, exif=exif.tobytes())
    with Image.open(tmp_path / "phone.jpg") as stored:  # read without the orientation, the digit lies on its side
        stored.convert("L").save(tmp_path / "sideways.png")
    capsys.readouterr()
    paths = [tmp_path / name for name in ("upright.jpg", "phone.jpg", "sideways.png")]
    assert run_cli(predict.main, "--workdir", trained_mlp, *paths) == 0
    (_, upright_digit), (_, phone_digit), (_, sideways_digit) = predictions(capsys.readouterr().out)
    assert upright_digit == phone_digit == 2 != sideways_digit
    assert np.abs(mnist_like(paths[1]).astype(int) - mnist_like(paths[0])).mean() < 8  # JPEG noise only


def test_names_with_a_tab_a_newline_or_undecodable_bytes_print_escaped_on_one_line(trained_mlp, mnist, tmp_path,
                                                                                   capsys):
    names = ["tab\there.png", "new\nline.png", os.fsdecode(b"bytes\xff.png"), "plain name.png", "'quoted.png"]
    for i, name in enumerate(names):
        Image.fromarray(mnist.x_test[i]).save(tmp_path / name)
    capsys.readouterr()
    assert run_cli(predict.main, "--workdir", trained_mlp, *[tmp_path / n for n in names]) == 0
    shown = [path for path, _ in predictions(capsys.readouterr().out)]
    assert shown == [f"'{tmp_path}/tab\\there.png'", f"'{tmp_path}/new\\nline.png'", f"'{tmp_path}/bytes\\xff.png'",
                     f"{tmp_path}/plain name.png", f"{tmp_path}/'quoted.png"]  # escaped only where needed
    assert run_cli(predict.main, "--workdir", trained_mlp, "--json", *[tmp_path / n for n in names]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == [str(tmp_path / n) for n in names[:2]] + [shown[2]] + [
        str(tmp_path / n) for n in names[3:]]  # JSON escapes what it can; raw bytes it cannot hold


def test_names_are_escaped_for_an_ascii_terminal(trained_mlp, mnist, tmp_path, monkeypatch):
    Image.fromarray(mnist.x_test[0]).save(tmp_path / "sept_é.png")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "vide_é.png")
    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="ascii") for _ in range(2))
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    code = run_cli(predict.main, "--workdir", trained_mlp, tmp_path / "sept_é.png", tmp_path / "vide_é.png")
    for stream in (out, err):
        stream.flush()
    monkeypatch.undo()
    assert code == 1
    assert out.buffer.getvalue().decode("ascii").startswith(f"'{tmp_path}/sept_\\xe9.png'\t7\t")
    assert err.buffer.getvalue().decode("ascii").splitlines()[-1].startswith(f"error: '{tmp_path}/vide_\\xe9.png'")


def test_predict_and_evaluate_default_to_the_best_checkpoint_and_say_so(trained_mlp, mnist, tmp_path, capsys):
    rows = [json.loads(line) for line in (trained_mlp / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda row: (row["val_accuracy"], row["epoch"]))
    Image.fromarray(mnist.x_test[0]).save(tmp_path / "seven.png")
    capsys.readouterr()
    assert run_cli(predict.main, "--workdir", trained_mlp, "--json", tmp_path / "seven.png") == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == \
        f"using checkpoint of epoch {best['epoch']} (best by val_accuracy {best['val_accuracy']:.4g})"
    expected = np.exp(load_model(trained_mlp, "best").predict(mnist_like(tmp_path / "seven.png")[None])[0])
    assert json.loads(captured.out)["probabilities"] == pytest.approx(expected / expected.sum(), abs=1e-5)
    for checkpoint, words in (("latest", f"epoch {len(rows)} (latest)"), ("1", "epoch 1")):
        assert run_cli(predict.main, "--workdir", trained_mlp, "--checkpoint", checkpoint, tmp_path / "seven.png") == 0
        assert capsys.readouterr().err.strip() == f"using checkpoint of {words}"
    assert run_cli(evaluate.main, "--workdir", trained_mlp, "--out", tmp_path / "e") == 0
    assert f"checkpoint of epoch {best['epoch']} (best by val_accuracy {best['val_accuracy']:.4g})" in \
        capsys.readouterr().out
    assert json.loads((tmp_path / "e" / "evaluation.json").read_text())["selected_by"]["checkpoint"] == "best"
