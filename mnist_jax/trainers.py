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

from mnist_jax import checkpoint, distributed, engine, metrics, population, settings
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
        self.config, self.member, self.hyper = config, member, settings.hyper(member)
        self._replicated = NamedSharding(mesh, PartitionSpec())
        self._batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS)) if n_devices > 1 else None
        on_devices = distributed.put(splits, self._replicated)
        self._train = on_devices["train"]
        self._held_out = {name: split for name, split in on_devices.items() if name != "train"}
        self._evaluate = jax.jit(engine.evaluate_splits, static_argnums=0)
        self.label = f"{config.model}/{member['activation']}"
        self.steps_per_epoch, self.batch_size = config.steps_per_epoch, config.batch_size
        self.piece_member_steps = MODELS[config.model].piece_member_steps

    def init(self):
        return jax.jit(engine.init_member, static_argnums=0, out_shardings=self._replicated)(self.config, self.hyper)

    def abstract(self):
        shapes = jax.eval_shape(functools.partial(engine.init_member, self.config), self.hyper)
        return checkpoint.with_sharding(shapes, self._replicated)

    def order(self, state):
        return engine.epoch_order(self.config, state)

    def piece(self, state, order, length: int):
        program = jax.jit(functools.partial(engine.train_steps, self.config, steps=length,
                                            batch_sharding=self._batch_sharding))
        compiled = program.lower(state, self.hyper, *self._train, order, np.int32(0)).compile()
        return lambda state, order, first: compiled(state, self.hyper, *self._train, order, first)

    def evaluate(self, state) -> dict:
        return self._evaluate(self.config, state.params, self.hyper, self._held_out)

    def learning_rate(self, epoch: int) -> Any:
        return engine.learning_rate(self.config, self.member["lr"], epoch)

    def describe(self, row: dict) -> str:
        return metrics.describe(row, self.config.epochs)

    def board_runs(self) -> list[tuple[str, dict]]:
        return [("", settings.hparams(self.config, self.member))]  # the workdir itself is the run


class Population:
    """A sweep's members, stacked and sharded over every device of every process along the member axis.

    The member list is padded to a multiple of the device count by repeating its last member; the padding trains
    but never shows in a row.
    """

    def __init__(self, config: engine.Config, members: Sequence[dict], splits: dict, shared_order: bool,
                 vmap_chunk: int | None):
        self.mesh = population.member_mesh()
        padded = list(members) + [members[-1]] * (-len(members) % self.mesh.size)
        self.config, self.members, self.padding = config, list(members), len(padded) - len(members)
        self._sharding = NamedSharding(self.mesh, PartitionSpec(population.MEMBER_AXIS))
        self.hyper = distributed.put(settings.hyper(padded), self._sharding)
        on_devices = distributed.put(splits, NamedSharding(self.mesh, PartitionSpec()))  # on the devices once
        self._train = on_devices["train"]
        self._held_out = {name: split for name, split in on_devices.items() if name != "train"}
        self._init = jax.jit(functools.partial(population.init, config, shared_order=shared_order),
                             out_shardings=self._sharding)
        self._steps = population.train_steps(config, shared_order, vmap_chunk, self.mesh)
        self._evaluate = jax.jit(population.evaluate(config))
        self.label = f"sweep {config.model} x{len(members)}"
        self.steps_per_epoch, self.batch_size = config.steps_per_epoch, config.batch_size
        self.piece_member_steps = MODELS[config.model].piece_member_steps
        self.members_per_device = len(padded) // self.mesh.size

    def init(self):
        return self._init(self.hyper)

    def abstract(self):
        return checkpoint.with_sharding(jax.eval_shape(self._init, self.hyper), self._sharding)

    def order(self, state):
        return population.orders(self.config)(state)

    def piece(self, state, order, length: int):
        compiled = jax.jit(functools.partial(self._steps, steps=length)).lower(
            state, self.hyper, *self._train, order, np.int32(0)).compile()
        return lambda state, order, first: compiled(state, self.hyper, *self._train, order, first)

    def evaluate(self, state) -> dict:
        return self._evaluate(state.params, self.hyper, self._held_out)

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
        return text + f"  diverged {len(members) - len(sound)}/{len(members)}"

    def board_runs(self) -> list[tuple[str, dict]]:
        return [(folder, settings.hparams(self.config, m))
                for folder, m in zip(settings.member_folders(self.members), self.members)]
