"""Tuning inside the sweep: more per-member hyperparameters, search spaces, successive halving, PBT."""

import json
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnist_jax import cli, engine, population, schedulers, settings, sweep
from mnist_jax.settings import Range
from mnist_jax.trainers import Population
from mnist_jax.workdir import load_member

from test_events import hparams_of, read_scalars
from conftest import SMALL, make_config, member, member_state, one_line_error, population_epoch, run_cli, train_epoch

QUICK = [*SMALL, "--validation-size", "256", "--test-limit", "256"]
SPACE = ["--lrs", "0.0003..0.03", "--weight-decays", "0.001..0.3", "--samples", "4"]


def rows_of(workdir):
    """metrics.jsonl without the timing, which differs from launch to launch."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("epoch_seconds", "images_per_second")} for row in rows]


def as_if_killed_after(workdir, epoch):
    """What a kill right after epoch `epoch`'s checkpoint leaves: later checkpoints and metrics rows gone, no end."""
    for step in (workdir / "checkpoints").iterdir():
        if step.name.isdigit() and int(step.name) > epoch:
            shutil.rmtree(step)
    lines = (workdir / "metrics.jsonl").read_text().splitlines()[:epoch]
    (workdir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    (workdir / "results.json").unlink()


def test_a_sweep_over_learning_rate_weight_decay_b1_and_label_smoothing_equals_its_members_one_by_one(small_mnist):
    x_train, y_train, _, _ = map(jnp.asarray, small_mnist)
    config = make_config("mlp", hidden=(32,), batch_size=64, epochs=2, train_size=len(y_train))
    members = [member("relu", 0, lr, weight_decay=wd) for lr in (1e-3, 3e-3) for wd in (0.0, 0.5)]
    members += [member("elu", 1, 2e-3, b1=0.5), member("elu", 1, 2e-3, label_smoothing=0.2)]
    hyper = settings.hyper(members)
    stacked = population.initial_states(config, hyper, shared_order=False)
    epoch = population_epoch(config, shared_order=False, vmap_chunk=1)  # the members loop of the CPU default
    for _ in range(config.epochs):
        stacked = epoch(stacked, hyper, x_train, y_train)
    single_epoch = jax.jit(train_epoch, static_argnums=0)
    finals = []
    for i, m in enumerate(members):
        h = settings.hyper(m)
        state = engine.initial_state(config, h)
        for _ in range(config.epochs):
            state, _ = single_epoch(config, state, h, x_train, y_train)
        chex.assert_trees_all_equal(member_state(stacked, i), state)
        finals.append(state.params)
    for a, b in [(0, 1), (0, 2), (4, 5)]:  # each hyperparameter changes what is learned
        assert not np.array_equal(jax.tree.leaves(finals[a])[0], jax.tree.leaves(finals[b])[0])


def test_label_smoothing_is_the_cross_entropy_against_smoothed_targets_and_zero_is_the_plain_one():
    config = make_config("mlp", hidden=(16,))
    images = jax.random.randint(jax.random.PRNGKey(0), (8, 28, 28), 0, 256).astype(jnp.uint8)
    labels = jnp.arange(8) % 10
    params = engine.initial_state(config, settings.hyper(member())).params
    logits = engine.apply(config, params, settings.hyper(member()), images)
    for a in (0.0, 0.1, 0.4):
        loss, _ = engine.loss_and_logits(params, config, settings.hyper(member(label_smoothing=a)), images, labels)
        targets = optax.smooth_labels(jax.nn.one_hot(labels, 10), a)
        np.testing.assert_allclose(loss, optax.softmax_cross_entropy(logits, targets).mean(), rtol=1e-6)
    plain, _ = engine.loss_and_logits(params, config, settings.hyper(member()), images, labels)
    assert plain == optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def sweep_values(**keywords):
    return cli.from_keywords("sweep", {"activations": ["relu", "elu"], "seeds": 2, **keywords})


def members_of(values):
    settings.check_search(values)
    return settings.sweep_members(values, settings.config(values, 256))


def test_range_sampling_is_deterministic_inside_its_range_and_every_cell_has_every_activation_and_seed():
    values = sweep_values(lrs="0.0001..0.1", label_smoothings="0..0.3", weight_decays="0.01,0.1", samples=16)
    members = members_of(values)
    assert members == members_of(values)  # the same command samples the same cells
    assert members != members_of({**values, "search_seed": 1})
    cells = {settings.cell_of(m) for m in members}
    assert len(cells) == 2 * 16 * 2  # activations x samples x the listed weight decays
    for cell in {settings.cell_of(m)[1:] for m in members}:  # every cell under every activation and seed
        assert sum(settings.cell_of(m)[1:] == cell for m in members) == 2 * 2
    lrs = np.array(sorted({m["lr"] for m in members}))
    assert 1e-4 <= lrs.min() and lrs.max() <= 0.1
    assert 0 <= min(m["label_smoothing"] for m in members) and max(m["label_smoothing"] for m in members) <= 0.3
    # log-uniform: each of the three decades holds a fair share of the 16 learning rates
    assert all(3 <= np.sum((lrs >= low) & (lrs < low * 10)) <= 8 for low in (1e-4, 1e-3, 1e-2))
    assert settings.space_of(values, members)["lr"] == Range(0.0001, 0.1)


@pytest.mark.parametrize("argv, fragments", [
    (["--lrs", "0.01..0.001", "--samples", "4"], ["--lrs", "LOW must be below HIGH"]),
    (["--lrs", "0.01..0.01", "--samples", "4"], ["LOW must be below HIGH"]),
    (["--seed-list", "0..3"], ["--seed-list", "only for lrs, weight-decays, b1s, label-smoothings"]),
    (["--activations", "elu..relu"], ["--activations", "range"]),
    (["--weight-decays", "0..0.1", "--samples", "4"], ["log-uniformly", "above 0"]),
    (["--b1s", "0.5..1.5", "--samples", "4"], ["--b1s", "below 1"]),
    (["--samples", "4"], ["--samples is for ranges"]),
    (["--lrs", "0.001..0.1"], ["--lrs 0.001..0.1 is a range", "--samples N"]),
    (["--eta", "1"], ["--eta", "at least 2"]),
    (["--scheduler", "halving", "--validation-size", "0"], ["validation", "--validation-size"]),
    (["--scheduler", "sha"], ["--scheduler", "halving"]),
])
def test_bad_spaces_and_schedulers_are_one_line_errors(argv, fragments, tmp_path, capsys):
    assert run_cli(sweep.main, *QUICK, *argv, "--workdir", tmp_path / "w") == 2
    one_line_error(capsys, *fragments)
    assert not (tmp_path / "w").exists()


def test_the_api_takes_the_same_space_as_python_values():
    values = cli.from_keywords("sweep", {"lrs": Range(0.001, 0.01), "weight_decays": [0.0, 0.1], "samples": 3})
    text = cli.from_keywords("sweep", {"lrs": "0.001..0.01", "weight_decays": "0,0.1", "samples": 3})
    assert values == text


def test_halving_keeps_each_activations_best_cells_by_their_mean_over_seeds():
    # 2 activations x 4 cells (lr) x 2 seeds; the scores put each activation's cells in another order
    members = [{"activation": a, "seed": s, "lr": lr, "weight_decay": 0.1, "b1": 0.9, "label_smoothing": 0.0}
               for a in ("relu", "elu") for s in (0, 1) for lr in (1, 2, 3, 4)]
    means = {("relu", 1): 0.5, ("relu", 2): 0.9, ("relu", 3): 0.7, ("relu", 4): 0.6,
             ("elu", 1): 0.95, ("elu", 2): 0.1, ("elu", 3): 0.2, ("elu", 4): 0.94}
    spread = {0: 0.02, 1: -0.02}  # seeds differ; the means decide
    scores = [means[(m["activation"], m["lr"])] + spread[m["seed"]] for m in members]
    keep = schedulers.survivors(members, scores, [True] * len(members), eta=2)
    assert {(m["activation"], m["lr"]) for m, k in zip(members, keep) if k} == \
        {("relu", 2), ("relu", 3), ("elu", 1), ("elu", 4)}
    # the next rung ranks only the cells still going, and each activation keeps at least one
    again = schedulers.survivors(members, scores, keep, eta=3)
    assert {(m["activation"], m["lr"]) for m, k in zip(members, again) if k} == {("relu", 2), ("elu", 1)}
    assert schedulers.rungs(1, 3, 9) == [1, 3] and schedulers.rungs(2, 2, 12) == [2, 4, 8]


@pytest.mark.parametrize("chunk", [1, None], ids=["members loop", "vmap"])
def test_halving_trains_only_the_members_still_going_and_leaves_the_others_untouched(small_mnist, chunk):
    x_train, y_train, x_test, y_test = map(np.asarray, small_mnist)
    config = make_config("mlp", hidden=(64,), batch_size=64, epochs=2, train_size=len(y_train))
    members = [member(a, s, 2e-3) for a in ("relu", "elu", "leaky_relu") for s in (0, 1)]
    splits = {"train": (x_train, y_train), "val": (x_test, y_test)}
    trainer = Population(config, members, splits, shared_order=False, vmap_chunk=chunk)
    start = trainer.init()
    order = trainer.order(start)
    everyone = trainer.piece(start, order, 8)
    all_state, all_sums = everyone(start, order, np.int32(0))
    going = [True, False, False, True, False, False]
    trainer.train_only(going)
    assert trainer.members_per_device == 2
    some = trainer.piece(start, order, 8)
    some_state, some_sums = some(start, order, np.int32(0))
    for i, g in enumerate(going):
        chex.assert_trees_all_equal(member_state(some_state, i), member_state(all_state if g else start, i))
        assert float(some_sums["loss_sum"][i]) == (float(all_sums["loss_sum"][i]) if g else 0.0)
    if chunk is None:  # the stopped members cost nothing: a third of the work (XLA counts a loop's body once, so
        # the members loop's count says nothing; its states above show the stopped were not trained)
        flops = lambda program: program.compiled.cost_analysis()["flops"]  # noqa: E731
        assert flops(some) < 0.4 * flops(everyone)


def scheduled(scheduler, epochs, *extra):
    """The command line of a small sweep under `scheduler`: workdir -> argv."""
    return lambda workdir: [*QUICK, "--activations", "relu,elu", "--seeds", "2", *SPACE, "--scheduler", scheduler,
                            "--epochs", str(epochs), *extra, "--workdir", workdir]


def finished(tmp_path_factory, command):
    workdir = tmp_path_factory.mktemp("sweep") / "run"
    assert run_cli(sweep.main, *command(workdir)) == 0
    return workdir


halving_command = scheduled("halving", 4, "--eta", "2")
pbt_command = scheduled("pbt", 3)


@pytest.fixture(scope="module")
def halving_sweep(tmp_path_factory):
    return finished(tmp_path_factory, halving_command)


def test_a_halving_sweep_prunes_at_each_rung_and_selects_what_its_validation_rows_imply(halving_sweep):
    results = json.loads((halving_sweep / "results.json").read_text())
    rows = rows_of(halving_sweep)
    assert results["strategy"]["scheduler"] == "halving" and results["strategy"]["rungs"] == [1, 2]
    assert results["space"]["lr"] == {"low": 0.0003, "high": 0.03, "scale": "log"}
    members = results["members"]
    # 4 cells per activation: 2 go on after epoch 1, 1 after epoch 2; 2 seeds each
    for activation in ("relu", "elu"):
        trained = sorted(m["epochs_trained"] for m in members if m["activation"] == activation)
        assert trained == [1, 1, 1, 1, 2, 2, 4, 4]
    assert results["member_epochs"] == sum(m["epochs_trained"] for m in members) == 2 * (4 + 4 + 8)
    assert results["member_epochs_full"] == 16 * 4
    for s in results["selection"]:  # the survivors' mean final validation accuracy, from the rows themselves
        cells = {}
        for i, m in enumerate(rows[-1]["members"]):
            if m["activation"] == s["activation"] and results["members"][i]["epochs_trained"] == 4:
                cells.setdefault((m["lr"], m["weight_decay"]), []).append(m["val_accuracy"])
        best = max(cells, key=lambda c: np.mean(cells[c]))
        assert (s["lr"], s["weight_decay"]) == best and s["mean_val_accuracy"] == pytest.approx(np.mean(cells[best]))
    # a stopped member's row entry stays that of its last epoch, marked
    stopped = next(i for i, m in enumerate(members) if m["epochs_trained"] == 1)
    assert rows[-1]["members"][stopped]["pruned_after"] == 1
    assert rows[-1]["members"][stopped]["val_accuracy"] == rows[0]["members"][stopped]["val_accuracy"]
    assert "Successive halving" in (halving_sweep / "results.md").read_text()


def test_a_halving_sweep_killed_between_rungs_resumes_to_the_bit(halving_sweep, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(halving_sweep, copy)
    as_if_killed_after(copy, 1)  # after the first rung
    assert run_cli(sweep.main, *halving_command(copy)) == 0
    assert rows_of(copy) == rows_of(halving_sweep)
    for spec in ("relu,0", "elu,1"):
        label = next(settings.member_label(m) for m in json.loads((copy / "run.json").read_text())["members"]
                     if settings.member_label(m).startswith(spec))
        chex.assert_trees_all_equal(load_member(copy, label)[0].state, load_member(halving_sweep, label)[0].state)


@pytest.fixture(scope="module")
def pbt_sweep(tmp_path_factory):
    return finished(tmp_path_factory, pbt_command)


def test_pbt_exploit_copies_exactly_the_chosen_members_state_and_keeps_its_own_order(small_mnist):
    config = make_config("mlp", hidden=(16,), batch_size=64, epochs=1, train_size=2048)
    members = [member("relu", s, lr) for s, lr in ((0, 1e-3), (1, 2e-3), (2, 3e-3), (3, 4e-3))]
    state = population.initial_states(config, settings.hyper(members), shared_order=False)
    state = state.replace(diverged=jnp.array([False, False, True, False]))
    taken = population.take(state, jnp.array([0, 3, 1, 3]))
    for i, parent in enumerate([0, 3, 1, 3]):
        got, source = member_state(taken, i), member_state(state, parent)
        chex.assert_trees_all_equal((got.params, got.opt_state, got.diverged),
                                    (source.params, source.opt_state, source.diverged))
        chex.assert_trees_all_equal(got.data_key, member_state(state, i).data_key)


def test_pbt_exploit_replaces_the_bottom_quarter_of_each_activation_by_its_top_quarter():
    members = [{"activation": a} for a in ("relu",) * 8 + ("elu",) * 4]
    scores = [0.1, 0.9, 0.5, 0.8, 0.2, 0.6, 0.7, 0.3] + [0.4, 0.3, 0.2, 0.1]
    parents = schedulers.exploit(members, scores, np.random.default_rng(0))
    assert [p for i, p in enumerate(parents) if p != i and i < 8] and set(parents[:8]) <= set(range(8))
    assert {i for i, p in enumerate(parents) if p != i} == {0, 4, 11}  # relu's two worst, elu's worst
    assert {parents[0], parents[4]} <= {1, 3} and parents[11] == 8  # from the top quarter of their own activation


def test_pbt_explore_stays_in_the_space():
    space = {"lr": Range(1e-4, 1e-2), "weight_decay": [0.0, 0.1, 0.3], "label_smoothing": Range(0.0, 0.2)}
    rng = np.random.default_rng(0)
    m = {"activation": "relu", "seed": 0, "lr": 1e-2, "weight_decay": 0.3, "b1": 0.9, "label_smoothing": 0.2}
    seen = set()
    for _ in range(200):
        m = schedulers.explore(m, space, rng)
        assert 1e-4 <= m["lr"] <= 1e-2 and 0.0 <= m["weight_decay"] <= 0.3 and 0 <= m["label_smoothing"] <= 0.2
        assert m["activation"] == "relu" and m["b1"] == 0.9
        seen.add(m["weight_decay"])
    assert {0.0, 0.1, 0.3} <= seen  # resampled from the list too


def test_a_pbt_sweep_records_lineages_and_resumes_to_the_bit(pbt_sweep, tmp_path):
    results = json.loads((pbt_sweep / "results.json").read_text())
    assert results["strategy"]["scheduler"] == "pbt" and (pbt_sweep / "lineages.png").is_file()
    rows = rows_of(pbt_sweep)
    members = results["members"]
    assert all(len(m["history"]) == 2 for m in members)  # intervals after epochs 1 and 2 (none after the last)
    for i, m in enumerate(members):
        for h, row, after in zip(m["history"], rows, rows[1:]):
            assert h["parent"] == row["members"][i]["parent"]
            assert members[h["parent"]]["activation"] == m["activation"]
            assert (h["lr"], h["weight_decay"]) == (after["members"][i]["lr"], after["members"][i]["weight_decay"])
    assert any(h["parent"] != i for i, m in enumerate(members) for h in m["history"])
    # TensorBoard shows each member's hyperparameters as they change, and every one in its hparams
    folder = settings.member_folders(json.loads((pbt_sweep / "run.json").read_text())["members"])[5]
    scalars = read_scalars(pbt_sweep / folder)
    assert scalars["hyperparameters/lr"] == [(row["epoch"], pytest.approx(row["members"][5]["lr"])) for row in rows]
    assert {"lr", "weight_decay", "b1", "label_smoothing"} <= set(hparams_of(pbt_sweep / folder))
    copy = tmp_path / "copy"
    shutil.copytree(pbt_sweep, copy)
    as_if_killed_after(copy, 1)
    assert run_cli(sweep.main, *pbt_command(copy)) == 0
    assert rows_of(copy) == rows
    assert json.loads((copy / "results.json").read_text())["members"] == members
