"""`python -m mnist_jax.sweep`: every (activation x seed x learning rate) member trained at once, as one vmap.

The members' states are stacked on a leading axis and trained by one jitted `vmap` of `engine.train_epoch`, the
same function `train` runs. With several devices the member axis is sharded over a mesh.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from mnist_jax import cli, distributed
from mnist_jax.errors import UserError
from mnist_jax.models import ACTIVATIONS, MODELS

MEMBER_AXIS = "members"


@dataclasses.dataclass(frozen=True)
class Member:
    activation: str
    seed: int
    lr: float

    def label(self) -> str:
        return f"{self.activation},{self.seed},{self.lr:g}"


def vmap_chunk(text: str) -> str | int | None:
    if text in ("auto", "all"):
        return None if text == "all" else text
    return cli.positive_int(text)


def parse_list(kind, text: str, what: str) -> list:
    try:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        raise UserError(f"{what} {text!r} must be a comma-separated list ({e})") from None
    if not values:
        raise UserError(f"{what} is empty")
    return values


def parse_args(argv: Sequence[str] | None):
    parser = cli.Parser(prog="python -m mnist_jax.sweep", description=__doc__.split(":", 1)[1].strip())
    cli.add_recipe_args(parser)
    parser.add_argument("--activations", default=",".join(ACTIVATIONS),
                        help="comma-separated activations (default: %(default)s)")
    parser.add_argument("--seeds", type=cli.positive_int, default=3, help="seeds 0..N-1 (default: %(default)s)")
    parser.add_argument("--seed-list", default=None, help="explicit seeds, e.g. 3,7,11 (overrides --seeds)")
    parser.add_argument("--lrs", default=None,
                        help="comma-separated peak learning rates (default: the optimizer's, see --optimizer)")
    parser.add_argument("--shared-order", action="store_true",
                        help="give every member the same batch order (default: each member's from its seed)")
    parser.add_argument("--vmap-chunk", type=vmap_chunk, default="auto",
                        help="how many members one compiled step trains side by side (jax.vmap); groups of that "
                             "many train one after another (lax.map over whole epochs). all: one vmap of every "
                             "member; auto: 1 on CPU, where it measured fastest, all on GPU and TPU; the results "
                             "are the same either way, up to float rounding (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="(default: checkpoints/sweep-<model>, followed by every flag of the sweep that differs "
                             "from its default, e.g. -lrs0.001,0.01)")
    parser.add_argument("--export-member", default=None, metavar="ACTIVATION,SEED[,LR]",
                        help="write that member of the sweep in --workdir as a single-model workdir at --to")
    parser.add_argument("--to", type=Path, default=None, help="destination of --export-member")
    cli.add_split_args(parser)
    cli.add_data_args(parser)
    cli.add_cache_arg(parser)
    distributed.add_args(parser)
    args = parser.parse_args(argv)
    if args.workdir is None:
        flags = ("activations", "seeds", "seed_list", "lrs", "shared_order", *(f for f in cli.RUN_FLAGS if f != "lr"))
        args.workdir = cli.default_workdir(parser, args, f"sweep-{args.model}", flags)
    return args


def member_grid(args, default_lr: float) -> list[Member]:
    activations = parse_list(str, args.activations, "--activations")
    for activation in activations:
        if activation not in ACTIVATIONS:
            raise UserError(f"unknown activation {activation!r} in --activations: choose from {', '.join(ACTIVATIONS)}")
    if args.seeds > cli.SEED_LIMIT:
        raise UserError(f"--seeds {args.seeds} goes past the PRNG's 32-bit seeds: choose fewer")
    seeds = parse_list(cli.seed, args.seed_list, "--seed-list") if args.seed_list else list(range(args.seeds))
    lrs = parse_list(cli.positive_float, args.lrs, "--lrs") if args.lrs else [default_lr]
    for flag, values in (("--activations", activations), ("--seed-list", seeds), ("--lrs", lrs)):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise UserError(f"{flag} names {', '.join(repeated)} more than once: every member must be unique")
    return [Member(a, s, lr) for a, s, lr in itertools.product(activations, seeds, lrs)]


def stacked_hyper(members: Sequence[Member]):
    import jax.numpy as jnp

    from mnist_jax.engine import Hyper

    return Hyper(jnp.asarray([ACTIVATIONS.index(m.activation) for m in members], jnp.int32),
                 jnp.asarray([m.lr for m in members], jnp.float32),
                 jnp.asarray([m.seed for m in members], jnp.uint32))


def sweep_description(config, members, shared_order: bool, data: dict) -> dict:
    """The sweep's run record; `data` as in workdir.run_description."""
    from mnist_jax.workdir import RUN_FORMAT, config_record

    description = {"format": RUN_FORMAT, "kind": "sweep", "config": config_record(config),
                   "members": [dataclasses.asdict(m) for m in members], "shared_order": shared_order, **data}
    return json.loads(json.dumps(description))


def member_mesh():
    """A mesh of every device of every process along the member axis."""
    import jax
    from jax.sharding import Mesh

    return Mesh(jax.devices(), (MEMBER_AXIS,))


def init_stacked(config, hyper, shared_order: bool):
    """Stacked initial states; with `shared_order` every member takes the data-order key of seed 0."""
    import jax

    from mnist_jax import engine

    state = jax.vmap(functools.partial(engine.init_member, config))(hyper)
    if shared_order:
        shared_key = jax.random.split(jax.random.PRNGKey(0))[1]
        state = state.replace(data_key=jax.numpy.broadcast_to(shared_key, state.data_key.shape))
    return state


def default_vmap_chunk() -> int | None:
    """Members trained side by side in one step, by backend: on CPU one member's whole epoch after another ran
    fastest (a member inside a wide vmap costs more than alone: its state competes for the caches), on GPU and TPU
    the vmap of all members (None)."""
    import jax

    return 1 if jax.default_backend() == "cpu" else None


def sweep_steps(config, shared_order: bool, vmap_chunk: int | None, mesh):
    """`engine.train_steps` over stacked members: (state, hyper, x, y, orders, first, steps) -> (state, sums), with
    `orders` each member's epoch order (`sweep_orders`).

    Each device takes its share of the members (`shard_map` over the member axis of `mesh`). There, `vmap_chunk`
    members at a time are trained side by side by a `vmap`, and the chunks one after another by a `lax.map`;
    `None` (or at least the device's share) vmaps them all. With a shared order and a full vmap the order is taken
    out of the vmap, so the batch gather, conv1's input windows and conv1's weight gradient are computed once for all
    members (one wide matmul) instead of once per member.
    """
    import jax
    from jax.sharding import PartitionSpec

    from mnist_jax import engine

    def local(state, hyper, x, y, orders, first, steps):
        member_steps = functools.partial(engine.train_steps, config, x_train=x, y_train=y, first=first, steps=steps)
        n = state.epoch.shape[0]
        if vmap_chunk is not None and vmap_chunk < n:
            # batch_size=1 would still vmap each member (over an axis of 1), which XLA:CPU runs slower
            return jax.lax.map(lambda sho: member_steps(*sho[:2], order=sho[2]), (state, hyper, orders),
                               batch_size=vmap_chunk if vmap_chunk > 1 else None)
        if shared_order:
            return jax.vmap(lambda s, h: member_steps(s, h, order=orders[0]))(state, hyper)
        return jax.vmap(lambda s, h, o: member_steps(s, h, order=o))(state, hyper, orders)

    if mesh.size == 1:
        return local
    members, replicated = PartitionSpec(MEMBER_AXIS), PartitionSpec()

    def sharded(state, hyper, x, y, orders, first, steps):
        return jax.shard_map(functools.partial(local, steps=steps), mesh=mesh,
                             in_specs=(members, members, replicated, replicated, members, replicated),
                             out_specs=(members, members))(state, hyper, x, y, orders, first)

    return sharded


def sweep_orders(config):
    """Every member's batch order for the epoch after its `epoch`: (members, steps, batch)."""
    import jax

    from mnist_jax import engine

    return jax.vmap(functools.partial(engine.epoch_order, config))


def sweep_epoch(config, shared_order: bool, vmap_chunk: int | None, mesh):
    """A whole epoch of every member in one program: (state, hyper, x, y) -> (state, per-member metrics)."""
    from mnist_jax import engine

    steps = sweep_steps(config, shared_order, vmap_chunk, mesh)

    def epoch(state, hyper, x, y):
        return engine.end_epoch(config, *steps(state, hyper, x, y, sweep_orders(config)(state), 0,
                                               config.steps_per_epoch))

    return epoch


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.export_member or args.to:
        from mnist_jax.export import export_member

        if not (args.export_member and args.to):
            raise UserError("--export-member and --to go together: --export-member relu,3 --to DIR")
        return export_member(args.workdir, args.export_member, args.to)
    with contextlib.ExitStack() as held:  # the workdir's lock lives as long as this launch
        return run_sweep(args, held)


def run_sweep(args, held: contextlib.ExitStack) -> int:
    started = time.time()
    cli.enable_compile_cache(not args.no_compile_cache)
    distributed.initialize(args)

    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from mnist_jax import checkpoint, engine, events, results
    from mnist_jax.loop import Run, fit
    from mnist_jax.report import environment
    from mnist_jax.workdir import hold, prepare_workdir

    members = member_grid(args, engine.OPTIMIZERS[args.optimizer].learning_rate)
    ds, splits, data_record = cli.load_data(args)
    config = cli.build_config(args, len(splits["train"][1]))
    mesh = member_mesh()
    padded = list(members) + [members[-1]] * (-len(members) % mesh.size)  # padding repeats the last member
    members_sharding = NamedSharding(mesh, PartitionSpec(MEMBER_AXIS))
    hyper = distributed.put(stacked_hyper(padded), members_sharding)
    data = distributed.put(splits, NamedSharding(mesh, PartitionSpec()))  # on the devices once, shared
    held_out = {name: split for name, split in data.items() if name != "train"}
    chunk = default_vmap_chunk() if args.vmap_chunk == "auto" else args.vmap_chunk

    description = sweep_description(config, members, args.shared_order, data_record)
    held.enter_context(hold(args.workdir))
    prepare_workdir(args.workdir, description, args.fresh)
    print(f"sweep: {len(members)} members ({len(padded) - len(members)} padding) of {args.model} on "
          f"{mesh.size} {jax.default_backend()} device(s) in {jax.process_count()} process(es), {config.epochs} "
          f"epochs, {'all' if chunk is None else chunk} member(s) side by side")

    evaluate = jax.jit(jax.vmap(functools.partial(engine.evaluate_splits, config), in_axes=(0, 0, None)))
    init = jax.jit(functools.partial(init_stacked, config, shared_order=args.shared_order),
                   out_shardings=members_sharding)
    run = Run(init=lambda: init(hyper),
              abstract=checkpoint.with_sharding(jax.eval_shape(init, hyper), members_sharding),
              steps=sweep_steps(config, args.shared_order, chunk, mesh), order=sweep_orders(config),
              epoch_args=(hyper, *data["train"]),
              steps_per_epoch=config.steps_per_epoch, batch_size=config.batch_size,
              evaluate=lambda state: evaluate(state.params, hyper, held_out),
              learning_rate=functools.partial(engine.learning_rate, config, np.array([m.lr for m in members])),
              label=f"sweep {args.model} x{len(members)}",
              describe=lambda row: describe_row(row, config.epochs),
              hparams=[events.hparams(config, dataclasses.asdict(m)) for m in members],
              piece_member_steps=MODELS[config.model].piece_member_steps,
              members_per_device=len(padded) // mesh.size,
              members=[dataclasses.asdict(m) for m in members])
    state, rows, finished_before = fit(args.workdir, run, config.epochs,
                                       meta={"run": description, "stacked_members": len(padded)})
    if not distributed.is_primary():
        return 0
    if finished_before:
        print(f"{args.workdir} already holds a finished sweep of {config.epochs} epochs")
        if (args.workdir / "results.md").exists():  # a finished run started again writes nothing
            print((args.workdir / "results.md").read_text())
            return 0
    report = results.write_results(args.workdir, rows, environment={
        **environment(), "wall_seconds": round(time.time() - started, 2), "vmap_chunk": chunk,
        "conv": config.conv if config.model == "lenet" else None,
        "data": {"dataset": ds.name, "source": ds.source, **cli.image_counts(splits)}})
    print(report)
    return 0


def describe_row(row: dict, epochs: int) -> str:
    """One console line per sweep epoch: the spread of the members' validation (else test) accuracy."""
    from mnist_jax.metrics import SELECTION

    members = row["members"]
    metric = SELECTION if SELECTION in members[0] else "test_accuracy"
    sound = [m for m in members if not m["diverged"]]
    text = f"epoch {row['epoch']:3d}/{epochs}  {row['epoch_seconds']:.2f} s  "
    if sound:
        best, worst = (max(sound, key=lambda m: m[metric]), min(sound, key=lambda m: m[metric]))
        name = lambda m: Member(m["activation"], m["seed"], m["lr"]).label()  # noqa: E731
        text += f"{metric}: best {name(best)} {best[metric]:.2%}  worst {name(worst)} {worst[metric]:.2%}"
    return text + f"  diverged {len(members) - len(sound)}/{len(members)}"


if __name__ == "__main__":
    cli.run(main)
