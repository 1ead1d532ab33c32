"""mnist_jax: a functional JAX/Flax training pipeline for MNIST (MLP and LeNet-5)."""

__version__ = "0.1.0"
