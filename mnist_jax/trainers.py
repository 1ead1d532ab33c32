"""The two things the host loop trains (loop.Trainer): one model, and a population of members.

Each holds its data on the devices once, the shardings of its mesh and its jitted programs; the numbers come from
the pure functions of mnist_jax.engine (one member) and mnist_jax.population (stacked members).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mnist_jax import checkpoint, distributed, engine, metrics, population, settings, traced
from mnist_jax.errors import UserError
from mnist_jax.models import MODELS

DATA_AXIS = "data"  # the mesh axis a single model's batch is split over


class Single:
    """One model, data parallel over every device of every process (parameters replicated, batches split)."""

    members = None
    members_per_device = 1

    def __init__(self, config: engine.Config, member: dict, splits: dict):
        n_devices = jax.device_count()
        if config.batch_size % n_devices:
            raise UserError(f"--batch-size {config.batch_size} does not split over {n_devices} devices: choose a "
                            f"multiple of {n_devices}")
        mesh = Mesh(jax.devices(), (DATA_AXIS,))
        self.config, self.member = config, member
        self._replicated = NamedSharding(mesh, PartitionSpec())
        self.hyper = distributed.put(settings.hyper(member), self._replicated)  # beside the replicated state
        self._batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS)) if n_devices > 1 else None
        on_devices = distributed.put(splits, self._replicated)
        self._train = on_devices["train"]
        self._held_out = {name: split for name, split in on_devices.items() if name != "train"}
        self._evaluate = traced.jit(functools.partial(engine.evaluate_splits, config))
        self.label = f"{config.model}/{member['activation']}"
        self.steps_per_epoch, self.batch_size = config.steps_per_epoch, config.batch_size
        self.piece_member_steps = MODELS[config.model].piece_member_steps

    def init(self):
        return traced.compile(functools.partial(engine.init_member, self.config), self.hyper,
                              out_shardings=self._replicated, compiler_options=engine.QUICK_COMPILE)(self.hyper)

    def abstract(self):
        shapes = jax.eval_shape(functools.partial(engine.init_member, self.config), self.hyper)
        return checkpoint.with_sharding(shapes, self._replicated)

    def order(self, state):
        return engine.batch_order(self.config, state)

    def piece(self, state, order, length: int) -> "Program":
        program = lambda guarded: functools.partial(  # noqa: E731
            engine.train_steps, self.config, steps=length, batch_sharding=self._batch_sharding, guarded=guarded)
        return Program(program, (state, self.hyper, *self._train, order, np.int32(0)),
                       lambda: (self.hyper, *self._train))

    def evaluate(self, state) -> dict:
        return self._evaluate(state.params, self.hyper, self._held_out)

    def learning_rate(self, epoch: int) -> Any:
        return engine.learning_rate(self.config, self.member["lr"], epoch)

    def describe(self, row: dict) -> str:
        return metrics.describe(row, self.config.epochs)

    def board_runs(self) -> list[tuple[str, dict]]:
        return [("", settings.hparams(self.config, self.member))]  # the workdir itself is the run


class Population:
    """A sweep's members, stacked and sharded over every device of every process along the member axis.

    The member list is padded to a multiple of the device count by repeating its last member; the padding trains
    but never shows in a row. A scheduler may stop members (`train_only`: the others' states are carried through
    untouched and cost nothing), give members other hyperparameters (`set_members`) and copy states between them
    (`take`).
    """

    def __init__(self, config: engine.Config, members: Sequence[dict], splits: dict, shared_order: bool,
                 vmap_chunk: int | None):
        self.mesh = population.member_mesh()
        self.padding = -len(members) % self.mesh.size
        self.config = config
        self._sharding = NamedSharding(self.mesh, PartitionSpec(population.MEMBER_AXIS))
        self.set_members(members)
        self.started_as = self.members  # the run names and hparams of TensorBoard: a member's first settings
        on_devices = distributed.put(splits, NamedSharding(self.mesh, PartitionSpec()))  # on the devices once
        self._train = on_devices["train"]
        self._held_out = {name: split for name, split in on_devices.items() if name != "train"}
        self._init = functools.partial(population.init, config, shared_order=shared_order)
        self._steps = functools.partial(population.train_steps, config, shared_order, vmap_chunk, self.mesh)
        self._evaluate = traced.jit(functools.partial(population.evaluate, config))  # per shape: halving's survivors
        self._take = jax.jit(population.take, out_shardings=self._sharding)
        self.label = f"sweep {config.model} x{len(members)}"
        self.steps_per_epoch, self.batch_size = config.steps_per_epoch, config.batch_size
        self.piece_member_steps = MODELS[config.model].piece_member_steps
        self.active = None  # indices of the members that train (padded to the device count); None: all of them

    def set_members(self, members: Sequence[dict]) -> None:
        """The members' hyperparameters from now on (the padding repeats the last)."""
        self.members = [dict(m) for m in members]
        self.hyper = distributed.put(settings.hyper(self.members + [self.members[-1]] * self.padding),
                                     self._sharding)

    def train_only(self, going: Sequence[bool]) -> None:
        """From now on only the members marked in `going` train; the others keep their states as they are."""
        if all(going):
            self.active = None
            return
        active = [i for i, g in enumerate(going) if g]
        self.active = np.asarray(active + [active[-1]] * (-len(active) % self.mesh.size), np.int32)

    @property
    def members_per_device(self) -> int:
        stacked = len(self.members) + self.padding if self.active is None else len(self.active)
        return stacked // self.mesh.size

    def take(self, state, parents: Sequence[int]):
        """The state where member i continues from member parents[i]'s parameters and optimizer state."""
        sources = np.asarray(list(parents) + list(range(len(parents), len(parents) + self.padding)), np.int32)
        return self._take(state, sources)

    def init(self):
        return traced.compile(self._init, self.hyper, out_shardings=self._sharding,
                              compiler_options=engine.QUICK_COMPILE)(self.hyper)

    def abstract(self):
        return checkpoint.with_sharding(jax.eval_shape(self._init, self.hyper), self._sharding)

    def order(self, state):
        return population.batch_orders(self.config, state)

    def piece(self, state, order, length: int) -> "Program":
        inputs = lambda: (self.hyper, *self._train)  # noqa: E731  (PBT may have changed the hyperparameters)
        example = (state, self.hyper, *self._train, order, np.int32(0))
        if self.active is None:
            return Program(lambda guarded: functools.partial(self._steps(guarded), steps=length), example, inputs)
        active = self.active
        return Program(lambda guarded: functools.partial(
            population.train_some, functools.partial(self._steps(guarded), steps=length)),
            (*example, active), inputs, (active,), active)

    def evaluate(self, state) -> dict:
        if self.active is None:
            return self._evaluate(state.params, self.hyper, self._held_out)
        found = distributed.to_host(self._evaluate(population.members_at(state.params, self.active),
                                                   population.members_at(self.hyper, self.active), self._held_out))
        # the members that did not train get zeros here: the scheduler fills in their rows with their last numbers
        return jax.tree.map(lambda values: _scatter(values, self.active, len(self.members) + self.padding), found)

    def learning_rate(self, epoch: int) -> Any:
        return engine.learning_rate(self.config, np.array([m["lr"] for m in self.members]), epoch)

    def describe(self, row: dict) -> str:
        """The spread of the members' validation (else test) accuracy."""
        members = row["members"]
        metric = metrics.SELECTION if metrics.SELECTION in members[0] else "test_accuracy"
        sound = [m for m in members if not m["diverged"]]
        text = f"epoch {row['epoch']:3d}/{self.config.epochs}  {row['epoch_seconds']:.2f} s  "
        if sound:
            best, worst = max(sound, key=lambda m: m[metric]), min(sound, key=lambda m: m[metric])
            text += (f"{metric}: best {settings.member_label(best)} {best[metric]:.2%}  "
                     f"worst {settings.member_label(worst)} {worst[metric]:.2%}")
        going = "" if self.active is None else f"  training {len(set(self.active.tolist()))}/{len(members)}"
        return text + f"  diverged {len(members) - len(sound)}/{len(members)}" + going

    def board_runs(self) -> list[tuple[str, dict]]:
        return [(folder, settings.hparams(self.config, m))
                for folder, m in zip(settings.member_folders(self.started_as), self.started_as)]


class Program:
    """A piece of an epoch for the loop: (state, order, first) -> (state, sums), on the trainer's current
    hyperparameters and data (`inputs()`) and any further arguments (`extra`).

    It runs the steps unguarded (engine.train_step), then checks the piece once: where a member's piece ended not
    sound, or a member had diverged before (its parameters must stay frozen), the piece is run again from its start
    with the guarded steps, compiled the first time they are needed. Both compute the same numbers where nothing goes
    wrong, so the result is what guarding every step gives. `program(guarded)` is the function to compile (through
    mnist_jax.traced), `example` its arguments' shapes, `active` the members it trains (None: all); `compiled` is the
    unguarded XLA program (its cost_analysis() says what it computes).
    """

    def __init__(self, program, example: tuple, inputs, extra: tuple = (), active=None):
        self._program, self._inputs, self._extra, self._active = program, inputs, extra, active
        self._example = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                                                    sharding=getattr(x, "sharding", None)), example)
        self.compiled = traced.compile(program(False), *self._example)
        self._guarded = None
        self._frozen = False  # a member has diverged: every piece runs guarded from then on
        self.reruns = 0  # pieces run again guarded

    def guarded(self):
        if self._guarded is None:
            self._guarded = traced.compile(self._program(True), *self._example)
        return self._guarded

    def _trained(self, flags) -> np.ndarray:
        """The flags of the members this piece trains, on the host (where negating them compiles nothing)."""
        flags = np.asarray(distributed.to_host(flags))
        return flags if self._active is None or flags.ndim == 0 else flags[self._active]

    def __call__(self, state, order, first):
        hyper, *train = self._inputs()
        args = (state, hyper, *train, order, first, *self._extra)
        if not self._frozen:
            new, sums = self.compiled(*args)
            if np.all(self._trained(sums["sound"])):
                return new, sums
            self.reruns += 1
        new, sums = self.guarded()(*args)
        self._frozen = self._frozen or bool(np.any(self._trained(new.diverged)))
        return new, sums


def _scatter(values: np.ndarray, indices: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size, *values.shape[1:]), values.dtype)
    out[indices] = values
    return out
