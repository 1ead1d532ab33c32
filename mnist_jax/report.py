"""What a results file says about where it was made."""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("mnist_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy",
            "tensorflow-datasets")


def environment() -> dict:
    """JAX backend, devices, machine and package versions, for summary and results files."""
    import jax

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"backend": jax.default_backend(), "device_count": jax.device_count(),
            "device_kind": jax.devices()[0].device_kind, "machine": f"{platform.machine()} {platform.processor()}",
            "python": platform.python_version(), "versions": versions}
