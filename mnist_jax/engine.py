"""The pure training engine: a run is a function of (config, member hyperparameters, data).

`Config` holds what shapes the compiled program (static); `Hyper` holds what may differ between members of a
sweep (arrays, so `jax.vmap` can stack them). A single run and a sweep call the very same functions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from mnist_jax.metrics import epoch_means
from mnist_jax.models import ACTIVATIONS, default_conv, make_model

# A batch loss this far above chance (ln 10) means the member has blown up, not that it is learning slowly.
DIVERGENCE_LOSS = 10 * math.log(10)


def _adamw(learning_rate: jax.Array, weight_decay: float) -> optax.GradientTransformation:
    return optax.inject_hyperparams(optax.adamw)(learning_rate=learning_rate, weight_decay=weight_decay)


def _sgd(learning_rate: jax.Array, weight_decay: float) -> optax.GradientTransformation:
    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate, momentum=0.9, nesterov=True)
    return optax.chain(optax.add_decayed_weights(weight_decay), sgd) if weight_decay else sgd


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optimizer of the registry: how to build it around a (traced) peak learning rate, and its defaults."""

    build: Callable[[jax.Array, float], optax.GradientTransformation]
    learning_rate: float
    weight_decay: float
    description: str


# The one place for each optimizer's defaults; flags, sweeps and summaries read them from here.
OPTIMIZERS = {
    "adamw": Optimizer(_adamw, learning_rate=2e-3, weight_decay=0.2, description="AdamW (decoupled weight decay)"),
    "sgd": Optimizer(_sgd, learning_rate=0.03, weight_decay=0.0,
                     description="SGD with Nesterov momentum 0.9 (L2 weight decay only if given)"),
}


def _warmup_cosine(warmup_steps: int, total_steps: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, max(warmup_steps, 1), max(total_steps, 2))


def _constant(warmup_steps: int, total_steps: int) -> optax.Schedule:
    return optax.constant_schedule(1.0)


# Multipliers of the peak learning rate over the run's steps.
SCHEDULES = {"warmup-cosine": _warmup_cosine, "constant": _constant}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that shapes the compiled program; hashable, so it is a static argument of `jit`.

    Its field defaults are the project's defaults: the command-line flags read them from here. `weight_decay` None
    means the optimizer's own default (OPTIMIZERS), filled in on creation; `conv` "auto" means the convolution form
    made for this backend (models.default_conv). The form is how LeNet is computed, not what it computes, so it is
    no part of a run's identity (workdir.run_description leaves it out).
    """

    model: str = "lenet"
    hidden: tuple[int, ...] = (256, 128)
    batch_size: int = 128
    epochs: int = 12
    train_size: int = 55000
    optimizer: str = "adamw"
    schedule: str = "warmup-cosine"
    weight_decay: float | None = None
    warmup_epochs: float = 1.0
    dtype: str = "float32"
    conv: str = "auto"
    eval_batch_size: int = 1000

    def __post_init__(self):
        if self.weight_decay is None:
            object.__setattr__(self, "weight_decay", OPTIMIZERS[self.optimizer].weight_decay)
        if self.conv == "auto":
            object.__setattr__(self, "conv", default_conv())

    @property
    def steps_per_epoch(self) -> int:
        return self.train_size // self.batch_size


@struct.dataclass
class Hyper:
    """One member's hyperparameters as arrays: activation index into ACTIVATIONS, peak learning rate, seed."""

    activation: jax.Array
    learning_rate: jax.Array
    seed: jax.Array

    @classmethod
    def create(cls, activation: str | int, learning_rate: float, seed: int) -> "Hyper":
        index = ACTIVATIONS.index(activation) if isinstance(activation, str) else activation
        return cls(jnp.int32(index), jnp.float32(learning_rate), jnp.uint32(seed))


@struct.dataclass
class TrainState:
    """A member's full training state; `epoch` counts completed epochs."""

    params: Any
    opt_state: Any
    data_key: jax.Array
    epoch: jax.Array
    diverged: jax.Array


def schedule(config: Config) -> optax.Schedule:
    """The multiplier of the peak learning rate at each step of the run."""
    total = config.epochs * config.steps_per_epoch
    warmup = min(int(config.warmup_epochs * config.steps_per_epoch), total - 1)
    return SCHEDULES[config.schedule](warmup, total)


def make_optimizer(config: Config, learning_rate: jax.Array) -> optax.GradientTransformation:
    """The configured optimizer, its peak learning rate data (inject_hyperparams), scaled by the schedule."""
    optimizer = OPTIMIZERS[config.optimizer].build(learning_rate, config.weight_decay)
    return optax.chain(optimizer, optax.scale_by_schedule(schedule(config)))


def learning_rate(config: Config, peak: Any, epoch: int) -> Any:
    """The learning rate of the last step of `epoch` (counted from 1) for peak learning rate(s) `peak`."""
    return peak * float(schedule(config)((epoch * config.steps_per_epoch) - 1))


def _model(config: Config):
    return make_model(config.model, config.hidden, jnp.dtype(config.dtype), config.conv)


def init_member(config: Config, hyper: Hyper) -> TrainState:
    """Initial parameters and optimizer state from the member's seed; the data-order key is split off it."""
    params_key, data_key = jax.random.split(jax.random.PRNGKey(hyper.seed))
    params = _model(config).init(params_key, jnp.zeros((1, 28, 28), jnp.uint8), hyper.activation)
    opt_state = make_optimizer(config, hyper.learning_rate).init(params)
    return TrainState(params, opt_state, data_key, jnp.int32(0), jnp.bool_(False))


def _loss_and_logits(params, config: Config, hyper: Hyper, images, labels):
    logits = _model(config).apply(params, images, hyper.activation)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits


def train_step(config: Config, state: TrainState, hyper: Hyper, images, labels):
    """One optimizer step on one batch; once a member blows up its parameters freeze, so nothing non-finite spreads."""
    (loss, logits), grads = jax.value_and_grad(_loss_and_logits, has_aux=True)(
        state.params, config, hyper, images, labels)
    updates, opt_state = make_optimizer(config, hyper.learning_rate).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    all_finite = lambda tree: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))  # noqa: E731
    # the new parameters too: a huge weight decay overflows them from finite gradients
    sound = jnp.isfinite(loss) & (loss < DIVERGENCE_LOSS) & all_finite(grads) & all_finite(params)
    diverged = state.diverged | ~sound
    keep = lambda new, old: jnp.where(diverged, old, new)  # noqa: E731
    state = state.replace(params=jax.tree.map(keep, params, state.params),
                          opt_state=jax.tree.map(keep, opt_state, state.opt_state), diverged=diverged)
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    return state, (loss, correct)


def epoch_order(config: Config, state: TrainState) -> jax.Array:
    """(steps, batch) indices for the epoch after `state.epoch`, derived from (data key, epoch) alone."""
    key = jax.random.fold_in(state.data_key, state.epoch)
    used = config.steps_per_epoch * config.batch_size
    return jax.random.permutation(key, config.train_size)[:used].reshape(config.steps_per_epoch, config.batch_size)


def train_steps(config: Config, state: TrainState, hyper: Hyper, x_train: jax.Array, y_train: jax.Array,
                order: jax.Array, first: jax.Array, steps: int,
                batch_sharding: jax.sharding.Sharding | None = None):
    """`steps` consecutive steps (a `lax.scan`) of the epoch after `state.epoch`, from its step `first`: a piece of
    an epoch, so that the host can stop, save or report between pieces. `order` is the epoch's `epoch_order`,
    computed once per epoch rather than once per piece. Returns the state (its epoch count not yet advanced) and the
    piece's summed batch loss and number of correct predictions.

    With `batch_sharding` each batch is split over the devices of a data-parallel mesh (parameters replicated, so
    XLA sums the gradients across devices); without it nothing is annotated and one device runs it all.
    """
    chex.assert_shape(x_train, (config.train_size, 28, 28))

    def step(state, batch_indices):
        batch = x_train[batch_indices], y_train[batch_indices]
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return train_step(config, state, hyper, *batch)

    state, (losses, correct) = jax.lax.scan(step, state, jax.lax.dynamic_slice_in_dim(order, first, steps))
    return state, {"loss_sum": jnp.sum(losses), "correct": jnp.sum(correct)}


def train_epoch(config: Config, state: TrainState, hyper: Hyper, x_train: jax.Array, y_train: jax.Array,
                batch_sharding: jax.sharding.Sharding | None = None):
    """One whole epoch in one program; returns the new state and the epoch's (as trained) loss and accuracy."""
    state, sums = train_steps(config, state, hyper, x_train, y_train, epoch_order(config, state), 0,
                              config.steps_per_epoch, batch_sharding)
    return end_epoch(config, state, sums)


def end_epoch(config: Config, state: TrainState, sums: dict):
    """The epoch count advanced, and the epoch's mean batch loss and accuracy from its summed pieces."""
    return state.replace(epoch=state.epoch + 1), epoch_means(sums, config.steps_per_epoch, config.batch_size)


def predict_logits(config: Config, params, hyper: Hyper, images: jax.Array) -> jax.Array:
    """Logits for any number of images, in batches of `eval_batch_size` so memory stays bounded."""
    n, size = images.shape[0], config.eval_batch_size
    padded = jnp.pad(images, ((0, -n % size), (0, 0), (0, 0))).reshape(-1, size, 28, 28)
    logits = jax.lax.map(lambda x: _model(config).apply(params, x, hyper.activation), padded)
    return logits.reshape(-1, 10)[:n]


def metrics_of_logits(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Mean cross-entropy and accuracy of logits against integer labels."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def evaluate(config: Config, params, hyper: Hyper, images: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Mean cross-entropy and accuracy over a whole split."""
    return metrics_of_logits(predict_logits(config, params, hyper, images), labels)


def evaluate_splits(config: Config, params, hyper: Hyper, splits: dict[str, tuple[jax.Array, jax.Array]]):
    """{split name: (images, labels)} -> {split name: {"loss", "accuracy"}}, e.g. for "val" and "test"."""
    return {name: evaluate(config, params, hyper, images, labels) for name, (images, labels) in splits.items()}
