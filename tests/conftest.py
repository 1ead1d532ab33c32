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


def kill_after_first_checkpoint_then_resume(argv, env, workdir, finished_marker: str):
    """Starts `argv`, SIGKILLs it once checkpoint 1 exists, checks it had not finished, runs it again to the end."""
    import signal
    import subprocess
    import time

    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (workdir / "checkpoints" / "1").is_dir() and process.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (workdir / finished_marker).exists(), "the run finished before it could be killed"
    resumed = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
