"""`python -m mnist_jax.evaluate`: a trained model's test accuracy, per-class accuracy, confusion matrix, worst errors."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from mnist_jax import cli, engine, plots, records, settings
from mnist_jax.data import load_dataset
from mnist_jax.errors import UserError
from mnist_jax.workdir import (Layout, checkpoint_used, find_member, load_model, read_metrics, read_run,
                               read_sweep)


def parse_args(argv):
    parser = cli.Parser(prog="python -m mnist_jax.evaluate", description=__doc__.split(":", 1)[1].strip())
    cli.add_model_settings(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="where the PNGs and evaluation.json go (default: <workdir>/evaluation, and "
                             "<workdir>/evaluation/<activation>-seed<seed>-lr<lr> for a sweep's member)")
    parser.add_argument("--errors", type=cli.argument_type(settings.positive_int), default=25,
                        help="how many confidently wrong images to show (default: %(default)s)")
    cli.add_data_settings(parser)
    cli.add_cache_setting(parser)
    return parser.parse_args(argv)


def recorded_accuracy(workdir: Path, step: int, member: str | None) -> float | None:
    """The test accuracy the training run wrote for that epoch, to check evaluation against."""
    rows = [r for r in read_metrics(Layout(workdir).metrics, step) if r["epoch"] == step]
    if not rows:
        return None
    if member is None:
        return rows[0]["test_accuracy"]
    return rows[0]["members"][find_member(read_sweep(workdir), member)]["test_accuracy"]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.enable_compile_cache(not args.no_compile_cache)
    workdir = args.workdir
    run = read_run(workdir)
    model = load_model(workdir, args.checkpoint, args.member, args.conv)
    step = model.step
    # a sweep member's own folder
    member_folder = settings.member_folders(run["members"])[find_member(run, args.member)] if args.member else ""
    selected_by, used = checkpoint_used(workdir, args.checkpoint, model, args.member)
    if args.dataset not in (None, run["dataset"]):
        raise UserError(f"{workdir} was trained on {run['dataset']}, not {args.dataset}: evaluate it on "
                        f"{run['dataset']} (leave out --dataset)")
    location = run["data_location"]
    ds = load_dataset(args.data_source or location["source"], run["dataset"], args.data_dir or location["dir"])
    print(f"data: {ds.describe()}")
    if "content" in run and ds.content()["test"] != run["content"]["test"]:
        raise UserError(f"the test images of {ds.source} ({ds.location}) are not those {workdir} was tested on: "
                        f"evaluate on the same {run['dataset']} test set (leave out --data-source and --data-dir to "
                        "read it where training did)")
    images, labels = ds.x_test[:run["test_limit"]], ds.y_test[:run["test_limit"]]

    logits = model.predict(images)
    result = engine.metrics_of_logits(logits, labels)
    probabilities = np.asarray(jax.nn.softmax(logits))
    predicted = probabilities.argmax(-1)
    confidence = probabilities.max(-1)
    matrix = np.zeros((10, 10), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    per_class = (np.diag(matrix) / np.maximum(matrix.sum(1), 1)).tolist()
    accuracy, loss = float(result["accuracy"]), float(result["loss"])

    name = f"{workdir}" + (f" member {args.member}" if args.member else "")
    recorded = recorded_accuracy(workdir, step, args.member)
    print(f"{name}, {used}: test accuracy {accuracy:.2%}, test loss {loss:.4f}"
          + (f" (training recorded {recorded:.2%})" if recorded is not None else ""))
    print("per-class accuracy: " + "  ".join(f"{d}: {a:.2%}" for d, a in enumerate(per_class)))
    print("confusion matrix (rows: true digit, columns: predicted):")
    print("      " + "".join(f"{p:>6d}" for p in range(10)))
    for t in range(10):
        print(f"{t:>6d}" + "".join(f"{matrix[t, p]:>6d}" for p in range(10)))

    out = args.out or Layout(workdir).evaluation / member_folder
    try:
        out.mkdir(parents=True, exist_ok=True)
        plots.confusion_matrix(matrix, out / "confusion_matrix.png", f"{name}, epoch {step}: {accuracy:.2%}")
        shown = plots.confident_errors(images, labels, predicted, confidence, out / "most_confident_errors.png", args.errors)
        records.write_json(out / "evaluation.json", {
            "workdir": str(workdir), "member": args.member, "epoch": step, "selected_by": selected_by,
            "test_accuracy": accuracy, "test_loss": loss, "recorded_test_accuracy": recorded,
            "per_class_accuracy": per_class, "confusion_matrix": matrix.tolist()})
    except OSError as e:
        raise UserError(f"could not write the evaluation to {out} ({e.strerror}): the numbers above stand; pass "
                        "--out DIR to write it elsewhere") from None
    print(f"wrote {out / 'confusion_matrix.png'}, {out / 'most_confident_errors.png'} ({shown} images) and "
          f"{out / 'evaluation.json'}")
    return 0


if __name__ == "__main__":
    cli.run(main)
