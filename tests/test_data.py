"""Specification of mnist_jax.data: IDX files, the bundled MNIST, and choosing a data source.

Every problem with a user's data must surface as a one-line `UserError` that names the file at fault.
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from mnist_jax import data
from mnist_jax.data import load_dataset, load_idx_dir, read_idx, write_idx
from mnist_jax.errors import UserError

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
CANONICAL_NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

MNIST_TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------------------------- helpers


def write_idx_dir(directory: Path, n_train: int = 50, n_test: int = 20, gz: bool = False,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Writes the four canonical IDX files of a small random MNIST-like set; returns what was written."""
    rng = np.random.default_rng(seed)
    arrays = {
        TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: rng.integers(0, 10, n_train, dtype=np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        TEST_LABELS: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(directory / (name + ".gz" if gz else name), array)
    return arrays


def valid_idx_file(directory: Path, name: str) -> Path:
    """A valid small 3-D uint8 IDX file (gzipped when `name` ends in .gz)."""
    path = directory / name
    write_idx(path, np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8))
    return path


def raise_user_error(path: Path) -> str:
    """The message of the UserError that read_idx raises for `path`, which must name the path."""
    with pytest.raises(UserError) as excinfo:
        read_idx(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "\n" not in message
    return message


@pytest.fixture
def empty_tfds_dir(tmp_path, monkeypatch):
    """TFDS_DATA_DIR pointing at an empty directory, so a user's ~/tensorflow_datasets cannot interfere."""
    tfds_dir = tmp_path / "tfds_home"
    tfds_dir.mkdir()
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    return tfds_dir


@pytest.fixture(scope="module")
def bundled():
    return data.load_bundled()


# ------------------------------------------------------------------------------------ 1. IDX round trip


@pytest.mark.parametrize("filename", ["file-idx", "file-idx.gz"])
@pytest.mark.parametrize("array", [
    np.random.default_rng(2).integers(0, 256, (7, 28, 28), dtype=np.uint8),
    np.random.default_rng(3).integers(0, 10, 7, dtype=np.uint8),
    np.array([[-32768, -1, 0], [1, 258, 32767]], dtype=np.int16),
    np.array([[-1.5, 0.0], [3.25, np.float32(1e-30)], [np.inf, -7e20]], dtype=np.float32),
    np.array([-128, -1, 0, 127], dtype=np.int8),
    np.array([[-(2 ** 31), 2 ** 31 - 1, 65536]], dtype=np.int32),
    np.array([np.pi, -1e300], dtype=np.float64),
], ids=["uint8-images", "uint8-labels", "int16", "float32", "int8", "int32", "float64"])
def test_write_then_read_idx_returns_an_equal_array_of_the_same_dtype(tmp_path, array, filename):
    path = tmp_path / filename
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_file_is_gzipped_exactly_when_its_name_ends_in_gz(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "a", array)
    write_idx(tmp_path / "a.gz", array)
    assert (tmp_path / "a").read_bytes()[:2] == b"\x00\x00"
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == (tmp_path / "a").read_bytes()


def test_written_idx_file_follows_the_big_endian_idx_layout(tmp_path):
    array = np.array([[1, -2, 300]], dtype=np.int16)
    write_idx(tmp_path / "x", array)
    expected = (bytes([0, 0, 0x0B, 2]) + np.array([1, 3], ">u4").tobytes()
                + np.array([1, -2, 300], ">i2").tobytes())
    assert (tmp_path / "x").read_bytes() == expected


def test_read_idx_returns_native_byte_order_arrays(tmp_path):
    write_idx(tmp_path / "x", np.array([1.5, -2.0], dtype=np.float32))
    assert read_idx(tmp_path / "x").dtype.isnative


def test_writing_a_dtype_idx_cannot_hold_raises_instead_of_writing(tmp_path):
    with pytest.raises(ValueError, match="int64"):
        write_idx(tmp_path / "x", np.arange(3, dtype=np.int64))
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------- 2. corrupt IDX files


def test_missing_idx_file_is_named_in_the_error(tmp_path):
    message = raise_user_error(tmp_path / "nowhere-idx3-ubyte")
    assert "missing" in message


@pytest.mark.parametrize("filename", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
@pytest.mark.parametrize("cut", [1, 100, 3000])
def test_truncated_idx_file_is_named_in_the_error(tmp_path, filename, cut):
    path = valid_idx_file(tmp_path, filename)
    path.write_bytes(path.read_bytes()[:-cut])
    raise_user_error(path)


def test_idx_file_with_bytes_past_its_header_size_is_named_in_the_error(tmp_path):
    path = valid_idx_file(tmp_path, "images-idx3-ubyte")
    path.write_bytes(path.read_bytes() + b"\x00")
    message = raise_user_error(path)
    assert "(5, 28, 28)" in message


@pytest.mark.parametrize("first_bytes", [b"\x01\x00\x08", b"\x00\x01\x08", b"\x00\x00\x07", b"\x00\x00\xff"])
def test_idx_file_with_a_wrong_magic_number_is_named_in_the_error(tmp_path, first_bytes):
    path = valid_idx_file(tmp_path, "images-idx3-ubyte")
    path.write_bytes(first_bytes + path.read_bytes()[3:])
    assert "magic number" in raise_user_error(path)


def test_idx_file_claiming_zero_dimensions_is_named_in_the_error(tmp_path):
    path = tmp_path / "scalar-idx"
    path.write_bytes(bytes([0, 0, 0x08, 0]) + b"\x05")
    assert "magic number" in raise_user_error(path)


@pytest.mark.parametrize("filename", ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"])
def test_text_file_in_place_of_an_idx_file_is_named_in_the_error(tmp_path, filename):
    path = tmp_path / filename
    text = b"<html><body>404 Not Found</body></html>\n"
    path.write_bytes(gzip.compress(text) if filename.endswith(".gz") else text)
    assert "magic number" in raise_user_error(path)


@pytest.mark.parametrize("content", [b"", b"\x00\x00"], ids=["empty", "two-bytes"])
def test_file_too_short_for_a_magic_number_is_named_in_the_error(tmp_path, content):
    path = tmp_path / "short-idx"
    path.write_bytes(content)
    assert "magic number" in raise_user_error(path)


def test_gzipped_idx_file_without_gz_name_is_reported_not_misread(tmp_path):
    path = valid_idx_file(tmp_path, "images-idx3-ubyte.gz").rename(tmp_path / "images-idx3-ubyte")
    assert "magic number" in raise_user_error(path)


@pytest.mark.parametrize("keep", [4, 8, 15], ids=["magic-only", "one-dim", "mid-dim"])
def test_idx_file_cut_inside_its_header_is_named_in_the_error(tmp_path, keep):
    path = valid_idx_file(tmp_path, "images-idx3-ubyte")  # 3-D: header is 4 + 3 * 4 = 16 bytes
    path.write_bytes(path.read_bytes()[:keep])
    assert "header" in raise_user_error(path)


@pytest.mark.parametrize("content", [b"not gzip at all, just text\n", b"\x1f", b"\x1f\x8b\x08\x00garbage"],
                         ids=["text", "one-byte", "gzip-magic-then-garbage"])
def test_gz_file_that_is_not_valid_gzip_is_named_in_the_error(tmp_path, content):
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(content)
    assert "gzip" in raise_user_error(path)


def test_gz_file_with_a_changed_byte_fails_its_crc_and_is_named_in_the_error(tmp_path):
    path = valid_idx_file(tmp_path, "images-idx3-ubyte.gz")
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0x01  # first byte of the CRC32 in the gzip trailer
    path.write_bytes(bytes(raw))
    assert "gzip" in raise_user_error(path)


def test_gz_file_with_a_corrupt_compressed_stream_is_named_in_the_error(tmp_path):
    path = valid_idx_file(tmp_path, "images-idx3-ubyte.gz")
    raw = bytearray(path.read_bytes())
    raw[10] = 0x07  # first deflate block header: final block of the reserved, invalid type 3
    path.write_bytes(bytes(raw))
    assert "gzip" in raise_user_error(path)


@pytest.mark.parametrize("split,images,labels", [("train", TRAIN_IMAGES, TRAIN_LABELS),
                                                 ("test", TEST_IMAGES, TEST_LABELS)])
def test_label_count_not_matching_image_count_names_the_labels_file(tmp_path, split, images, labels):
    write_idx_dir(tmp_path)
    n_images = len(read_idx(tmp_path / images))
    write_idx(tmp_path / labels, np.zeros(n_images - 1, np.uint8))
    with pytest.raises(UserError) as excinfo:
        load_idx_dir(tmp_path)
    assert str(tmp_path / labels) in str(excinfo.value)


def test_labels_outside_0_to_9_name_the_labels_file(tmp_path):
    write_idx_dir(tmp_path)
    write_idx(tmp_path / TRAIN_LABELS, np.full(50, 10, np.uint8))
    with pytest.raises(UserError) as excinfo:
        load_idx_dir(tmp_path)
    assert str(tmp_path / TRAIN_LABELS) in str(excinfo.value)


@pytest.mark.parametrize("bad_images", [
    np.zeros((50, 27, 27), np.uint8),
    np.zeros((50, 28 * 28), np.uint8),
    np.zeros((50, 28, 28, 1), np.uint8),
    np.zeros((50, 28, 28), np.float32),
], ids=["27x27", "flat-784", "with-channel", "float32"])
def test_images_that_are_not_uint8_28x28_name_the_images_file(tmp_path, bad_images):
    write_idx_dir(tmp_path)
    write_idx(tmp_path / TRAIN_IMAGES, bad_images)
    with pytest.raises(UserError) as excinfo:
        load_idx_dir(tmp_path)
    assert str(tmp_path / TRAIN_IMAGES) in str(excinfo.value)
    assert "28x28" in str(excinfo.value)


def test_corrupt_file_inside_an_idx_dir_is_named_by_load_idx_dir(tmp_path):
    write_idx_dir(tmp_path, gz=True)
    path = tmp_path / (TEST_IMAGES + ".gz")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(UserError) as excinfo:
        load_idx_dir(tmp_path)
    assert str(path) in str(excinfo.value)


# ------------------------------------------------------------------------------------- 3. load_idx_dir


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_dir_loads_uint8_images_and_int32_labels_equal_to_the_files(tmp_path, gz):
    written = write_idx_dir(tmp_path, n_train=50, n_test=20, gz=gz)
    ds = load_idx_dir(tmp_path)
    assert ds.x_train.shape == (50, 28, 28) and ds.x_test.shape == (20, 28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.x_test.dtype == np.uint8
    assert ds.y_train.shape == (50,) and ds.y_test.shape == (20,)
    assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    np.testing.assert_array_equal(ds.x_train, written[TRAIN_IMAGES])
    np.testing.assert_array_equal(ds.y_train, written[TRAIN_LABELS])
    np.testing.assert_array_equal(ds.x_test, written[TEST_IMAGES])
    np.testing.assert_array_equal(ds.y_test, written[TEST_LABELS])
    assert ds.source == "idx" and ds.name == "mnist" and ds.location == str(tmp_path)
    assert ds.describe() == f"mnist from idx ({tmp_path}): 50 train, 20 test images"


def test_idx_dir_may_mix_gzipped_and_raw_files(tmp_path):
    written = write_idx_dir(tmp_path, gz=True)
    (tmp_path / (TRAIN_LABELS + ".gz")).unlink()
    write_idx(tmp_path / TRAIN_LABELS, written[TRAIN_LABELS])
    np.testing.assert_array_equal(load_idx_dir(tmp_path).y_train, written[TRAIN_LABELS])


@pytest.mark.parametrize("missing", CANONICAL_NAMES)
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_dir_missing_one_of_the_four_files_names_it(tmp_path, missing, gz):
    write_idx_dir(tmp_path, gz=gz)
    (tmp_path / (missing + ".gz" if gz else missing)).unlink()
    with pytest.raises(UserError) as excinfo:
        load_idx_dir(tmp_path)
    assert str(tmp_path / missing) in str(excinfo.value)


def test_idx_dir_that_does_not_exist_is_named_in_the_error(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_idx_dir(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(excinfo.value)


# ---------------------------------------------------------------------------------- 4. bundled MNIST


def test_bundled_mnist_has_60000_train_and_10000_test_uint8_28x28_images(bundled):
    assert bundled.x_train.shape == (60000, 28, 28) and bundled.x_test.shape == (10000, 28, 28)
    assert bundled.x_train.dtype == np.uint8 and bundled.x_test.dtype == np.uint8
    assert bundled.y_train.shape == (60000,) and bundled.y_test.shape == (10000,)
    assert bundled.y_train.dtype == np.int32 and bundled.y_test.dtype == np.int32
    assert bundled.source == "bundled" and bundled.name == "mnist"


def test_bundled_mnist_has_the_published_label_counts(bundled):
    assert np.bincount(bundled.y_train, minlength=10).tolist() == MNIST_TRAIN_LABEL_COUNTS
    assert np.bincount(bundled.y_test, minlength=10).tolist() == MNIST_TEST_LABEL_COUNTS


def test_bundled_mnist_has_the_published_pixel_mean(bundled):
    assert bundled.x_train.mean() / 255 == pytest.approx(0.1307, abs=5e-4)


@pytest.mark.parametrize("altered", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_bundled_file_that_was_altered_fails_its_sha256_check(tmp_path, monkeypatch, altered):
    copy = tmp_path / "mnist"
    shutil.copytree(data.bundled_dir(), copy)
    with open(copy / altered, "ab") as f:
        f.write(b"\x00")
    monkeypatch.setattr(data, "bundled_dir", lambda: copy)
    with pytest.raises(UserError) as excinfo:
        data.load_bundled()
    assert "sha256" in str(excinfo.value)
    assert altered in str(excinfo.value)


def test_bundled_file_that_was_deleted_is_named_in_the_error(tmp_path, monkeypatch):
    copy = tmp_path / "mnist"
    shutil.copytree(data.bundled_dir(), copy)
    (copy / "t10k-images-idx3-ubyte.gz").unlink()
    monkeypatch.setattr(data, "bundled_dir", lambda: copy)
    with pytest.raises(UserError) as excinfo:
        data.load_bundled()
    assert str(copy / "t10k-images-idx3-ubyte.gz") in str(excinfo.value)


# ------------------------------------------------------------------------------- 5. source selection


def test_auto_without_data_dir_uses_the_bundled_mnist(empty_tfds_dir):
    ds = load_dataset("auto", "mnist")
    assert ds.source == "bundled"
    assert len(ds.y_train) == 60000 and len(ds.y_test) == 10000


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_auto_with_a_data_dir_of_idx_files_uses_them(tmp_path, empty_tfds_dir, dataset, gz):
    written = write_idx_dir(tmp_path / "idx", gz=gz)
    ds = load_dataset("auto", dataset, tmp_path / "idx")
    assert ds.source == "idx" and ds.name == dataset
    np.testing.assert_array_equal(ds.x_train, written[TRAIN_IMAGES])


def test_idx_source_loads_the_data_dir(tmp_path):
    written = write_idx_dir(tmp_path)
    ds = load_dataset("idx", "fashion_mnist", str(tmp_path))
    assert ds.source == "idx" and ds.name == "fashion_mnist"
    np.testing.assert_array_equal(ds.y_test, written[TEST_LABELS])


def test_auto_for_fashion_mnist_without_any_local_copy_raises(empty_tfds_dir):
    with pytest.raises(UserError, match="fashion_mnist"):
        load_dataset("auto", "fashion_mnist")


def test_bundled_source_for_fashion_mnist_raises():
    with pytest.raises(UserError, match="fashion_mnist"):
        load_dataset("bundled", "fashion_mnist")


def test_idx_source_without_data_dir_raises():
    with pytest.raises(UserError, match="--data-dir"):
        load_dataset("idx", "mnist")


@pytest.mark.parametrize("source", ["auto", "bundled", "idx", "tfds"])
def test_data_dir_that_does_not_exist_is_named_in_the_error(tmp_path, source):
    absent = tmp_path / "no-such-dir"
    with pytest.raises(UserError) as excinfo:
        load_dataset(source, "mnist", absent)
    assert str(absent) in str(excinfo.value)


def test_unknown_source_raises():
    with pytest.raises(UserError, match="'kaggle'"):
        load_dataset("kaggle", "mnist")


def test_unknown_dataset_raises():
    with pytest.raises(UserError, match="'cifar10'"):
        load_dataset("auto", "cifar10")


def test_auto_with_a_data_dir_holding_neither_idx_nor_tfds_data_raises(tmp_path, empty_tfds_dir):
    (tmp_path / "README.txt").write_text("nothing here\n")
    with pytest.raises(UserError) as excinfo:
        load_dataset("auto", "mnist", tmp_path)
    assert str(tmp_path) in str(excinfo.value)


# ------------------------------------------------------------------------- 6. tfds without TensorFlow


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_tfds_source_returns_uint8_images_and_int32_labels(empty_tfds_dir, dataset):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        ds = load_dataset("tfds", dataset)
    assert ds.source == "tfds" and ds.name == dataset
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.shape == (6, 28, 28) and x.dtype == np.uint8
        assert y.shape == (6,) and y.dtype == np.int32
        assert y.min() >= 0 and y.max() <= 9


def test_auto_uses_a_prepared_tfds_copy_in_the_data_dir(tmp_path, empty_tfds_dir):
    tfds = pytest.importorskip("tensorflow_datasets")
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    with tfds.testing.mock_data(num_examples=4):
        ds = load_dataset("auto", "mnist", tmp_path)
    assert ds.source == "tfds" and ds.location == str(tmp_path)
    assert ds.x_train.shape == (4, 28, 28)


def test_tfds_source_without_tensorflow_or_data_fails_fast(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed: this checks the path without it")
    start = time.monotonic()
    with pytest.raises(UserError) as excinfo:
        load_dataset("tfds", "mnist", tmp_path)
    assert time.monotonic() - start < 10
    assert str(tmp_path) in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


# ----------------------------------------------------------------------- 7. real third-party IDX data


def test_debian_fashion_mnist_loads_as_idx_with_balanced_classes():
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{FASHION_MNIST_DIR} is absent: apt-get install dataset-fashion-mnist")
    ds = load_dataset("idx", "fashion_mnist", FASHION_MNIST_DIR)
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert ds.x_train.dtype == np.uint8
    assert np.bincount(ds.y_train, minlength=10).tolist() == [6000] * 10
    assert np.bincount(ds.y_test, minlength=10).tolist() == [1000] * 10


def test_auto_recognises_dotted_idx_names_as_well(tmp_path):
    write_idx_dir(tmp_path)
    for path in tmp_path.iterdir():
        path.rename(tmp_path / path.name.replace("-idx", ".idx"))
    assert load_dataset("auto", "mnist", tmp_path).source == "idx"
