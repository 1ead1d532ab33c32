#!/usr/bin/env bash
# The activation study: ELU vs ReLU vs LeakyReLU under two recipes, both models, 5 seeds, a grid of learning rates.
# Each (model, recipe) is one vmapped sweep. The learning rate of each activation is selected on the validation
# split (5,000 training images held out); the test set only reports. Results land in
# experiments/activation_study/<model>/<recipe>/.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A RECIPE=([adamw]="--optimizer adamw --schedule warmup-cosine" [sgd]="--optimizer sgd --schedule constant")
declare -A LRS=([mlp-adamw]=0.0001,0.0003,0.001,0.003,0.01 [mlp-sgd]=0.003,0.01,0.03,0.1,0.3
                [lenet-adamw]=0.001,0.003,0.01,0.03,0.1 [lenet-sgd]=0.003,0.01,0.03,0.1)
for model in ${MODELS:-mlp lenet}; do
  for recipe in ${RECIPES:-adamw sgd}; do
    workdir="checkpoints/study-$model-$recipe"
    # shellcheck disable=SC2086  # the recipe is several flags
    python -m mnist_jax.sweep --model "$model" ${RECIPE[$recipe]} --activations elu,relu,leaky_relu --seeds 5 \
      --lrs "${LRS[$model-$recipe]}" --epochs 12 --validation-size 5000 --workdir "$workdir"
    out="experiments/activation_study/$model/$recipe"
    mkdir -p "$out"
    cp "$workdir"/{results.json,results.md,metrics.jsonl,learning_curves.png,validation_vs_lr.png} "$out/"
  done
done
