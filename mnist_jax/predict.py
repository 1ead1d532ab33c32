"""`python -m mnist_jax.predict`: which digit is in each image file, prepared the way MNIST itself was.

Any PNG or JPEG, any size or mode: grayscale, inverted when the digit is dark on a light background, cropped to
the digit, scaled to fit a 20x20 box and placed on a 28x28 canvas with its centre of mass at the centre.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from PIL import Image, UnidentifiedImageError

from mnist_jax import cli
from mnist_jax.errors import UserError
from mnist_jax.workdir import load_model


def parse_args(argv):
    parser = cli.Parser(prog="python -m mnist_jax.predict", description=__doc__.split(":", 1)[1].strip())
    cli.add_model_settings(parser)
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image, with all probabilities")
    cli.add_cache_setting(parser)
    return parser.parse_args(argv)


def mnist_like(path: Path) -> np.ndarray:
    """An image file -> uint8 (28, 28), white digit on black, size-normalised and centred as in MNIST."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image.convert("RGBA"))
            gray = np.asarray(image.convert("L"), np.float32)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__})") from None
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:  # dark digit on a light background: MNIST is the other way round
        gray, border = 255.0 - gray, 255.0 - border
    gray = np.clip(gray - np.median(border), 0, None)
    if gray.max() <= 0:
        raise UserError(f"{path}: blank image, no digit found")
    gray = gray * (255.0 / gray.max())
    rows, cols = np.nonzero(gray > 0.2 * 255)
    digit = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    height, width = digit.shape
    scale = 20.0 / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = np.asarray(Image.fromarray(digit.astype(np.uint8)).resize(size, Image.LANCZOS), np.float32)
    canvas = np.zeros((28, 28), np.float32)
    top, left = (28 - digit.shape[0]) // 2, (28 - digit.shape[1]) // 2
    canvas[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    total = canvas.sum()
    ys, xs = np.indices(canvas.shape)
    shift_y = int(round(13.5 - (ys * canvas).sum() / total))
    shift_x = int(round(13.5 - (xs * canvas).sum() / total))
    shifted = np.zeros_like(canvas)
    src_y, dst_y = slice(max(0, -shift_y), min(28, 28 - shift_y)), slice(max(0, shift_y), min(28, 28 + shift_y))
    src_x, dst_x = slice(max(0, -shift_x), min(28, 28 - shift_x)), slice(max(0, shift_x), min(28, 28 + shift_x))
    shifted[dst_y, dst_x] = canvas[src_y, src_x]
    return np.clip(shifted, 0, 255).round().astype(np.uint8)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.enable_compile_cache(not args.no_compile_cache)
    model = load_model(args.workdir, args.checkpoint, args.member, args.conv)
    prepared, failed = [], 0
    for path in args.images:
        try:
            prepared.append((path, mnist_like(path)))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    if prepared:
        batch = np.stack([image for _, image in prepared])
        logits = model.predict(batch)
        probabilities = np.asarray(jax.nn.softmax(logits))
        for (path, _), p in zip(prepared, probabilities):
            digit = int(p.argmax())
            if args.json:
                print(json.dumps({"path": str(path), "digit": digit, "probability": float(p[digit]),
                                  "probabilities": [round(float(v), 6) for v in p]}))
            else:
                print(f"{path}\t{digit}\t{p[digit]:.4f}")
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main)
