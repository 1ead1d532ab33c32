"""Each setting is declared once: its flag, API keyword, run identity, workdir name and hparams all follow from it."""

import dataclasses
from pathlib import Path

import pytest

from mnist_jax import cli, data, engine, settings, sweep, train
from mnist_jax.errors import UserError
from mnist_jax.workdir import run_record

BASE = {"model": "mlp", "train_limit": 1024, "test_limit": 256}  # the MLP, so that its hidden sizes count too


FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def other_value(s: settings.Setting):
    """A valid value of `s` other than the one BASE gives it."""
    current = BASE.get(s.name, s.default)
    if s.choices:
        return next(c for c in s.choices if c != current and c != "auto")
    if s.parse is settings.flag:
        return not current
    if isinstance(current, tuple):
        return (32,)
    if s.parse in (settings.positive_float, settings.non_negative_float, settings.fraction):
        return 0.0123
    if s.parse is settings.path:
        return data.bundled_dir()  # another folder holding the same images
    return (current or 0) + 512


def record_of(values: dict) -> dict:
    _, splits, data_record, _ = data.load_splits(values["dataset"], values["data_source"], values["data_dir"],
                                                 values["validation_size"], values["train_limit"],
                                                 values["test_limit"], values["batch_size"])
    config = settings.config(values, len(splits["train"][1]))
    return run_record(config, settings.member(values, config), data_record)


def train_values(**changed) -> dict:
    return cli.from_keywords("train", {**BASE, **changed})


@pytest.fixture(scope="module")
def default_record():
    return record_of(train_values())


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_every_setting_is_a_flag_of_its_commands_and_a_keyword_of_their_python_api(command):
    parser = train.parser() if command == "train" else sweep.parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    for s in settings.of(command):
        names = [n for n in (s.plural, s.count) if n] if command == "sweep" and s.role == settings.MEMBER \
            else [s.name]
        for name in names:
            assert f"--{name.replace('_', '-')}" in flags, name
            assert name in cli.from_keywords(command, {}), name  # the API starts from the same defaults
    assert cli.parse(parser, []) == {**cli.from_keywords(command, {}),
                                     **({"export_member": None, "to": None} if command == "sweep" else {})}


@pytest.mark.parametrize("s", [s for s in settings.of("train") if s.identity], ids=lambda s: s.name)
def test_every_identity_setting_changes_the_run_record_and_the_default_workdir(s, default_record):
    changed = {s.name: other_value(s)}
    if s.name == "dataset":
        if not FASHION.is_dir():
            pytest.skip(f"no second dataset here ({FASHION}: apt-get install dataset-fashion-mnist)")
        changed["data_dir"] = FASHION
    values = train_values(**changed)
    assert record_of(values) != default_record
    assert settings.workdir_name("train", values) != settings.workdir_name("train", train_values())


@pytest.mark.parametrize("s", [s for s in settings.of("train") if not s.identity and s.role != settings.LAUNCH
                               or s.name in ("fresh", "no_compile_cache")], ids=lambda s: s.name)
def test_a_setting_outside_the_identity_leaves_the_run_record_and_workdir_as_they_are(s, default_record):
    values = train_values(**{s.name: other_value(s)})
    record = record_of(values) if s.name != "data_source" else default_record  # another source: the same images
    assert {k: v for k, v in record.items() if k != "data_location"} == \
        {k: v for k, v in default_record.items() if k != "data_location"}
    assert settings.workdir_name("train", values) == settings.workdir_name("train", train_values())


def test_every_static_setting_is_a_config_field_and_every_member_setting_a_hyperparameter():
    fields = {f.name for f in dataclasses.fields(engine.Config)}
    assert {s.name for s in settings.members_of(settings.STATIC)} <= fields
    config = settings.config({"model": "mlp"}, 256)
    member = settings.member({}, config)
    hyper = settings.hyper(member)
    assert set(hyper) == {s.name for s in settings.members_of()}
    engine.initial_state(config, hyper)  # the engine takes them as they are


def test_every_setting_that_shapes_training_is_in_the_hparams_and_the_recipe():
    config = settings.config({"model": "mlp"}, 256)
    member = settings.member({}, config)
    hparams, recipe = settings.hparams(config, member), settings.recipe(config, member)
    for s in settings.SETTINGS:
        if s.identity and s.role in (settings.STATIC, settings.MEMBER):
            assert s.name in hparams, s.name
            assert not isinstance(hparams[s.name], (list, tuple, dict)), s.name  # TensorBoard takes scalars
            if s.name not in ("model", "activation", "seed"):
                assert s.record_key in recipe, s.name
    assert hparams["lr"] == recipe["learning_rate"] == engine.OPTIMIZERS["adamw"].learning_rate


def test_a_sweep_is_the_product_of_its_member_lists_in_declaration_order():
    values = cli.from_keywords("sweep", {"activations": ["relu", "elu"], "seeds": 2, "lrs": "0.001,0.01"})
    members = settings.sweep_members(values, settings.config(values, 256))
    assert [settings.member_label(m) for m in members] == [
        f"{a},{seed},{lr},0.2,0.9,0" for a in ("relu", "elu") for seed in (0, 1) for lr in (0.001, 0.01)]
    assert settings.member_folders(members)[1] == "relu-seed0-lr0.01"  # what all members share is not named
    assert settings.parse_member_label("relu,1") == {"activation": "relu", "seed": 1}


def test_default_workdir_names_name_what_differs_in_declaration_order():
    assert str(settings.workdir_name("train", train_values(train_limit=None, test_limit=None))) == \
        "checkpoints/mlp-relu-seed0"
    assert str(settings.workdir_name("train", cli.from_keywords("train", {
        "optimizer": "sgd", "lr": 0.1, "epochs": 3}))) == "checkpoints/lenet-relu-seed0-epochs3-optimizersgd-lr0.1"
    assert str(settings.workdir_name("sweep", cli.from_keywords("sweep", {
        "lrs": [0.001, 0.01], "seeds": 5, "epochs": 2}))) == "checkpoints/sweep-lenet-seeds5-lrs0.001_0.01-epochs2"


@pytest.mark.parametrize("keywords, fragment", [
    ({"epochs": 0}, "--epochs"), ({"lr": -1.0}, "--lr"), ({"model": "resnet"}, "unknown model"),
    ({"hidden": "a"}, "--hidden"), ({"learning_rate": 0.1}, "unknown setting 'learning_rate'"),
])
def test_bad_api_settings_raise_the_command_lines_one_line_error(keywords, fragment):
    with pytest.raises(UserError) as error:
        train.run(**keywords)
    assert fragment in str(error.value) and "\n" not in str(error.value)
