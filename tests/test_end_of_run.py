"""The end of a run is a step like any other, --fresh deletes all or nothing, and the environment's faults are one line."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from mnist_jax import cli, evaluate, plots, records, results, settings, sweep, train, trainers

from conftest import SMALL, last_error_line, one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]
QUICK = [*SMALL, "--validation-size", "500", "--epochs", "1"]
SWEEP = [*QUICK, "--activations", "relu,elu", "--seeds", "1"]


def leftovers(workdir: Path) -> list[Path]:
    return [p for p in workdir.rglob("*") if p.name.endswith(".tmp") or "orbax-checkpoint-tmp" in p.name]


def full_disk(path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_at_the_summary_names_it_and_the_same_command_writes_it(tmp_path, capsys, monkeypatch):
    workdir = tmp_path / "run"
    monkeypatch.setattr(records, "os", _FailingReplace(os, "summary.json"))
    assert run_cli(train.main, *QUICK, "--workdir", workdir) == 2
    line = last_error_line(capsys)
    assert "summary.json" in line and "No space left on device" in line and "free space" in line
    monkeypatch.undo()
    assert not (workdir / "summary.json").exists()
    assert run_cli(train.main, *QUICK, "--workdir", workdir) == 0
    out = capsys.readouterr().out
    assert "rewritten from its records" in out
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["test_accuracy"] == json.loads((workdir / "metrics.jsonl").read_text())["test_accuracy"]
    assert records.is_whole_png(workdir / "curves.png") and not leftovers(workdir)
    assert run_cli(train.main, *QUICK, "--workdir", workdir) == 0  # now whole: nothing more to write
    assert "rewritten" not in capsys.readouterr().out


class _FailingReplace:
    """`os` whose replace fails for one file name, as a full disk makes the last step of an atomic write fail."""

    def __init__(self, real, name):
        self._real, self._name = real, name

    def __getattr__(self, attribute):
        return getattr(self._real, attribute)

    def replace(self, source, target):
        if Path(target).name == self._name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._real.replace(source, target)


def test_a_write_that_fails_midway_names_its_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    real_os = records.os
    records.os = _FailingReplace(real_os, "summary.json")
    try:
        with pytest.raises(records.UserError) as error:
            records.write_json(target, {"a": 1})
    finally:
        records.os = real_os
    assert str(target) in str(error.value) and "free space" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_damaged_or_missing_end_of_run_outputs_are_rewritten_on_the_next_launch(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run_cli(train.main, *QUICK, "--workdir", workdir) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    (workdir / "summary.json").write_text('{"model": "ml')  # a kill in the middle of the write
    (workdir / "curves.png").write_bytes((workdir / "curves.png").read_bytes()[:100])
    (workdir / ".summary.json.12345.tmp").write_text("left by a killed write")
    capsys.readouterr()
    assert run_cli(train.main, *QUICK, "--workdir", workdir) == 0
    assert "rewritten from its records" in capsys.readouterr().out
    rewritten = json.loads((workdir / "summary.json").read_text())
    assert {k: rewritten[k] for k in ("test_accuracy", "val_accuracy", "epochs", "hyperparameters")} == \
        {k: summary[k] for k in ("test_accuracy", "val_accuracy", "epochs", "hyperparameters")}
    assert records.is_whole_png(workdir / "curves.png") and not leftovers(workdir)


def test_a_full_disk_at_a_sweeps_plots_is_one_line_and_the_same_command_writes_its_results(tmp_path, capsys,
                                                                                            monkeypatch):
    workdir = tmp_path / "sweep"
    monkeypatch.setattr(plots, "sweep_curves", lambda learning_curves, *a, **k: full_disk(learning_curves))
    assert run_cli(sweep.main, *SWEEP, "--workdir", workdir) == 2
    line = last_error_line(capsys)
    assert "learning_curves.png" in line and "No space left" in line
    assert not (workdir / "results.json").exists()
    monkeypatch.undo()
    assert run_cli(sweep.main, *SWEEP, "--workdir", workdir) == 0
    out = capsys.readouterr().out
    assert "rewritten from its records" in out and f"results in {workdir}" in out
    assert len(json.loads((workdir / "results.json").read_text())["members"]) == 2
    assert records.is_whole_png(workdir / "learning_curves.png")


def test_a_sweep_says_where_its_results_are_and_names_its_folder_without_commas():
    values = cli.parse(sweep.parser(), ["--activations", "elu,relu", "--lrs", "0.0003,0.003,0.3", "--seeds", "2"])
    name = settings.workdir_name("sweep", values).name
    assert "," not in name and len(name) <= 64
    assert name == "sweep-lenet-activationselu_relu-seeds2-lrs0.0003_0.003_0.3"
    long = cli.parse(sweep.parser(), ["--lrs", ",".join(f"0.00{i}1" for i in range(1, 9)), "--epochs", "3"])
    assert len(settings.workdir_name("sweep", long).name) < 30  # a hash where the name would be long


def test_fresh_through_a_symlinked_checkpoints_folder_empties_it_and_keeps_the_link(tmp_path, capsys):
    workdir, elsewhere = tmp_path / "run", tmp_path / "bigger-disk" / "checkpoints"
    assert run_cli(train.main, *QUICK, "--workdir", workdir) == 0
    elsewhere.parent.mkdir()
    (workdir / "checkpoints").rename(elsewhere)
    (workdir / "checkpoints").symlink_to(elsewhere)
    capsys.readouterr()
    assert run_cli(train.main, *QUICK, "--workdir", workdir, "--fresh") == 0
    out = capsys.readouterr().out
    assert "emptied" in out and str(elsewhere) in out
    assert (workdir / "checkpoints").is_symlink() and sorted(p.name for p in elsewhere.iterdir()) == ["1"]
    assert (workdir / "summary.json").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only filesystem needs root")
def test_fresh_that_cannot_delete_everything_deletes_nothing(tmp_path, capsys):
    workdir, mount = tmp_path / "run", tmp_path / "ro"
    assert run_cli(train.main, *QUICK, "--workdir", workdir) == 0
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:  # the checkpoints moved to a filesystem that has since become read-only, a link in their place
        shutil.copytree(workdir / "checkpoints", mount / "checkpoints")
        shutil.rmtree(workdir / "checkpoints")
        (workdir / "checkpoints").symlink_to(mount / "checkpoints")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        before = sorted(p.name for p in workdir.iterdir())
        capsys.readouterr()
        assert run_cli(train.main, *QUICK, "--workdir", workdir, "--fresh") == 2
        one_line_error(capsys, "--fresh cannot delete", "nothing was deleted")
        assert sorted(p.name for p in workdir.iterdir()) == before
        assert run_cli(train.main, *QUICK, "--workdir", workdir) == 0  # not stuck: the same run still answers
    finally:
        subprocess.run(["umount", str(mount)])


def test_evaluate_of_a_workdir_without_checkpoints_creates_nothing_in_it(tmp_path, capsys):
    workdir, bare = tmp_path / "run", tmp_path / "bare"
    assert run_cli(train.main, *QUICK, "--workdir", workdir) == 0
    bare.mkdir()
    shutil.copy(workdir / "run.json", bare / "run.json")  # a run whose first epoch never finished
    capsys.readouterr()
    assert run_cli(evaluate.main, "--workdir", tmp_path / "bare") == 2
    one_line_error(capsys, "no checkpoint yet")
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["run.json"]


def test_an_out_of_memory_error_is_one_line_saying_how_much_and_what_to_lower(tmp_path, capsys, monkeypatch):
    def exhausted(self, state, order, length):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1200000000 "
                                         "bytes.")
    monkeypatch.setattr(trainers.Single, "piece", exhausted)
    assert run_cli(train.main, *QUICK, "--workdir", tmp_path / "run") == 2
    line = last_error_line(capsys)
    assert "out of memory (asked for 1.20 GB more)" in line and "--hidden" in line and "--batch-size" in line


def test_a_stuck_process_still_obeys_sigterm_within_seconds(tmp_path):
    """An MLP too large for a 6 GB address space: XLA either reports the allocation or waits for it forever; either
    way SIGTERM ends the process in one line within seconds."""
    log = tmp_path / "log"
    command = (f"ulimit -v {6 * 2 ** 20} && exec {sys.executable} -m mnist_jax.train --model mlp --hidden 300000 "
               f"--epochs 1 --train-limit 1024 --test-limit 256 --workdir {tmp_path / 'run'}")
    with open(log, "w") as out:
        process = subprocess.Popen(["bash", "-c", command], stdout=out, stderr=out,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while "compiled" not in log.read_text() and process.poll() is None:
        assert time.time() < deadline
        time.sleep(0.2)
    time.sleep(2)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    if code == 0:
        pytest.skip("the allocation succeeded on this machine: nothing was stuck")
    assert time.time() - sent < 30
    assert code in (2, 130) and ("interrupted" in text or "out of memory" in text), text[-2000:]


@pytest.mark.parametrize("variable, value, fragment", [
    ("JAX_PLATFORMS", "cuda", "JAX_PLATFORMS='cuda'"), ("JAX_PLATFORMS", "tpu", "JAX_PLATFORMS='tpu'"),
    ("XLA_FLAGS", "--xla_no_such_flag=1", "Unknown flag"),
    ("XLA_FLAGS", "--xla_force_host_platform_device_count=x", "Couldn't interpret"),
])
def test_an_environment_that_jax_cannot_start_with_is_one_line(variable, value, fragment, tmp_path):
    result = subprocess.run([sys.executable, "-m", "mnist_jax.train", *QUICK, "--workdir", str(tmp_path / "w")],
                            env={**os.environ, "PYTHONPATH": str(ROOT), variable: value}, capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr, result.stderr
    assert not (tmp_path / "w").exists()


def test_a_compilation_cache_that_cannot_be_written_is_one_warning_and_the_run_goes_on(tmp_path, capsys,
                                                                                       monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MNIST_JAX_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    assert run_cli(train.main, *QUICK, "--workdir", tmp_path / "run") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and "not writable" in warnings[0]


def test_the_write_error_hint_fits_the_error():
    assert records.fix_for(OSError(errno.ENOSPC, "No space left on device")) == "free space"
    assert records.fix_for(OSError(errno.ENOTDIR, "Not a directory")) == "move the file that is in the way"
    assert records.fix_for(OSError(errno.EACCES, "Permission denied")) == "make it writable"


def test_counts_read_as_words_say_them():
    from mnist_jax.metrics import plural
    assert (plural(1, "epoch"), plural(2, "epoch")) == ("1 epoch", "2 epochs")
    assert results.THRESHOLDS  # the convergence thresholds stay declared in one place


def test_a_ctrl_c_while_the_process_exits_ends_quietly(tmp_path):
    """An exit-time callback that is interrupted (here: one that sends itself SIGINT, as a second Ctrl-C would while
    JAX and Orbax shut down) prints no 'Exception ignored in atexit callback' traceback."""
    program = ("import atexit, os, signal, time\n"
               "from mnist_jax import cli\n"
               "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.5)))\n"
               "cli.run(lambda argv: 0)\n")
    result = subprocess.run([sys.executable, "-c", program], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, \
        result.stderr
