"""Shared fixtures: small slices of the bundled MNIST, so tests are fast and need no network."""

import numpy as np
import pytest

from mnist_jax.data import load_bundled


@pytest.fixture(scope="session")
def mnist():
    return load_bundled()


@pytest.fixture(scope="session")
def small_mnist(mnist):
    """2048 training and 512 test images: enough to see learning in a few seconds."""
    return (np.asarray(mnist.x_train[:2048]), np.asarray(mnist.y_train[:2048]),
            np.asarray(mnist.x_test[:512]), np.asarray(mnist.y_test[:512]))


@pytest.fixture(scope="session", autouse=True)
def compile_cache_in_tmp(tmp_path_factory):
    """Keeps the tests' compiled programs out of the user's cache; subprocesses inherit it."""
    import os

    os.environ["MNIST_JAX_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla-cache"))
