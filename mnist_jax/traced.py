"""Traced programs kept across launches of the command line, beside the persistent compilation cache.

Before XLA compiles a program (what the compilation cache keeps), JAX traces its Python functions and lowers them to
StableHLO: about a second of every launch of `train` on a slow CPU. `compile` exports that lowered program
(`jax.export`) to `<compilation cache>/traced/` the first time, and later launches load it instead of tracing; XLA
then finds the compiled program in its own cache. The numbers are the same to the bit either way.

A program is found again only under the same key: the source of every module of this package, the versions of
Python and of the libraries that trace, JAX's settings, the function (a module-level function or a
`functools.partial` of one, with its fixed arguments) and the shapes, dtypes and shardings of its arguments. Where
any of that cannot be told from the outside (a closure, an object without a stable description), where several
devices or processes take part, or where the process was not started as a command line (`enable`: Python code of
your own, a test's patch say, may change what is traced without changing the source), the program is traced as
usual. An entry is a pickle (the exported program and its output's tree structure): like the compiled programs
beside it, the cache folder is to be written by its user alone.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import pickle
import sys
import types
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from jax import export

from mnist_jax import records
from mnist_jax.errors import UserError

_enabled = False
_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "ml_dtypes")


def enable() -> None:
    """Keeps traced programs from here on in this process, where the compilation cache is on (a process started as
    a command line: cli.run)."""
    global _enabled
    _enabled = True


def compile(fun: Callable, *args, out_shardings: Any = None, compiler_options: dict | None = None):
    """`jax.jit(fun, ...)` lowered for `args` (arrays or ShapeDtypeStructs) and compiled: a `jax.stages.Compiled`,
    from the kept traced program where there is one."""
    jit_options = {"compiler_options": compiler_options}
    if out_shardings is not None:
        jit_options["out_shardings"] = out_shardings
    leaves, in_tree = jax.tree.flatten(args)
    path = _entry(fun, leaves, in_tree, out_shardings, compiler_options)
    kept = None if path is None else _kept(path, fun, leaves, in_tree)
    if kept is None:
        return jax.jit(fun, **jit_options).lower(*args).compile()
    exported, out_tree = kept

    def call(*args):
        return jax.tree.unflatten(out_tree, exported.call(*jax.tree.leaves(args)))

    return jax.jit(call, **jit_options).lower(*args).compile()


def jit(fun: Callable, **options) -> Callable:
    """`fun` as `jax.jit(fun, **options)` calls it: compiled (by `compile`) on its first call with each tree, shapes,
    dtypes and shardings of arguments, then called."""
    compiled = {}

    def call(*args):
        leaves, tree = jax.tree.flatten(args)
        key = (tree, tuple((np.shape(x), str(x.dtype), getattr(x, "sharding", None)) for x in leaves))
        if key not in compiled:
            compiled[key] = compile(fun, *args, **options)
        return compiled[key](*args)

    return call


def _kept(path: Path, fun: Callable, leaves: list, in_tree) -> tuple[Any, Any] | None:
    """(exported program, its output's tree) kept at `path`; where there is none yet, or one cut short or damaged,
    exported now and kept; None where `fun` cannot be exported (e.g. a custom call with no stability guarantee)."""
    try:
        serialized, out_tree = pickle.loads(path.read_bytes())
        return export.deserialize(serialized), out_tree
    except Exception:
        pass
    out_trees = []

    def flat(*leaves):
        outputs, tree = jax.tree.flatten(fun(*jax.tree.unflatten(in_tree, leaves)))
        out_trees.append(tree)
        return outputs

    try:
        exported = export.export(jax.jit(flat))(*leaves)
    except Exception:
        return None
    try:  # a cache that cannot be written only means tracing again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        records.write_bytes(path, pickle.dumps((exported.serialize(), out_trees[0])))
    except (OSError, UserError):
        pass
    return exported, out_trees[0]


def _entry(fun: Callable, leaves: list, in_tree, out_shardings: Any, compiler_options: dict | None) -> Path | None:
    """Where the traced program of this call is kept, or None where it is not kept."""
    directory = jax.config.jax_compilation_cache_dir
    if not _enabled or not directory or jax.process_count() > 1 or jax.device_count() > 1:
        return None
    try:
        described = _describe(fun)
    except _Untold:
        return None
    key = repr((_code(), sorted(jax.config.values.items()), jax.devices()[0].device_kind, described, str(in_tree),
                [(np.shape(leaf), str(leaf.dtype), str(getattr(leaf, "sharding", None))) for leaf in leaves],
                out_shardings, sorted((compiler_options or {}).items())))
    if " at 0x" in key:  # something described by its address: not the same in the next launch
        return None
    return Path(directory) / "traced" / hashlib.sha256(key.encode()).hexdigest()


def _describe(value: Any) -> Any:
    """What tells a function apart in the key: a module-level function by its name, a partial by its function and
    its fixed arguments (described alike); a value by itself (repr'd in the key, where one shown by its address is
    caught). Raises _Untold for a closure, another callable, or an array (whose repr may leave values out)."""
    if isinstance(value, functools.partial):
        return (_describe(value.func), tuple(_describe(v) for v in value.args),
                tuple(sorted((k, _describe(v)) for k, v in value.keywords.items())))
    if isinstance(value, types.FunctionType) and value.__closure__ is None and "<" not in value.__qualname__:
        return f"{value.__module__}.{value.__qualname__}"
    if callable(value) or isinstance(value, (np.ndarray, jax.Array)):
        raise _Untold
    return value


class _Untold(Exception):
    """A function whose traced program the key could not tell apart from another's."""


@functools.cache
def _code() -> str:
    """This package's source, and the versions of Python and of the libraries that trace."""
    source = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        source.update(path.name.encode() + path.read_bytes())
    return repr((source.hexdigest(), sys.version, [importlib.metadata.version(name) for name in _LIBRARIES]))
