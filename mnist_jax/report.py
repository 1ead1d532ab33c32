"""What summaries and results files say: the run's outcome, and where it was made."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax

from mnist_jax import engine, metrics, settings

PACKAGES = ("mnist_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy",
            "tensorflow-datasets")


def cpu_name() -> str:
    """The CPU model as the OS reports it (Linux: /proc/cpuinfo), else what Python's platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_avx512() -> bool | None:
    """Whether the CPU has AVX-512 (`avx512f` among its flags): the same CPU name has come with and without it, at
    2-3x the speed. None where the OS does not say (not Linux)."""
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None


def environment() -> dict:
    """JAX backend, devices, machine and package versions, for summary and results files."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"backend": jax.default_backend(), "process_count": jax.process_count(), "device_count": jax.device_count(),
            "device_kind": jax.devices()[0].device_kind, "cpu": cpu_name(), "avx512f": has_avx512(),
            "machine": f"{platform.machine()} {platform.processor()}",
            "python": platform.python_version(), "versions": versions}


def summary(config: engine.Config, member: Mapping[str, Any], rows: Sequence[dict], **extra) -> dict:
    """summary.json of a single run (train, or a member exported from a sweep) whose metrics rows are `rows`."""
    final = rows[-1]
    return {"model": config.model, "activation": member["activation"], "seed": member["seed"],
            "hyperparameters": settings.recipe(config, member), "epochs": final["epoch"],
            **metrics.metric_columns(final), "diverged": final["diverged"], **extra}
