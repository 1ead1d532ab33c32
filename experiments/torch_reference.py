"""The PyTorch reference for the benchmark: the same LeNet-5 and MLP, Adam, batch 128, data in memory.

Run by `python -m mnist_jax.bench --torch-python PYTHON` in an interpreter that has torch (never a dependency of
mnist_jax). Prints one JSON object: seconds per training epoch for each model, after one warm-up epoch.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn


def lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def epoch_seconds(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int, epochs: int) -> list:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        started = time.perf_counter()
        for i in range(0, len(labels) - batch + 1, batch):
            idx = order[i:i + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images[idx]), labels[idx])
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", required=True, help=".npy of uint8 (N, 28, 28) training images")
    parser.add_argument("--labels", required=True, help=".npy of int labels")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.from_numpy((np.load(args.images).astype(np.float32) / 255.0 - 0.1307) / 0.3081).unsqueeze(1)
    labels = torch.from_numpy(np.load(args.labels).astype(np.int64))
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "train_images": len(labels)}
    for name, make in (("lenet", lenet), ("mlp", mlp)):
        times = epoch_seconds(make(), images, labels, args.batch_size, args.epochs + 1)[1:]
        out[name] = {"epoch_seconds": min(times), "all_epoch_seconds": times}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
