"""`python -m mnist_jax.evaluate`: a trained model's test accuracy, per-class accuracy, confusion matrix, worst errors."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from mnist_jax import cli, records
from mnist_jax.errors import UserError


def checkpoint_choice(text: str) -> str | int:
    if text in ("latest", "best"):
        return text
    try:
        return cli.positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not latest, best or an epoch number") from None


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--workdir, --checkpoint and --member: which trained model to load (shared with predict)."""
    parser.add_argument("--workdir", type=Path, required=True, help="a workdir written by train or sweep")
    parser.add_argument("--checkpoint", type=checkpoint_choice, default="latest",
                        help="latest, best (by validation accuracy; the latest where the run had no validation split) "
                             "or an epoch number (default: %(default)s)")
    parser.add_argument("--member", default=None, metavar="ACTIVATION,SEED[,LR]",
                        help="for a sweep workdir: which member")
    cli.add_conv_arg(parser)


def parse_args(argv):
    parser = cli.Parser(prog="python -m mnist_jax.evaluate", description=__doc__.split(":", 1)[1].strip())
    add_model_args(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="where the PNGs and evaluation.json go (default: <workdir>/evaluation, and "
                             "<workdir>/evaluation/<activation>-seed<seed>-lr<lr> for a sweep's member)")
    parser.add_argument("--errors", type=cli.positive_int, default=25,
                        help="how many confidently wrong images to show (default: %(default)s)")
    cli.add_data_args(parser, from_run=True)
    cli.add_cache_arg(parser)
    return parser.parse_args(argv)


def recorded_accuracy(workdir: Path, step: int, member: str | None) -> float | None:
    """The test accuracy the training run wrote for that epoch, to check evaluation against."""
    from mnist_jax.workdir import find_member, read_metrics, read_sweep

    rows = [r for r in read_metrics(workdir / "metrics.jsonl", step) if r["epoch"] == step]
    if not rows:
        return None
    if member is None:
        return rows[0]["test_accuracy"]
    return rows[0]["members"][find_member(read_sweep(workdir), member)]["test_accuracy"]


def confusion_png(matrix, path: Path, title: str) -> None:
    import numpy as np

    from mnist_jax.results import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    shown = np.log1p(matrix)
    ax.imshow(shown, cmap="Blues")
    for t in range(10):
        for p in range(10):
            if matrix[t, p]:
                ax.text(p, t, str(matrix[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if shown[t, p] > shown.max() / 2 else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def errors_png(images, labels, predicted, confidence, path: Path, count: int) -> int:
    """A grid of the most confidently wrong images, titled true -> predicted (probability)."""
    import numpy as np

    from mnist_jax.results import pyplot

    plt = pyplot()

    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-confidence[wrong])][:count]
    columns = 5
    rows = max(1, -(-len(worst) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, worst):
        ax.imshow(images[i], cmap="gray")
        ax.set_title(f"{labels[i]} -> {predicted[i]} ({confidence[i]:.0%})", fontsize=8)
    fig.suptitle("most confidently wrong: true -> predicted (probability)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(worst)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.enable_compile_cache(not args.no_compile_cache)

    import jax
    import numpy as np

    from mnist_jax import engine
    from mnist_jax.data import load_dataset
    from mnist_jax.workdir import find_member, load_model, member_name, read_run, selection_of

    workdir = args.workdir
    run = read_run(workdir)
    config, hyper, state, step = load_model(workdir, args.checkpoint, args.member, args.conv)
    member_folder = ""  # a sweep's members each get a folder of their own
    if args.member:
        member = run["members"][find_member(run, args.member)]
        member_folder = member_name(member)
    selected_by = {"checkpoint": args.checkpoint, **selection_of(workdir, step)}
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

    logits = jax.jit(engine.predict_logits, static_argnums=0)(config, state.params, hyper, images)
    result = jax.jit(engine.metrics_of_logits)(logits, labels)
    probabilities = np.asarray(jax.nn.softmax(logits))
    predicted = probabilities.argmax(-1)
    confidence = probabilities.max(-1)
    matrix = np.zeros((10, 10), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    per_class = (np.diag(matrix) / np.maximum(matrix.sum(1), 1)).tolist()
    accuracy, loss = float(result["accuracy"]), float(result["loss"])

    name = f"{workdir}" + (f" member {args.member}" if args.member else "")
    recorded = recorded_accuracy(workdir, step, args.member)
    chosen = "" if args.checkpoint != "best" else \
        f" (best by {selected_by['metric']} {selected_by['value']:.4g}" + (" of all members)" if args.member else ")")
    print(f"{name}, checkpoint of epoch {step}{chosen}: test accuracy {accuracy:.2%}, test loss {loss:.4f}"
          + (f" (training recorded {recorded:.2%})" if recorded is not None else ""))
    print("per-class accuracy: " + "  ".join(f"{d}: {a:.2%}" for d, a in enumerate(per_class)))
    print("confusion matrix (rows: true digit, columns: predicted):")
    print("      " + "".join(f"{p:>6d}" for p in range(10)))
    for t in range(10):
        print(f"{t:>6d}" + "".join(f"{matrix[t, p]:>6d}" for p in range(10)))

    out = args.out or workdir / "evaluation" / member_folder
    try:
        out.mkdir(parents=True, exist_ok=True)
        confusion_png(matrix, out / "confusion_matrix.png", f"{name}, epoch {step}: {accuracy:.2%}")
        shown = errors_png(images, labels, predicted, confidence, out / "most_confident_errors.png", args.errors)
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
