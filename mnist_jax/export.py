"""Taking one member out of a sweep workdir as an ordinary single-model workdir."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax

from mnist_jax import checkpoint, engine
from mnist_jax.errors import UserError
from mnist_jax.workdir import prepare_workdir, read_metrics, run_description


def read_sweep(sweep_dir: Path) -> dict:
    run_file = Path(sweep_dir) / "run.json"
    run = json.loads(run_file.read_text()) if run_file.exists() else {}
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


def load_sweep_member(sweep_dir: Path, spec: str, step: int | str = "latest"):
    """(config, hyper, member state, step, member dict) of one member of a sweep at `step`."""
    run = read_sweep(sweep_dir)
    index = find_member(run, spec)
    config = engine.Config(**{**run["config"], "hidden": tuple(run["config"]["hidden"])})
    member = run["members"][index]
    manager = checkpoint.open_manager(Path(sweep_dir) / "checkpoints")
    try:
        steps = manager.all_steps()
        chosen = {"latest": manager.latest_step(), "best": manager.best_step()}.get(step, step)
        if chosen not in steps:
            raise UserError(f"{sweep_dir} has no checkpoint {step}: it has {', '.join(map(str, steps)) or 'none'}")
        stacked = checkpoint.read_meta(manager, chosen)["stacked_members"]
        hyper_stack = jax.eval_shape(lambda: engine.Hyper.create(0, 0.0, 0))
        hyper_stack = jax.tree.map(lambda s: jax.ShapeDtypeStruct((stacked, *s.shape), s.dtype), hyper_stack)
        abstract = jax.eval_shape(jax.vmap(functools.partial(engine.init_member, config)), hyper_stack)
        abstract = checkpoint.with_sharding(abstract, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
        state, _ = checkpoint.restore(manager, chosen, abstract)
    finally:
        manager.close()
    hyper = engine.Hyper.create(member["activation"], member["lr"], member["seed"])
    return config, hyper, jax.tree.map(lambda leaf: leaf[index], state), int(chosen), member, index


def export_member(sweep_dir: Path, spec: str, to: Path) -> int:
    """Writes member `spec` of the sweep at its latest epoch as a workdir that train, evaluate and predict accept."""
    run = read_sweep(sweep_dir)
    config, hyper, state, step, member, index = load_sweep_member(sweep_dir, spec)
    description = run_description(config, member["activation"], member["lr"], member["seed"], run["dataset"],
                                  run["test_limit"])
    prepare_workdir(Path(to), description, fresh=False)
    rows = []
    for row in read_metrics(Path(sweep_dir) / "metrics.jsonl", step):
        m = row["members"][index]
        rows.append({"epoch": row["epoch"], "train_loss": m["train_loss"], "train_accuracy": m["train_accuracy"],
                     "test_loss": m["test_loss"], "test_accuracy": m["test_accuracy"],
                     "epoch_seconds": row["epoch_seconds"], "images_per_second": row["images_per_second"]})
    (Path(to) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manager = checkpoint.open_manager(Path(to) / "checkpoints")
    try:
        checkpoint.save(manager, step, state, {"run": description, "epoch": step, "exported_from": str(sweep_dir)},
                        {checkpoint.BEST_METRIC: rows[-1]["test_accuracy"] if rows else 0.0})
        manager.wait_until_finished()
    finally:
        manager.close()
    if rows:
        summary = {"model": config.model, "activation": member["activation"], "seed": member["seed"],
                   "hyperparameters": {"learning_rate": member["lr"], "batch_size": config.batch_size,
                                       "weight_decay": config.weight_decay, "epochs": config.epochs},
                   "epochs": step, "test_accuracy": rows[-1]["test_accuracy"], "test_loss": rows[-1]["test_loss"],
                   "diverged": bool(state.diverged), "exported_from": str(sweep_dir)}
        (Path(to) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"exported member {member['activation']},{member['seed']},{member['lr']:g} of {sweep_dir} at epoch {step} "
          f"to {to}")
    return 0
