"""Faults and bad input as a new user meets them: nothing lost, one clear line, never a traceback."""

import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from mnist_jax import checkpoint, cli, engine, evaluate, loop, records, settings, sweep, train
from mnist_jax.data import write_idx
from mnist_jax.models import MODELS
from mnist_jax.workdir import hold, load_member

from conftest import SMALL, last_error_line, make_config, make_hyper, run_cli

ROOT = Path(__file__).resolve().parents[1]
QUICK = [*SMALL, "--validation-size", "500"]  # fewer held-out images: less evaluation per epoch


def strict_json(path: Path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_two_different_commands_get_different_default_workdirs_and_one_command_always_the_same():
    def workdir(command, *argv):
        parser = {"train": train.parser, "sweep": sweep.parser}[command]()
        return settings.workdir_name(command, cli.parse(parser, list(argv)))

    default = workdir("train", "--model", "mlp")
    one_epoch = workdir("train", "--model", "mlp", "--epochs", "1")
    fashion = workdir("train", "--model", "mlp", "--dataset", "fashion_mnist", "--data-dir", "/somewhere")
    assert len({default, one_epoch, fashion}) == 3
    assert one_epoch == workdir("train", "--epochs", "1", "--model", "mlp")
    assert default == Path("checkpoints/mlp-relu-seed0") and one_epoch == Path("checkpoints/mlp-relu-seed0-epochs1")
    assert workdir("sweep", "--lrs", "0.001,0.01") != workdir("sweep", "--lrs", "0.001")
    assert workdir("sweep", "--lrs", "0.001") == workdir("sweep", "--lrs", "0.001")


def test_fresh_never_deletes_a_folder_without_a_run_record(tmp_path, capsys):
    other = tmp_path / "checkpoints" / "someone-elses"
    other.mkdir(parents=True)
    (other / "weights.bin").write_bytes(b"precious")
    assert run_cli(train.main, *QUICK, "--epochs", "1", "--workdir", tmp_path, "--fresh") == 2
    assert "no run.json" in last_error_line(capsys)
    assert (other / "weights.bin").read_bytes() == b"precious"


def test_fresh_deletes_only_what_the_run_wrote(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *QUICK, "--epochs", "1", "--workdir", workdir) == 0
    assert run_cli(evaluate.main, "--workdir", workdir) == 0
    (workdir / "my_notes.txt").write_text("keep me")
    assert run_cli(train.main, *QUICK, "--epochs", "1", "--activation", "elu", "--workdir", workdir, "--fresh") == 0
    assert (workdir / "my_notes.txt").read_text() == "keep me"
    assert not (workdir / "evaluation").exists()
    assert json.loads((workdir / "run.json").read_text())["activation"] == "elu"


def test_a_second_launch_into_a_held_workdir_names_the_holder_and_changes_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *QUICK, "--epochs", "1", "--workdir", workdir) == 0
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.name != ".lock"}
    with hold(workdir):
        assert run_cli(train.main, *QUICK, "--epochs", "2", "--workdir", workdir, "--fresh") == 2
        assert f"in use by PID {os.getpid()}" in last_error_line(capsys)
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.name != ".lock"} == before


@pytest.mark.parametrize("fail", ["checkpoint", "metrics"])
def test_a_full_disk_mid_run_is_one_line_and_the_same_command_resumes(fail, tmp_path, capsys, monkeypatch):
    workdir = tmp_path / "run"
    real_save, real_append = checkpoint.save, records.append_row

    def save(manager, step, *args):
        if step == 2:
            raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "x": No space left on device [28]')
        return real_save(manager, step, *args)

    def append_row(path, row):
        if row["epoch"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_append(path, row)

    monkeypatch.setattr(checkpoint, "save", save) if fail == "checkpoint" else \
        monkeypatch.setattr(records, "append_row", append_row)
    assert run_cli(train.main, *QUICK, "--epochs", "3", "--workdir", workdir) == 2
    line = last_error_line(capsys)
    assert "No space left on device" in line and "resume after epoch 1" in line
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]
    monkeypatch.undo()
    assert run_cli(train.main, *QUICK, "--epochs", "3", "--workdir", workdir) == 0
    assert [r["epoch"] for r in records.read_rows(workdir / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("damage", ['{"epoch": 2, "train_lo', "\x00\x00garbage\n"])
def test_a_damaged_last_metrics_line_is_dropped_with_a_warning_and_the_run_resumes(damage, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *QUICK, "--epochs", "2", "--workdir", workdir) == 0
    first = (workdir / "metrics.jsonl").read_text().splitlines()[0]
    (workdir / "metrics.jsonl").write_text(first + "\n" + damage)  # a crash while writing epoch 2's row
    shutil.rmtree(workdir / "checkpoints" / "2")  # which came before its checkpoint
    capsys.readouterr()
    assert run_cli(train.main, *QUICK, "--epochs", "2", "--workdir", workdir) == 0
    assert "dropped damaged line" in capsys.readouterr().err
    assert [r["epoch"] for r in records.read_rows(workdir / "metrics.jsonl")] == [1, 2]


def test_a_damaged_run_record_is_one_line_naming_it(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *QUICK, "--epochs", "1", "--workdir", workdir) == 0
    (workdir / "run.json").write_text('{"format": 2, "conf')
    assert run_cli(evaluate.main, "--workdir", workdir) == 2
    assert f"{workdir / 'run.json'} is damaged" in last_error_line(capsys)


def test_a_diverged_run_ends_cleanly_with_strict_json_and_says_so(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *QUICK, "--epochs", "2", "--weight-decay", "1e30", "--workdir", workdir) == 0
    out = capsys.readouterr().out
    assert "DIVERGED in epoch" in out.strip().splitlines()[-1]
    summary = strict_json(workdir / "summary.json")
    assert summary["diverged"] is True
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.jsonl holds {c}"))
    swept = tmp_path / "sweep"
    assert run_cli(sweep.main, *QUICK, "--epochs", "1", "--lrs", "0.001,50", "--seeds", "2", "--workdir", swept) == 0
    assert sum(m["diverged"] for m in strict_json(swept / "results.json")["members"]) == 6
    for png in ("learning_curves.png", "validation_vs_lr.png"):
        assert (swept / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("main, argv, fragment", [
    (train.main, ["--seed", "-1"], "--seed"), (train.main, ["--seed", str(2 ** 32)], "32-bit"),
    (train.main, ["--lr", "inf"], "--lr"), (train.main, ["--lr", "0"], "--lr"),
    (train.main, ["--weight-decay", "nan"], "--weight-decay"), (train.main, ["--weight-decay", "-1"], "--weight-decay"),
    (train.main, ["--epochs", "0"], "--epochs"), (train.main, ["--batch-size", "0"], "--batch-size"),
    (train.main, ["--hidden", "0"], "--hidden"), (train.main, ["--train-limit", "0"], "--train-limit"),
    (train.main, ["--test-limit", "-5"], "--test-limit"), (train.main, ["--validation-size", "x"], "--validation-size"),
    (train.main, ["--distributed-timeout", "0"], "--distributed-timeout"),
    (sweep.main, ["--seeds", "0"], "--seeds"), (sweep.main, ["--seed-list", "1,1"], "more than once"),
    (sweep.main, ["--activations", "elu,elu"], "more than once"), (sweep.main, ["--lrs", "0.1,0.1"], "more than once"),
    (sweep.main, ["--lrs", "0.1,nan"], "--lrs"), (sweep.main, ["--seed-list", "-2"], "--seed-list"),
    (sweep.main, ["--vmap-chunk", "0"], "--vmap-chunk"),
    (evaluate.main, ["--workdir", ".", "--errors", "0"], "--errors"),
])
def test_every_numeric_flag_out_of_its_domain_is_one_line_before_any_work(main, argv, fragment, tmp_path, capsys):
    extra = [] if main is evaluate.main else ["--workdir", str(tmp_path / "w")]
    assert run_cli(main, *argv, *extra) == 2
    assert fragment in last_error_line(capsys)
    assert not (tmp_path / "w").exists()


def test_evaluate_refuses_another_dataset_than_the_run_was_trained_on(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *QUICK, "--epochs", "1", "--workdir", workdir) == 0
    assert run_cli(evaluate.main, "--workdir", workdir, "--dataset", "fashion_mnist") == 2
    assert "trained on mnist" in last_error_line(capsys)


def test_evaluate_into_a_closed_pipe_ends_quietly(tmp_path):
    workdir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "mnist_jax.train", *QUICK, "--epochs", "1", "--workdir", str(workdir)],
                   env=env, check=True, capture_output=True)
    result = subprocess.run(f"{sys.executable} -m mnist_jax.evaluate --workdir {workdir} | head -2", shell=True,
                            env=env, capture_output=True, text=True)
    assert len(result.stdout.splitlines()) == 2
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def can_mount() -> bool:
    return os.geteuid() == 0 and subprocess.run(["which", "mount"], capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """A real 2 MB filesystem (root only), for a full disk and a read-only workdir."""
    if not can_mount():
        pytest.skip("mounting a tmpfs needs root")
    point = tmp_path / "mnt"
    point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(point)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_a_really_full_disk_is_one_line_and_the_last_checkpoint_survives(tmpfs, tmp_path):
    argv = [sys.executable, "-m", "mnist_jax.train", "--model", "lenet", "--epochs", "6", "--train-limit", "2048",
            "--test-limit", "256", "--validation-size", "500"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([*argv, "--workdir", str(tmpfs / "run")], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1].split("\r")[-1].strip()
    assert "No space left on device" in line and "resume after epoch" in line, result.stderr[-2000:]
    kept = sorted(int(p.name) for p in (tmpfs / "run" / "checkpoints").iterdir() if p.name.isdigit())
    moved = tmp_path / "moved"
    subprocess.run(["cp", "-a", str(tmpfs / "run"), str(moved)], check=True)  # space freed: elsewhere
    resumed = subprocess.run([*argv, "--workdir", str(moved)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0 and f"after epoch {kept[-1]} of 6" in resumed.stdout


def test_a_read_only_workdir_reports_a_finished_run_and_evaluate_writes_elsewhere(tmpfs, tmp_path, capsys):
    workdir = tmpfs / "run"
    assert run_cli(train.main, *QUICK, "--epochs", "1", "--workdir", workdir) == 0
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    capsys.readouterr()
    assert run_cli(train.main, *QUICK, "--epochs", "1", "--workdir", workdir) == 0
    assert "already holds a finished run" in capsys.readouterr().out
    assert run_cli(evaluate.main, "--workdir", workdir) == 2
    assert "pass --out DIR" in last_error_line(capsys)
    assert run_cli(evaluate.main, "--workdir", workdir, "--out", tmp_path / "elsewhere") == 0
    assert run_cli(train.main, *QUICK, "--epochs", "1", "--workdir", tmpfs / "new") == 2
    assert "Read-only file system" in last_error_line(capsys)


SIGNALLED = [sys.executable, "-m", "mnist_jax.sweep", "--model", "lenet", "--activations", "elu,relu", "--seeds", "1",
             "--epochs", "2", "--train-limit", "16384", "--test-limit", "500", "--validation-size", "500"]


@pytest.fixture(scope="module")
def straight_sweep(tmp_path_factory):
    """The sweep the signal tests stop, run straight through once."""
    workdir = tmp_path_factory.mktemp("signals") / "straight"
    subprocess.run([*SIGNALLED, "--workdir", str(workdir)], env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True,
                   capture_output=True)
    return workdir


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_epoch_stops_within_seconds_and_the_same_command_resumes_to_the_bit(stop, straight_sweep,
                                                                                       tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "out.txt"
    with open(out, "w") as stdout:
        process = subprocess.Popen([*SIGNALLED, "--workdir", str(tmp_path / "stopped")], env=env, stdout=stdout,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while "compiled" not in out.read_text():
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.05)
        time.sleep(1.0)
        sent = time.time()
        process.send_signal(stop)
        _, err = process.communicate(timeout=60)
    assert time.time() - sent < 5 and process.returncode == 130
    assert "interrupted" in err and "run the same command to resume" in err and "Traceback" not in err
    resumed = subprocess.run([*SIGNALLED, "--workdir", str(tmp_path / "stopped")], env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout
    for spec in ("elu,0", "relu,0"):
        chex.assert_trees_all_equal(load_member(straight_sweep, spec)[0].state,
                                    load_member(tmp_path / "stopped", spec)[0].state)
    assert [r["members"] for r in records.read_rows(straight_sweep / "metrics.jsonl")] == \
        [r["members"] for r in records.read_rows(tmp_path / "stopped" / "metrics.jsonl")]


def test_progress_moves_inside_the_epoch_as_plain_lines_when_stderr_is_a_file(tmp_path, capsys):
    assert run_cli(sweep.main, *QUICK, "--seeds", "5", "--epochs", "1", "--workdir", tmp_path / "sweep") == 0
    err = capsys.readouterr().err
    positions = {line.split("step ")[1].split(" ")[0] for line in err.splitlines() if "epoch 1, step" in line}
    assert len(positions) >= 10 and "16/16" in positions  # 1024 images in batches of 64
    assert "\r" not in err


@pytest.mark.parametrize("steps,members,model", [(16, 5, "mlp"), (429, 1, "lenet"), (429, 60, "lenet"),
                                                  (429, 75, "mlp"), (7, 3, "lenet")])
def test_an_epochs_pieces_cover_every_step_once_wherever_it_resumes(steps, members, model):
    budget = MODELS[model].piece_member_steps
    plan = loop.pieces(steps, members, budget)
    assert len(plan) >= min(loop.PIECES_PER_EPOCH, steps) and len({n for _, n in plan}) <= 2
    assert all(n == 1 or n * members <= budget for _, n in plan)  # a large sweep's bar still moves within seconds
    for start in range(steps):  # resumed after any step, e.g. where a plan for another device count stopped it
        resumed = loop.pieces(steps, members, budget, start)
        assert [s for first, n in resumed for s in range(first, first + n)] == list(range(start, steps))
        assert {n for _, n in resumed[1:]} <= {n for _, n in plan}


@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_where_an_epoch_is_cut_into_pieces_does_not_change_a_bit(model, small_mnist):
    x, y = small_mnist[0][:640], small_mnist[1][:640]
    config = make_config(model, hidden=(32,), batch_size=64, train_size=640)
    hyper = make_hyper("elu", 2e-3, 0)

    def train_in(plan):
        state = engine.initial_state(config, hyper)
        order = engine.epoch_order(config, state)
        for first, n in plan:
            state, _ = jax.jit(functools.partial(engine.train_steps, config, steps=n))(state, hyper, x, y, order,
                                                                                      np.int32(first))
        return state.params

    chex.assert_trees_all_equal(train_in([(0, 4), (4, 6)]), train_in([(0, 6), (6, 4)]))  # two programs, cut apart


def test_evaluate_and_resume_refuse_other_data_than_the_run_was_trained_and_tested_on(mnist, tmp_path, capsys):
    copies = {"same": mnist.y_test, "other": (mnist.y_test + 1) % 10}  # other: the test labels changed
    for folder, test_labels in copies.items():
        (tmp_path / folder).mkdir()
        for name, array in (("train-images-idx3-ubyte", mnist.x_train), ("train-labels-idx1-ubyte", mnist.y_train),
                            ("t10k-images-idx3-ubyte", mnist.x_test), ("t10k-labels-idx1-ubyte", test_labels)):
            write_idx(tmp_path / folder / name, array)
    workdir = tmp_path / "run"
    assert run_cli(train.main, *QUICK, "--epochs", "1", "--workdir", workdir) == 0  # the bundled copy
    assert json.loads((workdir / "run.json").read_text())["content"] == mnist.content()
    # Another copy of the same data is fine; other data is one line, for evaluate and for a resume alike.
    assert run_cli(evaluate.main, "--workdir", workdir, "--data-source", "idx", "--data-dir", tmp_path / "same") == 0
    capsys.readouterr()
    assert run_cli(evaluate.main, "--workdir", workdir, "--data-source", "idx", "--data-dir", tmp_path / "other") == 2
    assert "are not those" in last_error_line(capsys)
    assert run_cli(train.main, *QUICK, "--epochs", "1", "--workdir", workdir, "--data-source", "idx",
                   "--data-dir", tmp_path / "other") == 2
    assert "content.test" in last_error_line(capsys)


def test_a_run_recorded_before_data_digests_still_resumes(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *QUICK, "--epochs", "1", "--workdir", workdir) == 0
    record = json.loads((workdir / "run.json").read_text())
    del record["content"]
    (workdir / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert run_cli(train.main, *QUICK, "--epochs", "1", "--workdir", workdir) == 0
    assert "already holds a finished run" in capsys.readouterr().out
