"""The PyTorch reference for the benchmark: the same LeNet-5 and MLP, Adam, batch 128, data in memory; and the
fastest published MNIST recipe, tuomaso/train_mnist_fast.

Run by `python -m mnist_jax.bench --torch-python PYTHON` in an interpreter that has torch (never a dependency of
mnist_jax). Prints one JSON object: seconds per training epoch for each model, after one warm-up epoch. With
`--time-to-99 SEEDS` it runs the tuomaso recipe instead, once per seed, and prints its test accuracy and seconds.
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


class FastNet(nn.Module):
    """tuomaso/train_mnist_fast's final network (8_Final_00s76.ipynb): conv 24 5x5, pool, ReLU, conv 32 3x3, pool,
    ReLU, dense 256, dense 10."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 24, 5, 1), nn.Conv2d(24, 32, 3, 1)
        self.fc1, self.fc2 = nn.Linear(800, 256), nn.Linear(256, 10)

    def forward(self, x):
        x = torch.relu(torch.max_pool2d(self.conv1(x), 2))
        x = torch.relu(torch.max_pool2d(self.conv2(x), 2))
        return torch.log_softmax(self.fc2(torch.relu(self.fc1(torch.flatten(x, 1)))), dim=1)


def fast_recipe(seed: int, images, labels, test_images, test_labels) -> dict:
    """One run of the published recipe as its notebook runs it: all 60,000 images in memory, in their stored order,
    one epoch of batches of 256 (the last one smaller), Adam lr 0.01 with betas (0.7, 0.9), OneCycleLR over the
    steps without momentum cycling; then the test set in batches of 2,000. Seconds of training, and of the whole run
    (model creation, training, testing)."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = FastNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.7, 0.9))
    batch = 256
    steps = (len(labels) - 1) // batch + 1
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=steps, cycle_momentum=False)
    model.train()
    train_started = time.perf_counter()
    for i in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.nll_loss(model(images[batch * i:batch * (i + 1)]), labels[batch * i:batch * (i + 1)])
        loss.backward()
        optimizer.step()
        scheduler.step()
    train_seconds = time.perf_counter() - train_started
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test_labels), 2000):
            correct += (model(test_images[i:i + 2000]).argmax(1) == test_labels[i:i + 2000]).sum().item()
    return {"seed": seed, "test_accuracy": correct / len(test_labels), "train_seconds": train_seconds,
            "run_seconds": time.perf_counter() - started}


def normalized(path: str) -> torch.Tensor:
    return torch.from_numpy((np.load(path).astype(np.float32) / 255.0 - 0.1307) / 0.3081).unsqueeze(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", required=True, help=".npy of uint8 (N, 28, 28) training images")
    parser.add_argument("--labels", required=True, help=".npy of int labels")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--time-to-99", type=int, default=None, metavar="SEEDS",
                        help="run the tuomaso recipe with SEEDS seeds from --first-seed (needs --test-images, "
                        "--test-labels)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--test-images", default=None)
    parser.add_argument("--test-labels", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = normalized(args.images)
    labels = torch.from_numpy(np.load(args.labels).astype(np.int64))
    if args.time_to_99:
        test_images = normalized(args.test_images)
        test_labels = torch.from_numpy(np.load(args.test_labels).astype(np.int64))
        fast_recipe(0, images[:2560], labels[:2560], test_images[:2000], test_labels[:2000])  # warms torch up
        runs = [fast_recipe(seed, images, labels, test_images, test_labels)
                for seed in range(args.first_seed, args.first_seed + args.time_to_99)]
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "runs": runs}))
        return
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "train_images": len(labels)}
    for name, make in (("lenet", lenet), ("mlp", mlp)):
        times = epoch_seconds(make(), images, labels, args.batch_size, args.epochs + 1)[1:]
        out[name] = {"epoch_seconds": min(times), "all_epoch_seconds": times}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
