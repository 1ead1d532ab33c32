"""`python -m mnist_jax.export`: a trained model as one file that JAX alone loads and runs.

The file is the model's predict function with its parameters, serialized by `jax.export` (StableHLO), for any number
of images, for CPU, CUDA and TPU: `jax.export.deserialize(open("model.jax", "rb").read()).call(images)` gives the
logits (N, 10) of uint8 images (N, 28, 28), no mnist_jax needed. `predict --model-file model.jax` uses it. JAX
promises that such a file runs on a JAX up to 6 months newer than the one that wrote it, and up to 3 weeks older.

Also here: taking one member out of a sweep workdir as an ordinary single-model workdir (`sweep --export-member`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import checkpoint, cli, engine, metrics, records, report, settings
from mnist_jax.errors import UserError, first_line
from mnist_jax.workdir import (Layout, TrainedModel, checkpoint_used, load_member, load_model, model_input,
                               prepare_workdir, read_metrics, read_sweep, run_record)

PLATFORMS = ("cpu", "cuda", "tpu")


def exported(model: TrainedModel) -> jax.export.Exported:
    """The model's logits of a batch of uint8 images of any size, its parameters inside, for every platform."""
    predict = jax.jit(lambda images: engine.apply(model.config, model.state.params, model.hyper, images))
    batch, = jax.export.symbolic_shape("batch")
    return jax.export.export(predict, platforms=PLATFORMS)(jax.ShapeDtypeStruct((batch, 28, 28), jnp.uint8))


class ExportedModel:
    """A file written by `export`: `predict(images)` as TrainedModel's (logits of uint8 images (N, 28, 28))."""

    def __init__(self, path: Path):
        try:
            self._exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
        except OSError as e:
            raise UserError(f"cannot read the model file {path} ({records.os_reason(e)})") from None
        except Exception as e:  # flatbuffers and JAX raise many types for a file that is not an export
            raise UserError(f"{path} is not a model file written by python -m mnist_jax.export "
                            f"({first_line(e, 120)}): export the workdir again") from None
        self.path = path

    def predict(self, images) -> np.ndarray:
        return np.asarray(self._exported.call(model_input(images)))


def parse_args(argv):
    parser = cli.Parser(prog="python -m mnist_jax.export", description=__doc__.split(":", 1)[1].split("\n")[0].strip())
    cli.add_model_settings(parser)
    parser.add_argument("--to", type=Path, required=True, help="the file to write, e.g. model.jax")
    cli.add_cache_setting(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.enable_compile_cache(not args.no_compile_cache)
    model = load_model(args.workdir, args.checkpoint, args.member, args.conv)
    _, words = checkpoint_used(args.workdir, args.checkpoint, model, args.member)
    records.write_bytes(args.to, exported(model).serialize())
    member = f"member {settings.member_label(model.member)}, " if args.member else ""
    print(f"wrote {args.to}: {member}{words} of {args.workdir}, for {', '.join(PLATFORMS)}; load it with "
          "jax.export.deserialize, or run python -m mnist_jax.predict --model-file", file=sys.stderr)
    return 0

# The parts of a sweep's run record that a member shares (content: where the sweep's record has it).
DATA_RECORD = ("dataset", "content", "test_limit", "validation", "data_location")


def export_member(sweep_dir: Path, spec: str, to: Path) -> None:
    """Writes member `spec` of the sweep at its latest epoch as a workdir that train, evaluate and predict accept."""
    run = read_sweep(sweep_dir)
    model, index = load_member(sweep_dir, spec)
    record = run_record(model.config, model.member, {key: run[key] for key in DATA_RECORD if key in run})
    target = Layout(to)
    prepare_workdir(target.root, record, fresh=False)
    rows = [metrics.member_row(row, index) for row in read_metrics(Layout(sweep_dir).metrics, model.step)]
    records.write_rows(target.metrics, rows)
    metric, score = metrics.selection_score(rows[-1]) if rows else ("epoch", float(model.step))
    manager = checkpoint.open_manager(target.checkpoints)
    try:
        checkpoint.save(manager, model.step, model.state, {"run": record, "epoch": model.step,
                                                           "exported_from": str(sweep_dir),
                                                           "selected_by": {metric: score}},
                        {checkpoint.BEST_METRIC: score})
        manager.wait_until_finished()
    finally:
        manager.close()
    if rows:
        records.write_json(target.summary, report.summary(model.config, model.member, rows,
                                                          exported_from=str(sweep_dir)))
    print(f"exported member {settings.member_label(model.member)} of {sweep_dir} at epoch {model.step} to {to}")


if __name__ == "__main__":
    cli.run(main)
