"""A workdir: the record of one run (run.json), its metrics, summary and checkpoints, and loading it back."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mnist_jax import checkpoint, distributed, engine, models, records, settings
from mnist_jax.errors import UserError
from mnist_jax.events import EVENT_FILES


# The version of run.json's layout; a workdir of another version is refused rather than half understood. Version 2
# added the validation split (before it, the best checkpoint was chosen on the test set).
RUN_FORMAT = 2


class _Output:
    """A file or folder a run writes into its workdir; declaring one on Layout adds it to what --fresh deletes."""

    def __init__(self, name: str):
        self.name = name

    def __set_name__(self, owner, attribute: str):
        owner.OUTPUTS = (*owner.OUTPUTS, attribute)

    def __get__(self, layout, owner) -> Path:
        return self if layout is None else layout.root / self.name


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where everything of one run lives: `Layout(path).metrics` is its metrics.jsonl, and so on.

    OUTPUTS names every output a run writes, and so everything --fresh may delete (nothing else, ever).
    """

    root: Path
    OUTPUTS = ()
    run = _Output("run.json")
    metrics = _Output("metrics.jsonl")
    summary = _Output("summary.json")
    checkpoints = _Output("checkpoints")
    interrupted = _Output("interrupted")  # the place inside an epoch where a run was stopped, while there is one
    evaluation = _Output("evaluation")
    results_json = _Output("results.json")
    results_md = _Output("results.md")
    curves = _Output("curves.png")
    learning_curves = _Output("learning_curves.png")
    validation_vs_lr = _Output("validation_vs_lr.png")
    lineages = _Output("lineages.png")  # population-based training: each member's hyperparameters over the epochs
    tb = _Output("tb")  # where TensorBoard events went before they moved beside the run (see `events`)

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def outputs(self) -> list[Path]:
        """Every output: the declared ones, and TensorBoard's event files (a single run's here, a sweep member's
        in a folder of its own)."""
        events = [*self.root.glob(EVENT_FILES), *(folder for folder in self.root.iterdir()
                                                  if folder.is_dir() and not folder.is_symlink()
                                                  and any(folder.glob(EVENT_FILES)))] if self.root.is_dir() else []
        return [getattr(self, name) for name in self.OUTPUTS] + events


def config_record(config: engine.Config) -> dict:
    """The configuration as a run record holds it: without the convolution form, which may change on resume."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "conv"}


def _as_read_back(record: dict) -> dict:
    return json.loads(json.dumps(record))  # as it reads back from run.json: tuples become lists


def run_record(config: engine.Config, member: dict, data: dict) -> dict:
    """What makes two single runs the same run: a workdir refuses to resume under anything else.

    `data` is the data part of the record (data.load_splits): dataset, content digest, test limit, validation split.
    """
    members = {s.record_key: member[s.name] for s in settings.members_of()}
    return _as_read_back({"format": RUN_FORMAT, "config": config_record(config), **members, **data})


def sweep_record(config: engine.Config, members: list[dict], sweep: dict, data: dict) -> dict:
    """The sweep's run record: its members (as they start), `sweep` (its settings of role SWEEP that are part of its
    identity: shared order, search and scheduler), and `data` as in `run_record`."""
    return _as_read_back({"format": RUN_FORMAT, "kind": "sweep", "config": config_record(config),
                          "members": members, **sweep, **data})


def member_of(run: dict) -> dict:
    """A single run's member settings, from its run record."""
    return {s.name: run[s.record_key] for s in settings.members_of()}


def read_run(workdir: Path) -> dict:
    """The run record of a workdir, or a one-line error saying why there is none that this version can use."""
    run_file = Layout(workdir).run
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
            lock = open(Layout(workdir).lock, "a+")
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


def prepare_workdir(workdir: Path, description: dict, fresh: bool) -> None:
    """Makes `workdir` hold `description`'s run: new, resumed, or (with `fresh`) the old run's outputs deleted.

    --fresh deletes only Layout.OUTPUTS, and only where a run record says this project wrote them. Process 0 alone does
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
    layout = Layout(workdir)
    run_file = layout.run
    if not run_file.exists() and layout.checkpoints.exists():
        raise UserError(f"workdir {workdir} has a checkpoints/ folder but no run.json, so it is not a run this "
                        "project can resume or may delete: choose another --workdir")
    if fresh and run_file.exists():
        _delete_outputs(layout)
    records.remove_temporaries(layout.root)
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


def _delete_outputs(layout: Layout) -> None:
    """--fresh: every output of the run removed, or, where one cannot be, nothing at all. A folder that is a symbolic
    link (checkpoints kept on another disk) is emptied and the link kept; run.json goes last, so that a workdir is
    never left with outputs but no record of whose they are."""
    plan = []
    for path in sorted(layout.outputs(), key=lambda p: p == layout.run):
        if path.is_symlink() and path.is_dir():
            plan.append((path, "empty"))
        elif path.is_dir():
            plan.append((path, "tree"))
        elif path.exists() or path.is_symlink():
            plan.append((path, "file"))
    for path, how in plan:
        folders = [] if how == "file" else [d for d, _, _ in os.walk(path.resolve() if how == "empty" else path)]
        for folder in [path.parent] * (how != "empty") + [Path(f) for f in folders]:
            if not os.access(folder, os.W_OK | os.X_OK):
                raise UserError(f"--fresh cannot delete {path}: {folder} is not writable (fix its permissions, or "
                                "delete the run yourself); nothing was deleted")
    for path, how in plan:
        if how == "empty":
            for entry in path.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            print(f"--fresh: emptied {path}, a link to {path.resolve()} (the link is kept)")
        elif how == "tree":
            shutil.rmtree(path)
        else:
            path.unlink()


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
    conv = models.default_conv() if conv == "auto" else conv
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
    manager = _open_for_reading(workdir)
    try:
        (metric, value), = checkpoint.read_meta(manager, step)["selected_by"].items()
    finally:
        manager.close()
    return {"metric": metric, "value": value}


_predict_logits = jax.jit(engine.predict_logits, static_argnums=(0, 4))


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained member at one checkpoint: its config, hyperparameters, state and epoch (`step`)."""

    config: engine.Config
    member: dict
    state: engine.TrainState
    step: int

    @property
    def hyper(self) -> engine.Hyper:
        return settings.hyper(self.member)

    def predict(self, images) -> np.ndarray:
        """Logits (N, 10) of uint8 images (N, 28, 28), white digits on black as in MNIST."""
        images = model_input(images)
        # a few images are one small batch, not a padded batch of eval_batch_size
        size = max(1, min(len(images), self.config.eval_batch_size))
        return np.asarray(_predict_logits(self.config, self.state.params, self.hyper, images, size))


def model_input(images) -> np.ndarray:
    """`images` as the array a model predicts from (uint8, (N, 28, 28)); anything else is a one-line UserError."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise UserError(f"images must be uint8 of shape (N, 28, 28), not {images.dtype} {images.shape}: "
                        "prepare files with mnist_jax.predict.mnist_like")
    return images


def _open_for_reading(workdir: Path):
    """The workdir's checkpoint manager, for reading only: a workdir without checkpoints gets no empty folder."""
    if not Layout(workdir).checkpoints.is_dir():
        raise UserError(f"{workdir} has no checkpoint yet: train first")
    return checkpoint.open_manager(Layout(workdir).checkpoints)


def _restore(workdir: Path, step: int | str, abstract_of) -> tuple[Any, int, dict]:
    manager = _open_for_reading(workdir)
    try:
        chosen = _choose_step(manager, workdir, step)
        meta = checkpoint.read_meta(manager, chosen)
        abstract = checkpoint.with_sharding(abstract_of(meta), jax.sharding.SingleDeviceSharding(jax.devices()[0]))
        state, _ = checkpoint.restore(manager, chosen, abstract)
    finally:
        manager.close()
    return state, chosen, meta


def load_run(workdir: Path, step: int | str = "latest", conv: str = "auto") -> TrainedModel:
    """A single-model workdir at `step`: latest, best or an epoch number; computed in the convolution form `conv`."""
    run = read_run(workdir)
    config, member = _config_of(run, conv), member_of(run)
    abstract = jax.eval_shape(functools.partial(engine.init_member, config), settings.hyper(member))
    state, chosen, _ = _restore(workdir, step, lambda meta: abstract)
    return TrainedModel(config, member, state, chosen)


def read_sweep(sweep_dir: Path) -> dict:
    run = read_run(sweep_dir) if Layout(sweep_dir).run.exists() else {}
    if run.get("kind") != "sweep":
        raise UserError(f"{sweep_dir} is not a sweep workdir (no sweep run.json): pass the --workdir a sweep wrote")
    return run


def find_member(run: dict, spec: str) -> int:
    """Index of the member named ACTIVATION,SEED[,LR] in a sweep's run.json."""
    try:
        wanted = settings.parse_member_label(spec)
    except ValueError as e:
        raise UserError(str(e)) from None
    matches = [i for i, m in enumerate(run["members"])
               if all(_same(m[name], value) for name, value in wanted.items())]
    if not matches:
        known = ", ".join(settings.member_label(m) for m in run["members"])
        raise UserError(f"the sweep has no member {spec}: it has {known}")
    if len(matches) > 1:
        raise UserError(f"member {spec} is ambiguous: name it whole, e.g. "
                        f"{settings.member_label(run['members'][matches[0]])}")
    return matches[0]


def _same(recorded: Any, wanted: Any) -> bool:
    if isinstance(wanted, float):
        return abs(recorded - wanted) <= 1e-12 * max(1.0, abs(wanted))
    return recorded == wanted


def load_member(sweep_dir: Path, spec: str, step: int | str = "latest", conv: str = "auto") -> tuple[TrainedModel, int]:
    """One member of a sweep at `step`, and its index among the sweep's members."""
    run = read_sweep(sweep_dir)
    index = find_member(run, spec)
    config, member = _config_of(run, conv), run["members"][index]

    def abstract_of(meta: dict):
        stacked = [member] * meta["stacked_members"]
        return jax.eval_shape(jax.vmap(functools.partial(engine.init_member, config)), settings.hyper(stacked))

    state, chosen, meta = _restore(sweep_dir, step, abstract_of)
    # population-based training changes members' hyperparameters: those they had at that checkpoint
    member = meta.get("schedule", {}).get("members", run["members"])[index]
    return TrainedModel(config, member, jax.tree.map(lambda leaf: leaf[index], state), chosen), index


def load_model(workdir: Path, checkpoint: int | str = "best", member: str | None = None,
               conv: str = "auto") -> TrainedModel:
    """The model a workdir holds at `checkpoint` (latest, best or an epoch number): a single run's, or one `member`
    (ACTIVATION,SEED[,LR]) of a sweep's. Its `predict(images)` gives logits."""
    if read_run(workdir).get("kind") == "sweep":
        if member is None:
            raise UserError(f"{workdir} is a sweep: name one member with --member {settings.member_pattern()}")
        return load_member(workdir, member, checkpoint, conv)[0]
    if member is not None:
        raise UserError(f"--member is for sweep workdirs; {workdir} holds a single run")
    return load_run(workdir, checkpoint, conv)


def checkpoint_used(workdir: Path, checkpoint: str | int, model: TrainedModel, member: str | None) -> tuple[dict, str]:
    """({"checkpoint", "metric", "value"}, words): how the loaded checkpoint was chosen, and a phrase saying which
    it is, e.g. "checkpoint of epoch 3 (best by val_accuracy 0.9812)"."""
    selected = {"checkpoint": checkpoint, **selection_of(workdir, model.step)}
    if checkpoint == "latest":
        how = " (latest)"
    elif checkpoint != "best":
        how = ""
    elif selected["metric"] == "epoch":
        how = " (best: the latest, as the run had no validation split)"
    else:
        how = f" (best by {selected['metric']} {selected['value']:.4g}" + (" of all members)" if member else ")")
    return selected, f"checkpoint of epoch {model.step}{how}"
