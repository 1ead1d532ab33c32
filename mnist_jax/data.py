"""MNIST-style datasets as uint8 arrays, from the bundled copy, any IDX directory, or tensorflow-datasets.

Every source returns the same `Dataset`: images uint8 (N, 28, 28), labels int32 (N,). Nothing here touches the
network unless the `tfds` source is asked for explicitly and finds a network to download with.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import importlib.util
import os
import socket
import struct
import zlib
from pathlib import Path

import numpy as np

from mnist_jax.errors import UserError, first_line

SOURCES = ("auto", "bundled", "idx", "tfds")
DATASETS = ("mnist", "fashion_mnist")
SPLIT_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# The validation split: this many training images held out by one fixed permutation, so every run, member and seed
# of every dataset holds out the same images (train loads what remains).
VALIDATION_SIZE = 5000
VALIDATION_SEED = 20261129
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test splits in memory, plus where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    source: str
    location: str

    def describe(self) -> str:
        return (f"{self.name} from {self.source} ({self.location}): "
                f"{len(self.y_train)} train, {len(self.y_test)} test images")

    def content(self) -> dict[str, str]:
        """A digest of each split's images and labels as loaded: the same for any copy of the same data (IDX, .gz,
        tfds), different for other data, so a run record can say exactly what it was trained and tested on."""
        return {"train": _digest(self.x_train, self.y_train), "test": _digest(self.x_test, self.y_test)}


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in (images, labels):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        if array.size:  # a zero-size view cannot be cast to bytes (and adds none)
            digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (gzipped or not), checking its magic number, dimensions and size."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"IDX file {path} is missing: put the four MNIST IDX files in that directory")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"IDX file {path} is not a readable gzip file ({e}): download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise UserError(f"IDX file {path} has a wrong magic number {raw[:4].hex() or 'none'}: it is not an IDX file")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"IDX file {path} is truncated inside its header: download it again")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise UserError(f"IDX file {path} holds {len(raw)} bytes but its header {shape} needs {expected}: "
                        "it is truncated or corrupt, download it again")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes an array as an IDX file, gzipped when the name ends in .gz."""
    codes = [code for code, dtype in _IDX_DTYPES.items() if np.dtype(dtype).newbyteorder("=") == array.dtype]
    if not codes:
        raise ValueError(f"IDX has no type code for {array.dtype}")
    dtype = np.dtype(_IDX_DTYPES[codes[0]])
    raw = bytes([0, 0, codes[0], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(dtype).tobytes()
    Path(path).write_bytes(gzip.compress(raw, mtime=0) if str(path).endswith(".gz") else raw)


def _find_idx_file(directory: Path, stem: str) -> Path:
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise UserError(f"IDX file {directory / stem}[.gz] is missing: put the four MNIST IDX files in {directory}")


def _idx_type(array: np.ndarray) -> str:
    """The IDX type code an array read by `read_idx` was stored with, as the file's header writes it (0x08)."""
    return next((f"0x{code:02x}" for code, dtype in _IDX_DTYPES.items()
                 if np.dtype(dtype).newbyteorder("=") == array.dtype), "none")


# What to do about a split file that reads as IDX but holds the wrong thing: the same advice for every check.
_FIX = "check it is the right file of the split or download it again"


def _check_images_and_labels(x: np.ndarray, y: np.ndarray, x_path: Path, y_path: Path) -> None:
    """Each split's images must be uint8 (N, 28, 28) with N > 0, its labels N integers 0-9; a label file of floats
    (which would be truncated, or NaN) is refused, not converted."""
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
        raise UserError(f"IDX file {x_path} holds {x.dtype} {x.shape} (IDX type {_idx_type(x)}), not uint8 images "
                        f"of 28x28: it must hold N x 28 x 28 unsigned bytes (IDX type 0x08); {_FIX}")
    if len(x) == 0:
        raise UserError(f"IDX file {x_path} holds no images: every split needs at least one 28x28 image; {_FIX}")
    if y.dtype.kind not in "ui":
        raise UserError(f"IDX file {y_path} holds {y.dtype} labels (IDX type {_idx_type(y)}), not integers: it "
                        f"must hold one label 0-9 per image as unsigned bytes (IDX type 0x08); {_FIX}")
    if y.ndim != 1 or len(y) != len(x):
        raise UserError(f"IDX file {y_path} holds {y.shape} labels for {len(x)} images in {x_path}: it must hold "
                        f"one label 0-9 per image; {_FIX}")
    if y.min() < 0 or y.max() > 9:
        raise UserError(f"IDX file {y_path} has labels outside 0-9 ({y.min()} to {y.max()}): it must hold one label "
                        f"0-9 per image as unsigned bytes (IDX type 0x08); {_FIX}")


def load_idx_dir(directory: str | os.PathLike, name: str = "mnist", source: str = "idx") -> Dataset:
    """Loads the four canonical IDX files (train/t10k images/labels, .gz or not) from a directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"data directory {directory} does not exist: pass --data-dir with the IDX files")
    paths = {key: _find_idx_file(directory, stem) for key, stem in SPLIT_FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        _check_images_and_labels(arrays[f"{split}_images"], arrays[f"{split}_labels"],
                                 paths[f"{split}_images"], paths[f"{split}_labels"])
    return Dataset(arrays["train_images"], arrays["train_labels"].astype(np.int32),
                   arrays["test_images"], arrays["test_labels"].astype(np.int32),
                   name=name, source=source, location=str(directory))


def bundled_dir() -> Path:
    """The directory of the MNIST IDX files shipped inside the package."""
    return Path(str(importlib.resources.files("mnist_jax") / "resources" / "mnist"))


def load_bundled() -> Dataset:
    """The MNIST copy shipped inside the package, verified against its sha256 sums."""
    directory = bundled_dir()
    for line in (directory / "SHA256SUMS.gz").read_text().splitlines():
        digest, filename = line.split()
        path = directory / filename
        if not path.is_file():
            raise UserError(f"bundled file {path} is missing: reinstall mnist_jax")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise UserError(f"bundled file {path} fails its sha256 check: reinstall mnist_jax")
    return load_idx_dir(directory, "mnist", source="bundled")


def _tfds_prepared(name: str, data_dir: Path) -> bool:
    """Whether data_dir holds a prepared TFDS copy of `name`, checked without importing tfds."""
    return any(data_dir.glob(f"{name}/*/dataset_info.json"))


def _default_tfds_dir() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR", Path.home() / "tensorflow_datasets"))


def _network_reachable(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _records_to_arrays(records) -> tuple[np.ndarray, np.ndarray]:
    records = list(records)
    images = np.asarray([np.asarray(r["image"], np.uint8).reshape(28, 28) for r in records], np.uint8)
    labels = np.asarray([r["label"] for r in records], np.int32)
    return images.reshape(-1, 28, 28), labels


def load_tfds(name: str = "mnist", data_dir: str | os.PathLike | None = None) -> Dataset:
    """Loads through tensorflow-datasets: `data_source` without TensorFlow, `tfds.load` where TF is installed.

    A download is only attempted with TensorFlow installed and the network reachable, so a machine without
    either gets a clear error at once instead of minutes of retries.
    """
    # Imported here, for the tfds source alone: it adds about 0.3 s to every start (python -X importtime).
    import tensorflow_datasets as tfds

    tfds_dir = Path(data_dir) if data_dir else _default_tfds_dir()
    try:
        sources = [tfds.data_source(name, split=split, data_dir=str(tfds_dir), download=False)
                   for split in ("train", "test")]
        arrays = [_records_to_arrays(source[i] for i in range(len(source))) for source in sources]
    except Exception as e:  # tfds raises many types for data it cannot read; the user needs the reason
        reason = first_line(e)
        if importlib.util.find_spec("tensorflow") is None:
            raise UserError(f"tfds cannot read {name} from {tfds_dir} without TensorFlow ({reason}): use "
                            "--data-source bundled, or prepare it in array_record format where TensorFlow is "
                            "installed") from None
        prepared = _tfds_prepared(name, tfds_dir)
        if not prepared and not _network_reachable():
            raise UserError(f"tfds has no prepared {name} in {tfds_dir} and there is no network to download it: "
                            "use --data-source bundled or --data-source idx --data-dir DIR") from None
        try:
            splits = tfds.as_numpy(tfds.load(name, split=["train", "test"], data_dir=str(tfds_dir),
                                             download=not prepared, batch_size=-1))
        except Exception as e2:  # same reason as above
            raise UserError(f"tfds could not load {name} from {tfds_dir}: {first_line(e2, 10 ** 6)}") \
                from None
        arrays = [(split["image"].reshape(-1, 28, 28).astype(np.uint8), split["label"].astype(np.int32))
                  for split in splits]
    (x_train, y_train), (x_test, y_test) = arrays
    return Dataset(x_train, y_train, x_test, y_test, name=name, source="tfds", location=str(tfds_dir))


def load_dataset(source: str = "auto", dataset: str = "mnist", data_dir: str | os.PathLike | None = None) -> Dataset:
    """Loads `dataset` from `source`; `auto` only ever looks at local data."""
    if source not in SOURCES:
        raise UserError(f"unknown data source {source!r}: choose one of {', '.join(SOURCES)}")
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UserError(f"data directory {data_dir} does not exist: create it or pass another --data-dir")
    if source == "bundled":
        if dataset != "mnist":
            raise UserError(f"only mnist is bundled, not {dataset}: use --data-source idx or tfds with --data-dir")
        return load_bundled()
    if source == "idx":
        if data_dir is None:
            raise UserError("--data-source idx needs --data-dir DIR holding the four IDX files")
        return load_idx_dir(data_dir, dataset)
    if source == "tfds":
        return load_tfds(dataset, data_dir)
    # auto: IDX files in the data dir, else a prepared TFDS copy, else the bundled MNIST.
    if data_dir is not None:
        directory = Path(data_dir)
        if any(directory.glob("train-images*idx3-ubyte*")):
            return load_idx_dir(directory, dataset)
        if _tfds_prepared(dataset, directory):
            return load_tfds(dataset, directory)
        raise UserError(f"{data_dir} holds neither IDX files nor a prepared tfds {dataset}: "
                        "put the IDX files there or choose --data-source")
    if _tfds_prepared(dataset, _default_tfds_dir()):
        return load_tfds(dataset, _default_tfds_dir())
    if dataset == "mnist":
        return load_bundled()
    raise UserError(f"no local copy of {dataset} found: pass --data-dir DIR with its IDX files "
                    "(e.g. /usr/share/datasets/fashion-mnist) or use --data-source tfds")


def split_validation(n_train: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices), both sorted: the first `size` of a fixed permutation are held out."""
    held_out = np.random.default_rng(VALIDATION_SEED).permutation(n_train)[:size]
    keep = np.ones(n_train, bool)
    keep[held_out] = False
    return np.flatnonzero(keep), np.sort(held_out)


def load_splits(dataset: str, source: str, data_dir: Path | None, validation_size: int, train_limit: int | None,
                test_limit: int | None, batch_size: int) -> tuple[Dataset, dict, dict, str]:
    """(dataset, {split: (images, labels)}, the data part of the run record, a line saying what is used).

    The validation images are held out of the training images by `split_validation`, the same for every run;
    `train_limit` then takes the first N of the rest and `test_limit` the first N test images.
    """
    ds = load_dataset(source, dataset, data_dir)
    for split, labels in (("train", ds.y_train), ("test", ds.y_test)):
        if not len(labels):
            raise UserError(f"the {split} split of {ds.name} from {ds.source} ({ds.location}) holds no images: "
                            "use a copy of the dataset that holds both splits")
    if validation_size >= len(ds.y_train):
        raise UserError(f"--validation-size {validation_size} is not smaller than the {len(ds.y_train)} "
                        "training images: choose a smaller one (0 turns validation off)")
    train, validation = split_validation(len(ds.y_train), validation_size)
    train = train[:train_limit]
    if len(train) < batch_size:
        raise UserError(f"{len(train)} training images remain after --validation-size {validation_size}"
                        + (f" and --train-limit {train_limit}" if train_limit else "")
                        + f", fewer than one batch of {batch_size}: hold out fewer images or choose a smaller "
                          "--batch-size")
    splits = {"train": (ds.x_train[train], ds.y_train[train])}
    if len(validation):
        splits["val"] = (ds.x_train[validation], ds.y_train[validation])
    splits["test"] = (ds.x_test[:test_limit], ds.y_test[:test_limit])
    counts = ", ".join(f"{len(labels)} {name}" for name, (_, labels) in splits.items())
    dropped = len(train) % batch_size
    line = f"data: {ds.describe()}; using {counts}" + (
        f" (an epoch trains on {len(train) - dropped} of the {len(train)}: whole batches of {batch_size}, "
        "in a new order each epoch)" if dropped else "")
    record = {"dataset": dataset, "content": ds.content(), "test_limit": test_limit,
              "validation": {"images": len(validation), "permutation_seed": VALIDATION_SEED},
              "data_location": {"source": source, "dir": str(Path(data_dir).resolve()) if data_dir else None}}
    return ds, splits, record, line


def summary_of(ds: Dataset, splits: dict) -> dict:
    """The data as summaries and results record it: which dataset from where, and how many images each split holds
    (0 validation images: none)."""
    return {"dataset": ds.name, "source": ds.source, "location": ds.location,
            "train_images": len(splits["train"][1]), "validation_images": len(splits.get("val", ((), ()))[1]),
            "test_images": len(splits["test"][1])}
