"""What a sweep's scheduler does to its members at epoch boundaries, decided from validation accuracy alone.

- Successive halving (`Halving`): at each rung (epochs R, R*eta, R*eta^2, ... before the last) each activation's
  cells still training are ranked by mean validation accuracy over their seeds, and its best max(1, n // eta) go on;
  the others stop training (the population trains only the members still going: trainers.Population.active).
- Population-based training (`PBT`): every `interval` epochs, within each activation's members, the bottom quarter
  by validation accuracy each take the state of a random member of the top quarter (params, optimizer state) and its
  hyperparameters, perturbed: each searched hyperparameter is resampled from the space with probability 1/4, else
  multiplied by 0.8 or 1.25, and kept inside the space. The activation never changes.

Every choice is a pure function of (the rows' validation accuracies, --search-seed, the epoch), and what a
scheduler changed is saved with each checkpoint (`record`), so a resumed sweep makes the same choices.
The decisions (`rungs`, `survivors`, `exploit`, `explore`) are pure functions; `Halving` and `PBT` apply them to a
population and its metrics rows.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from mnist_jax import settings
from mnist_jax.metrics import PARENT, PRUNED, SELECTION
from mnist_jax.settings import Range

PERTURBATIONS = (0.8, 1.25)
RESAMPLE_PROBABILITY = 0.25


def rungs(first: int, eta: int, epochs: int) -> list[int]:
    """The epochs after which successive halving prunes: first, first*eta, ... before the last epoch."""
    out, epoch = [], first
    while epoch < epochs:
        out.append(epoch)
        epoch *= eta
    return out


def survivors(members: Sequence[Mapping[str, Any]], scores: Sequence[float], going: Sequence[bool],
              eta: int) -> list[bool]:
    """Which members train on after a rung: per activation, the best max(1, n // eta) of its n cells still going,
    ranked by mean score over the cell's seeds (a tie goes to the cell listed first)."""
    keep = [False] * len(members)
    for activation in dict.fromkeys(m["activation"] for m in members):
        cells: dict[tuple, list[int]] = {}
        for i, m in enumerate(members):
            if m["activation"] == activation and going[i]:
                cells.setdefault(settings.cell_of(m), []).append(i)
        ranked = sorted(cells.values(), key=lambda idx: -float(np.mean([scores[i] for i in idx])))
        for idx in ranked[:max(1, len(ranked) // eta)]:
            for i in idx:
                keep[i] = True
    return keep


def searched(space: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters PBT perturbs: those the space gives a range or more than one value (never the
    activation)."""
    return {name: values for name, values in space.items()
            if name != "activation" and (isinstance(values, Range) or len(values) > 1)}


def exploit(members: Sequence[Mapping[str, Any]], scores: Sequence[float], rng: np.random.Generator) -> list[int]:
    """For each member, the member whose state it continues from: itself, or (for the bottom quarter of its
    activation by score) a random member of the top quarter (ties go to the member listed first)."""
    parents = list(range(len(members)))
    for activation in dict.fromkeys(m["activation"] for m in members):
        group = [i for i, m in enumerate(members) if m["activation"] == activation]
        ranked = sorted(group, key=lambda i: -scores[i])  # stable: ties keep their order
        quarter = len(ranked) // 4
        if quarter:
            top = ranked[:quarter]
            for i in ranked[-quarter:]:
                parents[i] = int(top[rng.integers(len(top))])
    return parents


def explore(member: Mapping[str, Any], space: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A perturbed copy of `member`: each hyperparameter of `space` (`searched`) resampled from it with probability
    RESAMPLE_PROBABILITY, else multiplied by one of PERTURBATIONS, and clipped to the space's bounds."""
    out = dict(member)
    for name, values in space.items():
        setting = settings.BY_NAME[name]
        low, high = (values.low, values.high) if isinstance(values, Range) else (min(values), max(values))
        if rng.random() < RESAMPLE_PROBABILITY:
            out[name] = settings.draw(setting, values, rng.random()) if isinstance(values, Range) else \
                values[int(rng.integers(len(values)))]
        else:
            out[name] = min(max(float(f"{member[name] * PERTURBATIONS[int(rng.integers(2))]:.4g}"), low), high)
    return out


def scores_of(row: Mapping[str, Any]) -> list[float]:
    """Each member's validation accuracy in a sweep row."""
    return [m[SELECTION] for m in row["members"]]


def check(values: Mapping[str, Any], has_validation: bool) -> None:
    """A ValueError where the scheduler cannot work as asked."""
    if values["scheduler"] != "none" and not has_validation:
        raise ValueError(f"--scheduler {values['scheduler']} chooses on validation accuracy: keep a validation split "
                         "(--validation-size above 0)")


class Halving:
    """Successive halving over a trainers.Population."""

    changing = ()  # no hyperparameter changes as it trains

    def __init__(self, population, eta: int, first_rung: int, epochs: int):
        self.population, self.eta, self.rungs = population, eta, rungs(first_rung, eta, epochs)
        self.going = [True] * len(population.members)

    def settings(self) -> dict:
        return {"eta": self.eta, "rungs": self.rungs}

    def after_epoch(self, epoch: int, row: dict, previous: dict | None, state):
        """Fills in the entries of stopped members (their last ones) and, at a rung, stops the cells that lose."""
        for i, going in enumerate(self.going):
            if not going:
                row["members"][i] = dict(previous["members"][i]) if previous else row["members"][i]
        if epoch in self.rungs:
            keep = survivors(self.population.members, scores_of(row), self.going, self.eta)
            for i, (was, stays) in enumerate(zip(self.going, keep)):
                if was and not stays:
                    row["members"][i][PRUNED] = epoch
            self.going = keep
            self.population.train_only(self.going)
            return state, True
        return state, False

    def record(self) -> dict:
        return {"going": self.going}

    def restore(self, record: Mapping[str, Any]) -> None:
        self.going = list(record["going"])
        self.population.train_only(self.going)


class PBT:
    """Population-based training over a trainers.Population."""

    def __init__(self, population, interval: int, space: Mapping[str, Any], search_seed: int, epochs: int):
        self.population, self.interval, self.epochs = population, interval, epochs
        self.space, self.search_seed = searched(space), search_seed

    def settings(self) -> dict:
        return {"interval": self.interval, "perturbations": list(PERTURBATIONS),
                "resample_probability": RESAMPLE_PROBABILITY}

    @property
    def changing(self) -> list[str]:
        """The hyperparameters that change during training."""
        return list(self.space)

    def after_epoch(self, epoch: int, row: dict, previous: dict | None, state):
        """At an interval before the last epoch: exploit and explore; each row entry names its parent."""
        if epoch % self.interval or epoch >= self.epochs:
            return state, False
        rng = np.random.default_rng([self.search_seed, epoch])
        members = self.population.members
        parents = exploit(members, scores_of(row), rng)
        new = [explore(members[p], self.space, rng) if p != i else dict(members[i]) for i, p in enumerate(parents)]
        for i, p in enumerate(parents):
            new[i]["seed"] = members[i]["seed"]  # the seed names the member's own batch order, which it keeps
            row["members"][i][PARENT] = p
        self.population.set_members(new)
        return self.population.take(state, parents), False

    def record(self) -> dict:
        return {"members": self.population.members}

    def restore(self, record: Mapping[str, Any]) -> None:
        self.population.set_members([dict(m) for m in record["members"]])


def member_epochs(rows: Sequence[Mapping[str, Any]]) -> int:
    """Member-epochs a sweep trained: each member's epochs until it stopped (PRUNED) or the end."""
    last = rows[-1]
    return int(sum(m.get(PRUNED, last["epoch"]) for m in last["members"]))


def of(values: Mapping[str, Any], population, space: Mapping[str, Any], epochs: int):
    """The scheduler the settings ask for over `population`, or None."""
    if values["scheduler"] == "halving":
        return Halving(population, values["eta"], values["first_rung"], epochs)
    if values["scheduler"] == "pbt":
        return PBT(population, values["pbt_interval"], space, values["search_seed"], epochs)
    return None
