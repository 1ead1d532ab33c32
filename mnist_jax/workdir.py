"""A workdir: the record of one run (run.json), its metrics, summary and checkpoints, and loading it back."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import functools
import json
import shutil
from pathlib import Path

import jax

from mnist_jax import checkpoint, distributed, engine, records
from mnist_jax.errors import UserError


# The version of run.json's layout; a workdir of another version is refused rather than half understood. Version 2
# added the validation split (before it, the best checkpoint was chosen on the test set).
RUN_FORMAT = 2


def run_description(config: engine.Config, activation: str, learning_rate: float, seed: int, data: dict) -> dict:
    """What makes two runs the same run: a workdir refuses to resume under anything else.

    `data` is the data part of the record (cli.load_data): dataset, test limit and validation split.
    """
    description = {"format": RUN_FORMAT, "config": config_record(config), "activation": activation,
                   "learning_rate": learning_rate, "seed": seed, **data}
    return json.loads(json.dumps(description))  # as it reads back from run.json: tuples become lists


def member_name(member: dict) -> str:
    """The folder of one member (its TensorBoard run, a sweep member's evaluation): <activation>-seed<s>-lr<lr>."""
    return f"{member['activation']}-seed{member['seed']}-lr{member['lr']:g}"


def config_record(config: engine.Config) -> dict:
    """The configuration as a run record holds it: without the convolution form, which may change on resume."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "conv"}


def recipe(config: engine.Config, learning_rate: float) -> dict:
    """The training recipe as summaries record it."""
    return {"learning_rate": learning_rate, "optimizer": config.optimizer, "schedule": config.schedule,
            "weight_decay": config.weight_decay, "batch_size": config.batch_size, "epochs": config.epochs,
            "hidden": list(config.hidden)}


def read_run(workdir: Path) -> dict:
    """The run record of a workdir, or a one-line error saying why there is none that this version can use."""
    run_file = Path(workdir) / "run.json"
    if not run_file.exists():
        raise UserError(f"{workdir} is not a training workdir (no run.json): pass the --workdir a run wrote")
    run = records.read_json(run_file)
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT:
        raise UserError(f"{workdir} was written by an earlier mnist_jax, before validation splits (its best "
                        "checkpoint was chosen on the test set): train again into another --workdir, or rerun its "
                        "command with --fresh to replace it")
    return run


@contextlib.contextmanager
def hold(workdir: Path):
    """One launch per workdir: an OS lock on <workdir>/.lock for as long as this is entered.

    The kernel releases it when the process ends, however it ends, so it is never stale. A second launch gets a
    one-line error naming the holder and changes nothing. In a multi-process launch process 0 holds it for all.
    A read-only workdir is not locked: nobody can write there, and reporting a finished run writes nothing.
    """
    lock, problem = None, None
    if distributed.is_primary():
        Path(workdir).mkdir(parents=True, exist_ok=True)
        if os.access(workdir, os.W_OK):
            lock = open(Path(workdir) / ".lock", "a+")
            problem = _take(lock, workdir)
    if not distributed.primary_says(problem is None):
        problem = problem or UserError(f"workdir {workdir} is in use by another launch (see process 0)")
    try:
        if problem:
            raise problem
        yield
    finally:
        if lock is not None:
            lock.close()


def _take(lock, workdir: Path) -> UserError | None:
    """Locks the open lock file and writes who holds it, or returns the error naming the holder."""
    import fcntl
    import socket
    import time

    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        return UserError(f"workdir {workdir} is in use by {holder}: wait for that run to end, or choose another "
                         "--workdir")
    lock.seek(0)
    lock.truncate()
    lock.write(f"PID {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    lock.flush()
    return None


# Everything a run writes into its workdir, and so everything --fresh may delete (nothing else, ever).
RUN_OUTPUTS = ("run.json", "metrics.jsonl", "summary.json", "checkpoints", "interrupted", "evaluation", "results.json",
               "results.md", "learning_curves.png", "validation_vs_lr.png", "curves.png", "tb")


def prepare_workdir(workdir: Path, description: dict, fresh: bool) -> None:
    """Makes `workdir` hold `description`'s run: new, resumed, or (with `fresh`) the old run's outputs deleted.

    --fresh deletes only RUN_OUTPUTS, and only where a run record says this project wrote them. Process 0 alone does
    this in a multi-process launch; the others learn whether it could.
    """
    problem = None
    if distributed.is_primary():
        try:
            _prepare(workdir, description, fresh)
        except UserError as e:
            problem = e
    if not distributed.primary_says(problem is None):
        raise problem or UserError(f"process 0 could not prepare workdir {workdir} (see its error)")


def _prepare(workdir: Path, description: dict, fresh: bool) -> None:
    run_file = workdir / "run.json"
    if not run_file.exists() and (workdir / "checkpoints").exists():
        raise UserError(f"workdir {workdir} has a checkpoints/ folder but no run.json, so it is not a run this "
                        "project can resume or may delete: choose another --workdir")
    if fresh and run_file.exists():
        for name in RUN_OUTPUTS:
            path = workdir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    if run_file.exists():
        stored = read_run(workdir)
        if _identity(stored, stored) != _identity(description, stored):
            diffs = _differences(_identity(stored, stored), _identity(description, stored))
            raise UserError(f"workdir {workdir} holds a different run ({diffs}): choose another --workdir (left "
                            "out, each configuration gets its own), or pass --fresh to delete that run's record, "
                            "metrics, checkpoints and evaluations")
        return
    workdir.mkdir(parents=True, exist_ok=True)
    records.write_json(run_file, description)


def _identity(run: dict, stored: dict) -> dict:
    """What must match for a workdir to resume: all of the record but where the data was read from (a data
    directory may move; the digest of its content must not change), and but the digest where the `stored` record
    predates it."""
    return {k: v for k, v in run.items() if k != "data_location" and (k != "content" or k in stored)}


def _differences(stored: dict, wanted: dict, prefix: str = "") -> str:
    out = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, f"{prefix}{key}.")
            out += [inner] if inner else []
        elif a != b:
            out.append(f"{prefix}{key} was {a}, now {b}")
    return "; ".join(out)


def read_metrics(path: Path, up_to_epoch: int) -> list[dict]:
    """metrics.jsonl lines of epochs that have a checkpoint; later ones were lost with the process."""
    return [row for row in records.read_rows(path) if row["epoch"] <= up_to_epoch]


def abstract_member(config: engine.Config, hyper: engine.Hyper, sharding: jax.sharding.Sharding):
    """The shapes, dtypes and placement of a member's TrainState, to restore a checkpoint into."""
    abstract = jax.eval_shape(functools.partial(engine.init_member, config), hyper)
    return checkpoint.with_sharding(abstract, sharding)


def _config_of(run: dict, conv: str) -> engine.Config:
    return engine.Config(**{**run["config"], "hidden": tuple(run["config"]["hidden"]), "conv": conv})


def _choose_step(manager, workdir: Path, step: int | str) -> int:
    """latest, best or an epoch number -> a step the manager holds, or a one-line error naming what it holds."""
    steps = manager.all_steps()
    if not steps:
        raise UserError(f"{workdir} has no checkpoint yet: train first")
    chosen = {"latest": manager.latest_step(), "best": manager.best_step()}.get(step, step)
    if chosen not in steps:
        raise UserError(f"{workdir} has no checkpoint {step}: it has {', '.join(map(str, steps))}")
    return int(chosen)


def selection_of(workdir: Path, step: int) -> dict:
    """{"metric", "value"}: the score checkpoint `step` was kept by (metrics.selection_score, mean over members
    in a sweep), as saved with it."""
    manager = checkpoint.open_manager(Path(workdir) / "checkpoints")
    try:
        (metric, value), = checkpoint.read_meta(manager, step)["selected_by"].items()
    finally:
        manager.close()
    return {"metric": metric, "value": value}


def load_run(workdir: Path, step: int | str = "latest", conv: str = "auto"):
    """(config, hyper, state, step) of a single-model workdir at `step`: latest, best or an epoch number; the model
    computed in the convolution form `conv`."""
    run = read_run(workdir)
    config = _config_of(run, conv)
    hyper = engine.Hyper.create(run["activation"], run["learning_rate"], run["seed"])
    manager = checkpoint.open_manager(Path(workdir) / "checkpoints")
    try:
        chosen = _choose_step(manager, workdir, step)
        one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        state, _ = checkpoint.restore(manager, chosen, abstract_member(config, hyper, one_device))
    finally:
        manager.close()
    return config, hyper, state, chosen


def read_sweep(sweep_dir: Path) -> dict:
    run = read_run(sweep_dir) if (Path(sweep_dir) / "run.json").exists() else {}
    if run.get("kind") != "sweep":
        raise UserError(f"{sweep_dir} is not a sweep workdir (no sweep run.json): pass the --workdir a sweep wrote")
    return run


def find_member(run: dict, spec: str) -> int:
    """Index of the member named ACTIVATION,SEED[,LR] in a sweep's run.json."""
    parts = spec.split(",")
    try:
        activation, seed, lr = parts[0], int(parts[1]), (float(parts[2]) if len(parts) > 2 else None)
    except (IndexError, ValueError):
        raise UserError(f"member {spec!r} must be ACTIVATION,SEED[,LR], e.g. relu,3 or relu,3,0.001") from None
    matches = [i for i, m in enumerate(run["members"]) if m["activation"] == activation and m["seed"] == seed
               and (lr is None or abs(m["lr"] - lr) <= 1e-12 * max(1.0, abs(lr)))]
    if not matches:
        known = ", ".join(f"{m['activation']},{m['seed']},{m['lr']:g}" for m in run["members"])
        raise UserError(f"the sweep has no member {spec}: it has {known}")
    if len(matches) > 1:
        raise UserError(f"member {spec} is ambiguous: add its learning rate, e.g. {spec},{run['members'][matches[0]]['lr']:g}")
    return matches[0]


def load_sweep_member(sweep_dir: Path, spec: str, step: int | str = "latest", conv: str = "auto"):
    """(config, hyper, member state, step, member dict) of one member of a sweep at `step`."""
    run = read_sweep(sweep_dir)
    index = find_member(run, spec)
    config = _config_of(run, conv)
    member = run["members"][index]
    manager = checkpoint.open_manager(Path(sweep_dir) / "checkpoints")
    try:
        chosen = _choose_step(manager, sweep_dir, step)
        stacked = checkpoint.read_meta(manager, chosen)["stacked_members"]
        hyper_stack = jax.eval_shape(lambda: engine.Hyper.create(0, 0.0, 0))
        hyper_stack = jax.tree.map(lambda s: jax.ShapeDtypeStruct((stacked, *s.shape), s.dtype), hyper_stack)
        abstract = jax.eval_shape(jax.vmap(functools.partial(engine.init_member, config)), hyper_stack)
        abstract = checkpoint.with_sharding(abstract, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
        state, _ = checkpoint.restore(manager, chosen, abstract)
    finally:
        manager.close()
    hyper = engine.Hyper.create(member["activation"], member["lr"], member["seed"])
    return config, hyper, jax.tree.map(lambda leaf: leaf[index], state), chosen, member, index


def load_model(workdir: Path, step: int | str = "latest", member: str | None = None, conv: str = "auto"):
    """(config, hyper, state, step) of a single-model workdir, or of one --member of a sweep workdir."""
    if read_run(workdir).get("kind") == "sweep":
        if member is None:
            raise UserError(f"{workdir} is a sweep: name one member with --member ACTIVATION,SEED[,LR]")
        return load_sweep_member(workdir, member, step, conv)[:4]
    if member is not None:
        raise UserError(f"--member is for sweep workdirs; {workdir} holds a single run")
    return load_run(workdir, step, conv)
