"""Every setting of `train` and `sweep`, declared once: its default, help, parser and role.

The command lines' flags and --help, the Python API's keywords, the run record, the default workdir name, the
summary's recipe and TensorBoard's hparams are all derived from these declarations, so a new setting is one entry
in SETTINGS plus the code that uses it:

- a *static* setting shapes the compiled program: it is the engine.Config field of the same name;
- a *member* setting is data that the members of one sweep may differ in: an entry of the member's hyperparameters
  (engine.Hyper, keyed by the setting's name), a single value for `train` and a list of values for `sweep`;
- a *data* setting chooses the images; a *launch* setting says how this launch runs, not what it trains.

`identity` marks what makes two runs different runs: a workdir refuses to resume under other values, and the default
workdir names the ones that differ from their defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import data, engine, models

STATIC, MEMBER, DATA, LAUNCH, SWEEP = "static", "member", "data", "launch", "sweep"
PROCESSES = "several processes (hosts)"  # the help section of the multi-process settings
SEARCH = "search"  # the help section of a sweep's search space and scheduler
SCHEDULERS = ("none", "halving", "pbt")
SEED_LIMIT = 2 ** 32  # a seed is a uint32 of the PRNG key


# Parsers: text (a flag's value) or a Python value (an API keyword) -> the setting's value; a ValueError says why not.

def whole_number(minimum: int, what: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{value!r} is not a whole number")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a whole number") from None
        if number < minimum:
            raise ValueError(f"{number} must be a {what} whole number")
        return number
    return parse


positive_int = whole_number(1, "positive")
non_negative_int = whole_number(0, "non-negative")


def seed(value: Any) -> int:
    number = non_negative_int(value)
    if number >= SEED_LIMIT:
        raise ValueError(f"{number} does not fit the PRNG's 32-bit seed (at most {SEED_LIMIT - 1})")
    return number


def finite_number(positive: bool) -> Callable[[Any], float]:
    """A number that stays finite (and positive) as the float32 a member's hyperparameter is stored in."""
    def parse(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number") from None
        with np.errstate(over="ignore"):
            stored = np.float32(number)
        if not np.isfinite(stored) or number < 0 or (positive and stored == 0):
            raise ValueError(f"{value} must be a {'positive' if positive else 'non-negative'} finite number "
                             f"(it is kept as a float32: {'above 0 and ' if positive else ''}at most "
                             f"{np.finfo(np.float32).max:.3g})")
        return number
    return parse


positive_float = finite_number(positive=True)
non_negative_float = finite_number(positive=False)


def fraction(value: Any) -> float:
    """A number in [0, 1): a coefficient such as b1 or label smoothing."""
    number = non_negative_float(value)
    if number >= 1:
        raise ValueError(f"{value} must be at least 0 and below 1")
    return number


def one_of(choices: Iterable[str], what: str) -> Callable[[Any], str]:
    choices = tuple(choices)

    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"unknown {what} {value!r}: choose from {', '.join(choices)}")
        return value
    return parse


def int_tuple(value: Any) -> tuple[int, ...]:
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        return tuple(positive_int(part) for part in parts)
    except ValueError:
        raise ValueError(f"{value!r} must be positive whole numbers separated by commas") from None


def list_of(parse_one: Callable[[Any], Any]) -> Callable[[Any], list]:
    """A comma-separated list (or a Python list) of unique values, each parsed by `parse_one`."""
    def parse(value: Any) -> list:
        parts = [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else list(value)
        if not parts:
            raise ValueError(f"{value!r} is an empty list: give one or more comma-separated values, or leave the "
                             "flag out for its default")
        try:
            values = [parse_one(part) for part in parts]
        except ValueError as e:
            raise ValueError(f"{value!r} must be a comma-separated list ({e})") from None
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"names {', '.join(repeated)} more than once: every member must be unique")
        return values
    return parse


@dataclasses.dataclass(frozen=True)
class Range:
    """A search range of a member setting, LOW..HIGH: a sweep samples it (log-uniformly for a setting of scale
    "log", uniformly for "linear"), --samples times."""

    low: float
    high: float

    def __str__(self) -> str:
        return f"{_text(self.low)}..{_text(self.high)}"


def space(setting: "Setting") -> Callable[[Any], "list | Range"]:
    """A sweep's values of a member setting: a comma-separated list (a grid), or LOW..HIGH (a Range) where the
    setting can be searched that way."""
    listed = list_of(setting.parse)
    ranged = [s.plural.replace("_", "-") for s in SETTINGS if s.scale]

    def parse(value: Any) -> "list | Range":
        if not isinstance(value, Range) and not (isinstance(value, str) and ".." in value):
            return listed(value)
        if setting.scale is None:
            raise ValueError(f"{value} is a range, but a range LOW..HIGH is only for {', '.join(ranged)}: list "
                             "the values, separated by commas")
        low, high = (value.low, value.high) if isinstance(value, Range) else value.split("..", 1)
        low, high = setting.parse(low), setting.parse(high)
        if low >= high:
            raise ValueError(f"range {value}: LOW must be below HIGH")
        if setting.scale == "log" and low <= 0:
            raise ValueError(f"range {value} is searched log-uniformly: LOW must be above 0")
        return Range(low, high)
    return parse


def path(value: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError(f"{value!r} is not a path")
    return Path(value)


def vmap_chunk(value: Any) -> str | int | None:
    if value in ("auto", "all", None):
        return None if value in ("all", None) else "auto"
    return positive_int(value)


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not True or False")
    return value


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting. `plural` is a member setting's list form in a sweep (`count`, a number of values 0..N-1, may
    stand for it), `tag` prefixes its value in a member's folder name, and `record` names it in a single run's record
    where that differs from `name`. `model` limits a setting to one model (the MLP's hidden sizes). `fill` says what
    a value such as None or "auto" stands for, given the static settings (the optimizer's own learning rate)."""

    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any] = str
    role: str = LAUNCH
    identity: bool = False
    commands: tuple[str, ...] = ("train", "sweep")
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    group: str | None = None
    model: str | None = None
    plural: str | None = None
    plural_default: Any = None
    count: str | None = None
    count_default: int | None = None
    dtype: Any = None
    encode: Callable[[Any], Any] = lambda value: value
    tag: str = ""
    record: str | None = None
    fill: Callable[[Any, Mapping[str, Any]], Any] | None = None  # (value, static settings) -> what it stands for
    scale: str | None = None  # "log" or "linear": a member setting a sweep may search as a range LOW..HIGH

    @property
    def record_key(self) -> str:
        return self.record or self.name


def _optimizers_help() -> str:
    return "; ".join(f"{name}: {o.description}, default lr {o.learning_rate:g}, weight decay {o.weight_decay:g}, "
                     f"b1 {o.b1:g}"
                     for name, o in engine.OPTIMIZERS.items())


# The order is that of the default workdir names (see `workdir_name`) and of --help.
SETTINGS: tuple[Setting, ...] = (
    Setting("model", "lenet", "network to train", one_of(models.MODELS, "model"), STATIC, True,
            choices=tuple(models.MODELS)),
    Setting("activation", "relu", "activation function", one_of(models.ACTIVATIONS, "activation"), MEMBER, True,
            choices=models.ACTIVATIONS, plural="activations", plural_default=list(models.ACTIVATIONS),
            dtype=jnp.int32, encode=models.ACTIVATIONS.index),
    Setting("seed", 0, "seeds parameters and batch order", seed, MEMBER, True, plural="seed_list",
            count="seeds", count_default=3, dtype=jnp.uint32, tag="seed"),
    Setting("dataset", "mnist", "which dataset", one_of(data.DATASETS, "dataset"), DATA, True,
            choices=data.DATASETS, group="data"),
    Setting("epochs", 12, "epochs to train", positive_int, STATIC, True),
    Setting("batch_size", 128, "images per step", positive_int, STATIC, True),
    Setting("optimizer", "adamw", _optimizers_help(), one_of(engine.OPTIMIZERS, "optimizer"), STATIC, True,
            choices=tuple(engine.OPTIMIZERS)),
    Setting("schedule", "warmup-cosine", "warmup-cosine: linear warmup over the first epoch to the peak learning "
            "rate, then cosine decay to zero; constant: the learning rate throughout; one-cycle: from 1/25 of the "
            "peak up to it over the first 30%% of the steps, then cosine down to 1/250,000 of it (PyTorch's "
            "OneCycleLR), for short runs",
            one_of(engine.SCHEDULES, "schedule"), STATIC, True, choices=tuple(engine.SCHEDULES)),
    Setting("lr", None, "peak learning rate (default: the optimizer's, see --optimizer)", positive_float, MEMBER,
            True, plural="lrs", dtype=jnp.float32, tag="lr", record="learning_rate", scale="log",
            fill=lambda value, static: engine.OPTIMIZERS[static["optimizer"]].learning_rate if value is None
            else value),
    Setting("weight_decay", None, "weight decay (default: the optimizer's, see --optimizer)", non_negative_float,
            MEMBER, True, plural="weight_decays", dtype=jnp.float32, tag="wd", scale="log",
            fill=lambda value, static: engine.OPTIMIZERS[static["optimizer"]].weight_decay if value is None
            else value),
    Setting("b1", None, "first-moment coefficient: Adam's b1, SGD's momentum (default: the optimizer's, see "
            "--optimizer)", fraction, MEMBER, True, plural="b1s", dtype=jnp.float32, tag="b1", scale="linear",
            fill=lambda value, static: engine.OPTIMIZERS[static["optimizer"]].b1 if value is None else value),
    Setting("label_smoothing", 0.0, "label smoothing a of the training loss: the target puts 1 - a on the label "
            "and a spread over the ten classes (validation and test losses stay the plain cross-entropy)",
            fraction, MEMBER, True, plural="label_smoothings", dtype=jnp.float32, tag="ls", scale="linear"),
    Setting("hidden", (256, 128), "MLP hidden sizes, comma-separated", int_tuple, STATIC, True, model="mlp"),
    Setting("dtype", "float32", "compute dtype; parameters and optimizer state stay float32. bfloat16 is for TPUs "
            "and GPUs (on a CPU it is slower)", one_of(("float32", "bfloat16"), "dtype"), STATIC, True,
            choices=("float32", "bfloat16")),
    Setting("conv", "auto", "how LeNet's convolutions are computed (the same network and parameters either way): "
            "toeplitz, block-Toeplitz matmuls, fastest on CPU; lax, the standard convolution for GPU and TPU; auto, "
            "the one for this backend", one_of(("auto", *models.CONV_FORMS), "conv"), STATIC,
            choices=("auto", *models.CONV_FORMS),
            fill=lambda value, static: models.default_conv() if value == "auto" else value),
    Setting("validation_size", data.VALIDATION_SIZE, "training images held out for validation, the same ones for "
            "every run and seed; the best checkpoint is chosen on them (0: no validation split, the best is the "
            "latest)", non_negative_int, DATA, True, group="splits"),
    Setting("train_limit", None, "train on the first N of the remaining training images only: shorter epochs "
            "(quick experiments, tests, the fast recipe of docs/performance.md)", positive_int, DATA, True,
            group="splits"),
    Setting("test_limit", None, "evaluate on the first N test images only", positive_int, DATA, True,
            group="splits"),
    Setting("data_source", "auto", "auto: local data only, never a download (IDX files or a prepared tfds copy in "
            "--data-dir, else the MNIST copy bundled in the package); bundled: the shipped MNIST, sha256-verified; "
            "idx: the four IDX files (.gz or not) in --data-dir; tfds: tensorflow-datasets",
            one_of(data.SOURCES, "data source"), DATA, choices=data.SOURCES, group="data"),
    Setting("data_dir", None, "directory of IDX files, or a tfds data_dir (default: none; tfds uses "
            "~/tensorflow_datasets)", path, DATA, group="data"),
    Setting("shared_order", False, "give every member the same batch order (default: each member's from its seed)",
            flag, SWEEP, True, commands=("sweep",)),
    Setting("vmap_chunk", "auto", "how many members one compiled step trains side by side (jax.vmap); groups of "
            "that many train one after another (lax.map). all: one vmap of every member; auto: 1 on CPU, where it "
            "measured fastest, all on GPU and TPU; the results are the same either way, up to float rounding",
            vmap_chunk, SWEEP, commands=("sweep",)),
    Setting("samples", None, "configurations to sample from the ranges (LOW..HIGH) given for --lrs, "
            "--weight-decays, --b1s or --label-smoothings, quasi-randomly (Halton); each is trained for every "
            "activation, seed and listed value", positive_int, SWEEP, True, commands=("sweep",), group=SEARCH),
    Setting("search_seed", 0, "seeds the sampled configurations and population-based training's choices",
            seed, SWEEP, True, commands=("sweep",), group=SEARCH),
    Setting("scheduler", "none", "none: every member trains every epoch; halving: successive halving, at each "
            "rung (epochs R, R*eta, ...) each activation's best 1/eta of its cells by mean validation accuracy over "
            "seeds train on and the rest stop; pbt: population-based training, each --pbt-interval epochs the "
            "bottom quarter of each activation's members takes the state and hyperparameters of one of its top "
            "quarter and perturbs them", one_of(SCHEDULERS, "scheduler"), SWEEP, True, commands=("sweep",),
            choices=SCHEDULERS, group=SEARCH),
    Setting("eta", 3, "successive halving: 1/eta of the cells go on at each rung", whole_number(2, "whole (at "
            "least 2)"), SWEEP, True, commands=("sweep",), group=SEARCH),
    Setting("first_rung", 1, "successive halving: epochs of the first rung", positive_int, SWEEP, True,
            commands=("sweep",), metavar="EPOCHS", group=SEARCH),
    Setting("pbt_interval", 1, "population-based training: epochs between exploits", positive_int, SWEEP, True,
            commands=("sweep",), metavar="EPOCHS", group=SEARCH),
    Setting("workdir", None, "where metrics, summary and checkpoints go; an existing one is resumed (default: "
            "checkpoints/<model>-<activation>-seed<seed> for train, checkpoints/sweep-<model> for a sweep, followed "
            "by every setting of the run that differs from its default, e.g. -epochs3)", path),
    Setting("fresh", False, "delete what the workdir holds and start over", flag),
    Setting("no_compile_cache", False, "do not use the persistent XLA compilation cache, nor the traced programs "
            "kept beside it (default: on, in $MNIST_JAX_CACHE_DIR or ~/.cache/mnist_jax/xla)", flag),
    Setting("coordinator_address", None, "where process 0 listens; the same for every process", str,
            metavar="HOST:PORT", group=PROCESSES),
    Setting("num_processes", None, "how many processes in all", positive_int, group=PROCESSES),
    Setting("process_id", None, "this process, 0 .. N-1", whole_number(-SEED_LIMIT, "whole"), group=PROCESSES),
    Setting("distributed_timeout", 120, "how long to wait for every process to join, and for each exchange between "
            "processes; a lost or stopped process ends the others within this plus 5 s, in one line", positive_int,
            metavar="SECONDS", group=PROCESSES),
)
# Help sections: their titles and what they say.
GROUPS = {"splits": None, "data": None,
          SEARCH: "a member setting's list (--lrs 0.001,0.003) is a grid; a range (--lrs 0.0003..0.03, log-uniform "
                  "for lrs and weight decays, uniform for the rest) is sampled --samples times. A cell is one "
                  "configuration (all but the seed), trained under every seed",
          PROCESSES: "give all three to every process; with none, a TPU pod slice, SLURM or Open MPI is detected by "
                     "JAX itself, and a single host needs nothing"}
BY_NAME = {s.name: s for s in SETTINGS}


def of(command: str) -> list[Setting]:
    return [s for s in SETTINGS if command in s.commands]


def members_of(role: str = MEMBER) -> list[Setting]:
    return [s for s in SETTINGS if s.role == role]


@dataclasses.dataclass(frozen=True)
class Input:
    """One value a command takes (a flag, an API keyword): a setting itself, or, in a sweep, a member setting's list
    or count form (`name` is then `setting.plural` or `setting.count`)."""

    name: str
    setting: Setting
    parse: Callable[[Any], Any]
    default: Any


def inputs(command: str) -> list[Input]:
    """Every value `command` takes, in declaration order; a sweep takes its member settings as lists."""
    out = []
    for s in of(command):
        if command == "sweep" and s.role == MEMBER:
            out.append(Input(s.plural, s, space(s), s.plural_default))
            if s.count:
                out.append(Input(s.count, s, _count, s.count_default))
        else:
            out.append(Input(s.name, s, s.parse, s.default))
    return out


def defaults(command: str) -> dict[str, Any]:
    """Every value of `command` at its default."""
    return {i.name: i.default for i in inputs(command)}


def parsers(command: str) -> dict[str, Callable[[Any], Any]]:
    """The parser of each of `command`'s values by name."""
    return {i.name: i.parse for i in inputs(command)}


def _count(value: Any) -> int:
    number = positive_int(value)
    if number > SEED_LIMIT:
        raise ValueError(f"{number} goes past the PRNG's 32-bit seeds: choose fewer")
    return number


def config(values: Mapping[str, Any], train_size: int, **engine_fields) -> engine.Config:
    """The engine's Config of these values (defaults for those not given), with what a value stands for filled in
    (each setting's `fill`), and no hidden sizes but the MLP's."""
    given = {s.name: values.get(s.name, s.default) for s in SETTINGS if s.role == STATIC}
    static = {s.name: s.fill(given[s.name], given) if s.fill else given[s.name] for s in members_of(STATIC)}
    static["hidden"] = tuple(static["hidden"]) if static["model"] == BY_NAME["hidden"].model else ()
    return engine.Config(**static, train_size=train_size, **engine_fields)


def member_value(setting: Setting, value: Any, config: engine.Config) -> Any:
    """A member setting's value with what it stands for filled in (its `fill`: the learning rate, the optimizer's)."""
    return setting.fill(value, dataclasses.asdict(config)) if setting.fill else value


def member(values: Mapping[str, Any], config: engine.Config) -> dict[str, Any]:
    """A single run's member: {setting name: value} in declaration order."""
    return {s.name: member_value(s, values.get(s.name, s.default), config) for s in members_of()}


def check_search(values: Mapping[str, Any]) -> None:
    """A ValueError naming what does not fit together in a sweep's search space and scheduler."""
    ranged = [s for s in members_of() if isinstance(values.get(s.plural), Range)]
    if ranged and not values.get("samples"):
        raise ValueError(f"--{ranged[0].plural.replace('_', '-')} {values[ranged[0].plural]} is a range: say how many "
                         "configurations to sample from it with --samples N")
    if values.get("samples") and not ranged:
        raise ValueError("--samples is for ranges: give at least one of " + ", ".join(
            f"--{s.plural.replace('_', '-')}" for s in SETTINGS if s.scale) + " as LOW..HIGH")


def sample(ranges: Mapping[str, Range], samples: int, search_seed: int) -> list[dict[str, float]]:
    """`samples` configurations from `ranges` ({setting name: Range}), quasi-random (a scrambled Halton sequence
    seeded by `search_seed`), each value rounded to 4 significant digits so that it reads back as it is named."""
    from scipy.stats import qmc  # only a sampling sweep needs it

    points = qmc.Halton(d=len(ranges), scramble=True, seed=search_seed).random(samples)
    return [{name: draw(BY_NAME[name], r, u) for (name, r), u in zip(ranges.items(), point)} for point in points]


def draw(setting: Setting, r: Range, u: float) -> float:
    """The value at quantile `u` of range `r`, on the setting's scale, rounded to 4 significant digits, inside it."""
    if setting.scale == "log":
        value = math.exp(math.log(r.low) + u * (math.log(r.high) - math.log(r.low)))
    else:
        value = r.low + u * (r.high - r.low)
    return min(max(float(f"{value:.4g}"), r.low), r.high)


def sweep_members(values: Mapping[str, Any], config: engine.Config) -> list[dict[str, Any]]:
    """Every member of a sweep: the product of the member settings' lists in declaration order, where the sampled
    configurations of the ranges (`sample`) stand together at the place of the first ranged setting."""
    axes, ranges = [], {}
    for s in members_of():
        listed = values.get(s.plural, s.plural_default)
        if listed is None and s.count:
            listed = list(range(values.get(s.count, s.count_default)))
        if isinstance(listed, Range):
            if not ranges:
                axes.append(None)  # the samples' place
            ranges[s.name] = listed
            continue
        axes.append([{s.name: v} for v in (listed if listed is not None else [member_value(s, s.default, config)])])
    if ranges:
        axes[axes.index(None)] = sample(ranges, values["samples"], values["search_seed"])
    names = [s.name for s in members_of()]
    members = []
    for parts in itertools.product(*axes):
        merged = {k: v for part in parts for k, v in part.items()}
        members.append({name: merged[name] for name in names})
    return members


def space_of(values: Mapping[str, Any], members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The searched space: {setting name: its Range, or the list of its values} for every member setting but the
    seed."""
    return {s.name: values[s.plural] if isinstance(values.get(s.plural), Range)
            else list(dict.fromkeys(m[s.name] for m in members)) for s in members_of() if s.name != "seed"}


def space_record(space: Mapping[str, Any]) -> dict[str, Any]:
    """A space as results.json records it: a range as {"low", "high", "scale"}, a list as it is."""
    return {name: {"low": v.low, "high": v.high, "scale": BY_NAME[name].scale} if isinstance(v, Range) else list(v)
            for name, v in space.items()}


def cell_of(member: Mapping[str, Any]) -> tuple:
    """A member's cell: every member setting but the seed."""
    return tuple(member[s.name] for s in members_of() if s.name != "seed")


def member_folders(members: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each member's folder (its TensorBoard run, its evaluation): relu-seed0-lr0.002, naming activation, seed and
    learning rate, and each other member setting the members differ in (relu-seed0-lr0.002-wd0.01)."""
    shown = [s for s in members_of() if s.name in ("activation", "seed", "lr")
             or len({m[s.name] for m in members}) > 1]
    return ["-".join(f"{s.tag}{_text(m[s.name])}" for s in shown) for m in members]


def hyper(members: dict | Sequence[dict]) -> engine.Hyper:
    """The members' hyperparameters as arrays: scalars for one member (a dict), stacked for a list of them. NumPy
    converts them to their dtypes on the host, as JAX would (to the bit), and they are copied to the device as they
    are: converting them there compiles a program for each setting."""
    if isinstance(members, Mapping):
        return {s.name: jax.device_put(np.asarray(s.encode(members[s.name]), s.dtype)) for s in members_of()}
    return {s.name: jax.device_put(np.asarray([s.encode(m[s.name]) for m in members], s.dtype)) for s in members_of()}


def _text(value: Any, sep: str = "x") -> str:
    if isinstance(value, (tuple, list)):
        return sep.join(_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def member_label(member: Mapping[str, Any]) -> str:
    """How people name a member, and how --member and --export-member take it: relu,0,0.002."""
    return ",".join(_text(member[s.name]) for s in members_of())


def parse_member_label(text: str) -> dict[str, Any]:
    """ACTIVATION,SEED[,LR] -> the member settings it names (the last ones may be left out)."""
    parts = text.split(",")
    names = members_of()
    if not 2 <= len(parts) <= len(names):
        raise ValueError(f"member {text!r} must be {member_pattern()}, e.g. relu,3 or relu,3,0.001")
    # Each part as its setting reads it, but unchecked against its choices: a name no member has is the sweep's to
    # report, with the members it has.
    try:
        return {s.name: part.strip() if s.choices else s.parse(part.strip()) for s, part in zip(names, parts)}
    except ValueError:
        raise ValueError(f"member {text!r} must be {member_pattern()}, e.g. relu,3 or relu,3,0.001") from None


def member_pattern() -> str:
    first, *rest = [s.name.upper() for s in members_of()]
    return first + "," + rest[0] + "".join(f"[,{name}]" for name in rest[1:])


def recipe(config: engine.Config, member: Mapping[str, Any]) -> dict[str, Any]:
    """The training recipe as summaries record it: every setting that shapes training but those named beside it
    (model, activation, seed)."""
    return {s.record_key: _value_of(s, config, member) for s in SETTINGS
            if s.identity and s.role in (STATIC, MEMBER) and s.name not in ("model", "activation", "seed")}


def hparams(config: engine.Config, member: Mapping[str, Any]) -> dict[str, Any]:
    """What TensorBoard's HParams tab compares for one member: every setting that shapes training, each a scalar
    (the MLP's hidden sizes as text, 256x128)."""
    out = {}
    for s in SETTINGS:
        if s.identity and s.role in (STATIC, MEMBER) and (s.model is None or s.model == config.model):
            value = _value_of(s, config, member)
            out[s.name] = _text(value) if isinstance(value, (tuple, list)) else value
    return out


def _value_of(s: Setting, config: engine.Config, member: Mapping[str, Any]) -> Any:
    value = member[s.name] if s.role == MEMBER else getattr(config, s.name)
    return list(value) if isinstance(value, tuple) else value


def workdir_name(command: str, values: Mapping[str, Any]) -> Path:
    """checkpoints/<stem>[-<setting><value>...] naming the identity settings whose value differs from the default,
    so that two different runs never share a workdir and the same command always finds its own (a short hash of
    them where the name would pass 64 characters; lists joined by "_", so that names hold no commas). train's stem names model, activation and seed; a sweep's names the model,
    and its member lists and sweep settings come first."""
    if command == "train":
        stem = f"{values['model']}-{values['activation']}-seed{values['seed']}"
        named = [(s.name, s) for s in of("train") if s.identity and s.name not in ("model", "activation", "seed")]
    else:
        stem = f"sweep-{values['model']}"
        spaces = [(name, s) for s in members_of() for name in (s.count, s.plural) if name]
        named = spaces + [(s.name, s) for s in members_of(SWEEP) if s.identity] + \
            [(s.name, s) for s in SETTINGS if s.identity and s.role not in (MEMBER, SWEEP) and s.name != "model"]
    base = defaults(command)
    changed = [f"{name.replace('_', '')}{_text(values[name], '_' if name == s.plural else 'x')}"
               for name, s in named
               if values[name] != base[name] and (s.model is None or values["model"] == s.model)]
    name = "-".join([stem, *changed])
    if len(name) > 64:
        name = f"{stem}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"
    return Path("checkpoints") / name
