#!/usr/bin/env bash
# The tuning study: the activation question re-asked with tuning inside the sweep. Every choice is made on the
# validation split (5,000 training images held out); the test set only reports. Each sweep is one program; results
# land in experiments/tuning/<name>/ (results.md, results.json, metrics.jsonl, plots). STUDIES picks some of them.
#   tuned-<model>     each activation tuned over learning rate x weight decay: 9 quasi-random cells x 5 seeds,
#                     successive halving (eta 3, rungs after epochs 1, 3, 9), AdamW, 12 epochs
#   halving-lenet     the committed LeNet AdamW grid (activation_study/lenet/adamw) again, under successive halving
#   random-mlp, pbt-mlp   8 quasi-random (lr, weight decay) cells x 3 seeds, 8 epochs: trained to the end, and
#                     the same members under population-based training (equal member-epochs)
#   depth-sgd, depth-adamw   the ELU paper's MNIST network: 8 hidden layers of 128 units; plain SGD (b1 0), constant
#                     lr 0.01, batch 64, 20 epochs; then the project's AdamW recipe
set -euo pipefail
cd "$(dirname "$0")/.."
common="--activations elu,relu,leaky_relu --validation-size 5000"
declare -A ARGS=(
  [tuned-mlp]="--model mlp --lrs 0.0003..0.03 --weight-decays 0.001..1 --samples 9 --seeds 5 --scheduler halving --epochs 12"
  [tuned-lenet]="--model lenet --lrs 0.001..0.1 --weight-decays 0.001..1 --samples 9 --seeds 5 --scheduler halving --epochs 12"
  [halving-lenet]="--model lenet --lrs 0.001,0.003,0.01,0.03,0.1 --seeds 5 --scheduler halving --epochs 12"
  [random-mlp]="--model mlp --lrs 0.0003..0.03 --weight-decays 0.001..1 --samples 8 --seeds 3 --epochs 8"
  [pbt-mlp]="--model mlp --lrs 0.0003..0.03 --weight-decays 0.001..1 --samples 8 --seeds 3 --epochs 8 --scheduler pbt"
  [depth-sgd]="--model mlp --hidden 128,128,128,128,128,128,128,128 --optimizer sgd --schedule constant --lrs 0.01 --b1s 0 --batch-size 64 --seeds 5 --epochs 20"
  [depth-adamw]="--model mlp --hidden 128,128,128,128,128,128,128,128 --seeds 5"
)
for name in ${STUDIES:-halving-lenet tuned-mlp tuned-lenet random-mlp pbt-mlp depth-sgd depth-adamw}; do
  workdir="checkpoints/tuning-$name"
  # shellcheck disable=SC2086  # the settings are several flags
  python -m mnist_jax.sweep ${ARGS[$name]} $common --workdir "$workdir"
  out="experiments/tuning/$name"
  mkdir -p "$out"
  cp "$workdir"/{results.json,results.md,metrics.jsonl,learning_curves.png,validation_vs_lr.png} "$out/"
  if [ -f "$workdir/lineages.png" ]; then cp "$workdir/lineages.png" "$out/"; fi
done
