#!/usr/bin/env bash
# The activation study: ELU vs ReLU vs LeakyReLU, 5 seeds each, the default recipe, both models.
# Each sweep is one vmapped program; results land in experiments/activation_study/<model>/.
set -euo pipefail
cd "$(dirname "$0")/.."
for model in mlp lenet; do
  python -m mnist_jax.sweep --model "$model" --activations elu,relu,leaky_relu --seeds 5 --lrs 0.002 \
    --epochs 12 --workdir "checkpoints/study-$model"
  mkdir -p "experiments/activation_study/$model"
  cp "checkpoints/study-$model"/{results.json,results.md,test_accuracy.png,train_loss.png,metrics.jsonl} \
    "experiments/activation_study/$model/"
done
