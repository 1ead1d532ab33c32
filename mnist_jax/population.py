"""The engine over a population: many members' states stacked on a leading axis, trained by one program.

Each member is the engine's single run (engine.init_member, engine.train_steps) on its own hyperparameters; here
they are stacked and either vmapped side by side or mapped one after another (`lax.map`), with the member axis
sharded over a mesh's devices. Tests check the members equal independent single runs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from mnist_jax import engine

MEMBER_AXIS = "members"  # the mesh axis the members are sharded over


def member_mesh() -> Mesh:
    """A mesh of every device of every process along the member axis."""
    return Mesh(jax.devices(), (MEMBER_AXIS,))


def init(config: engine.Config, hyper: engine.Hyper, shared_order: bool) -> engine.TrainState:
    """Stacked initial states; with `shared_order` every member takes the data-order key of seed 0."""
    state = jax.vmap(functools.partial(engine.init_member, config))(hyper)
    if shared_order:
        shared_key = jax.random.split(jax.random.PRNGKey(0))[1]
        state = state.replace(data_key=jnp.broadcast_to(shared_key, state.data_key.shape))
    return state


# init as one program compiled with engine.QUICK_COMPILE, for a caller outside a jit
initial_states = jax.jit(init, static_argnums=(0, 2), compiler_options=engine.QUICK_COMPILE)


def default_vmap_chunk() -> int | None:
    """Members trained side by side in one step, by backend: on CPU one member's piece after another ran fastest
    (a member inside a wide vmap costs more than alone: its state competes for the caches), on GPU and TPU the vmap
    of all members (None)."""
    return 1 if jax.default_backend() == "cpu" else None


def orders(config: engine.Config):
    """Every member's batch order for the epoch after its `epoch`: (members, steps, batch)."""
    return jax.vmap(functools.partial(engine.epoch_order, config))


# orders as one program compiled with engine.QUICK_COMPILE, for a caller outside a jit: (config, state) -> orders
batch_orders = jax.jit(lambda config, state: orders(config)(state), static_argnums=0,
                       compiler_options=engine.QUICK_COMPILE)


def train_steps(config: engine.Config, shared_order: bool, vmap_chunk: int | None, mesh: Mesh,
                guarded: bool = True):
    """`engine.train_steps` over stacked members: (state, hyper, x, y, orders, first, steps) -> (state, sums), with
    `orders` each member's epoch order (`orders`).

    Each device takes its share of the members (`shard_map` over the member axis of `mesh`). There, `vmap_chunk`
    members at a time are trained side by side by a `vmap`, and the chunks one after another by a `lax.map`;
    `None` (or at least the device's share) vmaps them all. With a shared order and a full vmap the order is taken
    out of the vmap, so the batch gather, conv1's input windows and conv1's weight gradient are computed once for all
    members (one wide matmul) instead of once per member. (A partial of module-level functions, so that its traced
    program can be kept across launches: mnist_jax.traced.)
    """
    if mesh.size == 1:
        return functools.partial(_device_steps, config, shared_order, vmap_chunk, guarded)
    return functools.partial(_sharded_steps, config, shared_order, vmap_chunk, guarded, mesh)


def _device_steps(config, shared_order, vmap_chunk, guarded, state, hyper, x, y, orders, first, steps):
    """train_steps on one device's members."""
    member_steps = functools.partial(engine.train_steps, config, x_train=x, y_train=y, first=first, steps=steps,
                                     guarded=guarded)
    n = state.epoch.shape[0]
    if vmap_chunk is not None and vmap_chunk < n:
        # batch_size=1 would still vmap each member (over an axis of 1), which XLA:CPU runs slower
        return jax.lax.map(lambda sho: member_steps(*sho[:2], order=sho[2]), (state, hyper, orders),
                           batch_size=vmap_chunk if vmap_chunk > 1 else None)
    if shared_order:
        return jax.vmap(lambda s, h: member_steps(s, h, order=orders[0]))(state, hyper)
    return jax.vmap(lambda s, h, o: member_steps(s, h, order=o))(state, hyper, orders)


def _sharded_steps(config, shared_order, vmap_chunk, guarded, mesh, state, hyper, x, y, orders, first, steps):
    """train_steps with the members sharded over the devices of `mesh`."""
    members, replicated = PartitionSpec(MEMBER_AXIS), PartitionSpec()
    local = functools.partial(_device_steps, config, shared_order, vmap_chunk, guarded, steps=steps)
    return jax.shard_map(local, mesh=mesh, in_specs=(members, members, replicated, replicated, members, replicated),
                         out_specs=(members, members))(state, hyper, x, y, orders, first)


def members_at(tree, indices):
    """The members at `indices` (a gather along the member axis of every leaf)."""
    return jax.tree.map(lambda leaf: leaf[indices], tree)


def train_some(steps, state, hyper, x, y, orders, first, active):
    """`steps` (a `train_steps` program) for the members at indices `active` only: the others' states are carried
    through as they are, and their sums are zero. An index may repeat (padding to the device count): its copies
    compute the same."""
    trained, sums = steps(members_at(state, active), members_at(hyper, active), x, y, orders[active], first)
    state = jax.tree.map(lambda whole, part: whole.at[active].set(part), state, trained)
    return state, jax.tree.map(lambda part: jnp.zeros(state.epoch.shape, part.dtype).at[active].set(part), sums)


def take(state: engine.TrainState, sources: jax.Array) -> engine.TrainState:
    """Member i continues from member sources[i]'s parameters and optimizer state (and whether it diverged); its
    data-order key and epoch stay its own."""
    params, opt_state, diverged = members_at((state.params, state.opt_state, state.diverged), sources)
    return state.replace(params=params, opt_state=opt_state, diverged=diverged)


def evaluate(config: engine.Config, params, hyper: engine.Hyper, splits: dict) -> dict:
    """(stacked params, stacked hyper, {split: (images, labels)}) -> {split: {metric: (members,)}}."""
    return jax.vmap(functools.partial(engine.evaluate_splits, config), in_axes=(0, 0, None))(params, hyper, splits)
