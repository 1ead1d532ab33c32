"""The pure training engine: a run is a function of (config, member hyperparameters, data).

`Config` holds what shapes the compiled program (static); `Hyper` holds what may differ between members of a
sweep (arrays, so `jax.vmap` can stack them). A single run and a sweep call the very same functions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from mnist_jax.models import make_model

# A batch loss this far above chance (ln 10) means the member has blown up, not that it is learning slowly.
DIVERGENCE_LOSS = 10 * math.log(10)

# XLA options (jax.jit's compiler_options) for the programs that draw the initial state and the epoch's batch order.
# Their random numbers (threefry's unrolled rounds) are what the compiler's default optimization level spends its
# time on: LeNet's initial state took 5-7 s to compile on a 2-core AVX2 CPU, 1.3-1.9 s at level 1, with the same
# bits (tests/test_engine.py compares the two). Not for the training and evaluation programs: level 1 changes their
# floating-point results and barely shortens their compile.
QUICK_COMPILE = {"xla_backend_optimization_level": 1}


def _injected(factory: Callable[..., optax.GradientTransformation], **hyperparameters: jax.Array):
    """optax.inject_hyperparams(factory) that runs on `hyperparameters` (the member's, traced) at every step, not on
    the copy its state keeps from init: a member that takes another's state (population-based training) keeps its
    own hyperparameters. Every hyperparameter of `factory` is a float32 array either way, as it always was."""
    inner = optax.inject_hyperparams(factory)(**hyperparameters)

    def update(updates, state, params=None):
        own = {name: jnp.asarray(value, state.hyperparams[name].dtype) for name, value in hyperparameters.items()}
        return inner.update(updates, state._replace(hyperparams={**state.hyperparams, **own}), params)

    return optax.GradientTransformation(inner.init, update)


def _adamw(hyper: "Hyper") -> optax.GradientTransformation:
    return _injected(optax.adamw, learning_rate=hyper["lr"], b1=hyper["b1"], weight_decay=hyper["weight_decay"])


def _sgd(hyper: "Hyper") -> optax.GradientTransformation:
    # L2 weight decay added to the gradient (zero adds nothing), then Nesterov momentum b1
    return optax.chain(optax.add_decayed_weights(hyper["weight_decay"]),
                       _injected(lambda learning_rate, momentum: optax.sgd(learning_rate, momentum, nesterov=True),
                                 learning_rate=hyper["lr"], momentum=hyper["b1"]))


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optimizer of the registry: how to build it from a member's (traced) hyperparameters, and its defaults."""

    build: Callable[["Hyper"], optax.GradientTransformation]
    learning_rate: float
    weight_decay: float
    b1: float
    description: str


# The one place for each optimizer's defaults; flags, sweeps and summaries read them from here.
OPTIMIZERS = {
    "adamw": Optimizer(_adamw, learning_rate=2e-3, weight_decay=0.2, b1=0.9,
                       description="AdamW (decoupled weight decay)"),
    "sgd": Optimizer(_sgd, learning_rate=0.03, weight_decay=0.0, b1=0.9,
                     description="SGD with Nesterov momentum (b1; L2 weight decay only if given)"),
}


def _warmup_cosine(warmup_steps: int, total_steps: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, max(warmup_steps, 1), max(total_steps, 2))


def _constant(warmup_steps: int, total_steps: int) -> optax.Schedule:
    return optax.constant_schedule(1.0)


def _one_cycle(warmup_steps: int, total_steps: int) -> optax.Schedule:
    return optax.cosine_onecycle_schedule(max(total_steps, 2), 1.0)


# Multipliers of the peak learning rate over the run's steps.
SCHEDULES = {"warmup-cosine": _warmup_cosine, "constant": _constant, "one-cycle": _one_cycle}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that shapes the compiled program; hashable, so it is a static argument of `jit`.

    The fields a user sets are declared, with their defaults, in mnist_jax.settings (settings.config fills in what
    a default stands for, e.g. this backend's convolution form). `conv` is how LeNet is
    computed, not what it computes, so it is no part of a run's identity.
    """

    model: str
    hidden: tuple[int, ...]
    batch_size: int
    epochs: int
    train_size: int
    optimizer: str
    schedule: str
    dtype: str
    conv: str
    warmup_epochs: float = 1.0
    eval_batch_size: int = 1000

    @property
    def steps_per_epoch(self) -> int:
        return self.train_size // self.batch_size


# One member's hyperparameters as arrays, keyed by the names of the member settings (mnist_jax.settings): the
# activation's index into models.ACTIVATIONS ("activation"), the seed ("seed"), the peak learning rate ("lr"), the
# weight decay ("weight_decay"), the first-moment coefficient ("b1": Adam's b1, SGD's momentum) and the
# label smoothing ("label_smoothing"). Stacked on a leading axis they are a sweep's members.
Hyper = dict[str, jax.Array]


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


def make_optimizer(config: Config, hyper: Hyper) -> optax.GradientTransformation:
    """The configured optimizer of the member's (traced) hyperparameters, scaled by the schedule. Its state holds no
    hyperparameter, so a member that takes another's state (population-based training) keeps its own."""
    return optax.chain(OPTIMIZERS[config.optimizer].build(hyper), optax.scale_by_schedule(schedule(config)))


def learning_rate(config: Config, peak: Any, epoch: int) -> Any:
    """The learning rate of the last step of `epoch` (counted from 1) for peak learning rate(s) `peak`."""
    return peak * float(_multiplier(config, (epoch * config.steps_per_epoch) - 1))


# schedule(config)(step) as one compiled program, which gives the optimizer's value in a compiled scan to the bit
# (tests/test_engine.py): run op by op outside a jit it compiled a dozen programs (a third of a second on a fresh
# cache) and differed from that value in the last bit at times
@functools.partial(jax.jit, static_argnums=0)
def _multiplier(config: Config, step: int) -> jax.Array:
    return schedule(config)(step)


def model(config: Config):
    """The Flax module of `config`."""
    return make_model(config.model, config.hidden, jnp.dtype(config.dtype), config.conv)


def apply(config: Config, params, hyper: Hyper, images: jax.Array) -> jax.Array:
    """Logits of a batch of uint8 images."""
    return model(config).apply(params, images, hyper["activation"])


def init_member(config: Config, hyper: Hyper) -> TrainState:
    """Initial parameters and optimizer state from the member's seed; the data-order key is split off it."""
    params_key, data_key = jax.random.split(jax.random.PRNGKey(hyper["seed"]))
    params = model(config).init(params_key, jnp.zeros((1, 28, 28), jnp.uint8), hyper["activation"])
    opt_state = make_optimizer(config, hyper).init(params)
    return TrainState(params, opt_state, data_key, jnp.int32(0), jnp.bool_(False))


# init_member as one program compiled with QUICK_COMPILE, for a caller outside a jit (called op by op, a LeNet initial
# state took seconds longer to compile, and a vmapped one 20 s on the AVX2 CPU)
initial_state = jax.jit(init_member, static_argnums=0, compiler_options=QUICK_COMPILE)


def loss_and_logits(params, config: Config, hyper: Hyper, images, labels):
    """Mean cross-entropy of a batch against its labels smoothed by the member's label smoothing a (the target
    puts 1 - a on the label and a spread evenly over the ten classes), and its logits."""
    logits = apply(config, params, hyper, images)
    with jax.named_scope("loss"):  # the name scopes mark the parts of a step for mnist_jax.profiling
        labelled = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        uniform = jax.nn.logsumexp(logits, axis=-1) - jnp.mean(logits, axis=-1)  # cross-entropy against 1/10 each
        # written so that a = 0 is the plain cross-entropy to the bit
        return (labelled + hyper["label_smoothing"] * (uniform - labelled)).mean(), logits


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step(config: Config, state: TrainState, hyper: Hyper, images, labels, guarded: bool = True):
    """One optimizer step on one batch. Guarded, a member that blows up (a non-finite or huge loss, non-finite
    gradients or parameters) freezes its parameters there, so nothing non-finite spreads; unguarded the step is
    taken whatever happens (train_steps checks the piece afterwards)."""
    (loss, logits), grads = jax.value_and_grad(loss_and_logits, has_aux=True)(
        state.params, config, hyper, images, labels)
    with jax.named_scope("optimizer"):
        updates, opt_state = make_optimizer(config, hyper).update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
    with jax.named_scope("loss"):
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    if not guarded:
        return state.replace(params=params, opt_state=opt_state), (loss, correct)
    with jax.named_scope("guard"):
        # the new parameters too: a huge weight decay overflows them from finite gradients
        sound = jnp.isfinite(loss) & (loss < DIVERGENCE_LOSS) & _all_finite(grads) & _all_finite(params)
        diverged = state.diverged | ~sound
        keep = lambda new, old: jnp.where(diverged, old, new)  # noqa: E731
        state = state.replace(params=jax.tree.map(keep, params, state.params),
                              opt_state=jax.tree.map(keep, opt_state, state.opt_state), diverged=diverged)
    return state, (loss, correct)


def epoch_order(config: Config, state: TrainState) -> jax.Array:
    """(steps, batch) indices for the epoch after `state.epoch`, derived from (data key, epoch) alone."""
    key = jax.random.fold_in(state.data_key, state.epoch)
    used = config.steps_per_epoch * config.batch_size
    return jax.random.permutation(key, config.train_size)[:used].reshape(config.steps_per_epoch, config.batch_size)


# epoch_order as one program compiled with QUICK_COMPILE, for the host loop (once an epoch) and other callers outside
# a jit
batch_order = jax.jit(epoch_order, static_argnums=0, compiler_options=QUICK_COMPILE)


def train_steps(config: Config, state: TrainState, hyper: Hyper, x_train: jax.Array, y_train: jax.Array,
                order: jax.Array, first: jax.Array, steps: int,
                batch_sharding: jax.sharding.Sharding | None = None, guarded: bool = True):
    """`steps` consecutive steps (a `lax.scan`) of the epoch after `state.epoch`, from its step `first`: a piece of
    an epoch, so that the host can stop, save or report between pieces. `order` is the epoch's `epoch_order`,
    computed once per epoch rather than once per piece. Returns the state (its epoch count not yet advanced) and the
    piece's summed batch loss, number of correct predictions and `sound`: whether the member had not diverged
    before, every step's loss was finite and below DIVERGENCE_LOSS, and the state ends finite. Unguarded
    (`guarded=False`) the steps skip the per-step check and freeze, which costs the MLP about a fifth of its step; a
    piece that ends not sound is then run again guarded from its start (trainers.Program), which gives exactly what
    guarding every step gives.

    With `batch_sharding` each batch is split over the devices of a data-parallel mesh (parameters replicated, so
    XLA sums the gradients across devices); without it nothing is annotated and one device runs it all.
    """
    chex.assert_shape(x_train, (config.train_size, 28, 28))

    def step(state, batch_indices):
        with jax.named_scope("batch"):
            batch = x_train[batch_indices], y_train[batch_indices]
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return train_step(config, state, hyper, *batch, guarded=guarded)

    frozen = state.diverged  # a member frozen before the piece must stay so: only the guarded steps keep it
    state, (losses, correct) = jax.lax.scan(step, state, jax.lax.dynamic_slice_in_dim(order, first, steps))
    worst = jnp.max(losses)  # NaN if any was
    sound = ~frozen & jnp.isfinite(worst) & (worst < DIVERGENCE_LOSS) & _all_finite((state.params, state.opt_state))
    return state, {"loss_sum": jnp.sum(losses), "correct": jnp.sum(correct), "sound": sound}


def next_epoch(state: TrainState) -> TrainState:
    """The state with one more epoch counted: the one place the epoch advances."""
    return state.replace(epoch=state.epoch + 1)


def predict_logits(config: Config, params, hyper: Hyper, images: jax.Array, batch_size: int | None = None) -> jax.Array:
    """Logits for any number of images, in batches of `batch_size` (default `eval_batch_size`) so memory stays
    bounded."""
    n, size = images.shape[0], batch_size or config.eval_batch_size
    padded = jnp.pad(images, ((0, -n % size), (0, 0), (0, 0))).reshape(-1, size, 28, 28)
    logits = jax.lax.map(lambda x: apply(config, params, hyper, x), padded)
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
