"""`python -m mnist_jax.predict`: which digit is in each image file, prepared the way MNIST itself was.

Any PNG or JPEG, any size or mode: turned upright by its EXIF orientation, grayscale, inverted when the digit is dark
on a light background, cropped to the digit, scaled to fit a 20x20 box and placed on a 28x28 canvas with its centre
of mass at the centre. One bad file never stops the others: it gets its own error line on stderr, every other image
is predicted, and the exit status is 1 when any failed.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path
from typing import Sequence, TextIO

import jax
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_jax import cli, settings
from mnist_jax.errors import UserError, first_line
from mnist_jax.export import ExportedModel
from mnist_jax.workdir import checkpoint_used, load_model

MAX_PIXELS = 40_000_000
# PIL warns above its limit and refuses twice it; mnist_like refuses both, so the limit is exactly MAX_PIXELS.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# A digit's marks must amount to at least this many fully inked pixels once scaled into MNIST's 20x20 box; below
# it they vanish in the scaling (two specks in the corners of a large black image), and the image counts as blank.
MIN_INK_PIXELS = 0.25


def parse_args(argv):
    parser = cli.Parser(prog="python -m mnist_jax.predict", description=__doc__.split(":", 1)[1].strip())
    cli.add_model_settings(parser, workdir_required=False)
    parser.add_argument("--model-file", type=Path, default=None,
                        help="a file written by python -m mnist_jax.export, instead of --workdir")
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image, with all probabilities")
    cli.add_cache_setting(parser)
    return parser.parse_args(argv)


_ESCAPES = {"\\": "\\\\", "'": "\\'", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def shown(name: str | Path, stream: TextIO | None = None) -> str:
    """A file name as one printable field of `stream` (default stdout), whatever its locale: unchanged where every
    character prints there, else quoted and backslash-escaped as Python's ascii() does (\\t, \\n, \\xNN for a byte
    that is not valid in the file-system encoding, \\uNNNN for a character the stream cannot encode)."""
    text = str(name)
    encoding = getattr(stream or sys.stdout, "encoding", None) or "utf-8"

    def prints(c: str) -> bool:
        if not c.isprintable():  # control characters, and the surrogates that stand for undecodable bytes
            return False
        try:
            c.encode(encoding)
        except (UnicodeEncodeError, LookupError):
            return False
        return True

    if text and not text.startswith("'") and all(map(prints, text)):
        return text

    def escape(c: str) -> str:
        if c in _ESCAPES:
            return _ESCAPES[c]
        if prints(c):
            return c
        code = ord(c)
        if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape: the byte it could not decode
            return f"\\x{code - 0xDC00:02x}"
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
    return "'" + "".join(map(escape, text)) + "'"


def json_name(name: str | Path) -> str:
    """The name for a JSON string: itself (json escapes control and non-ASCII characters), or where it holds bytes
    that are not text in the file-system encoding, which no JSON string can carry, its escaped form (shown)."""
    text = str(name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return shown(text)
    return text


def _first_line(error: BaseException) -> str:
    text = first_line(error, 120)
    return text if text == type(error).__name__ else f"{type(error).__name__}: {text}"


def _grayscale(path: Path, name: str) -> np.ndarray:
    """The file's pixels as float32 gray levels 0..255, upright, transparency composited onto white."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened)  # a phone photo's "rotate 90": its pixels lie sideways
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image.convert("RGBA"))
            if image.mode.startswith("I;16"):  # 16-bit grayscale: PIL's conversion to L would clip it to 0 or 255
                return np.asarray(image, np.float32) / 257.0
            return np.asarray(image.convert("L"), np.float32)
    except FileNotFoundError:
        raise UserError(f"{name}: no such file: check the path") from None
    except IsADirectoryError:
        raise UserError(f"{name}: is a folder, not an image file: pass the image files inside it") from None
    except PermissionError:
        raise UserError(f"{name}: permission denied: make the file readable") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f" ({int(found.group(1)) / 1e6:.1f} megapixels)" if found else ""
        raise UserError(f"{name}: too large{size}, over the limit of {MAX_PIXELS // 10**6} megapixels: scale it "
                        "down or crop it to the digit") from None
    except UnidentifiedImageError:
        raise UserError(f"{name}: not an image format PIL can read: pass a PNG or JPEG file") from None
    except MemoryError:
        raise UserError(f"{name}: too large to decode in the memory left: scale it down or crop it to the digit") \
            from None
    except Exception as e:  # anything a decoder raises on a damaged file (OSError, ValueError, SyntaxError, ...)
        raise UserError(f"{name}: cannot be decoded as an image ({_first_line(e)}): the file may be damaged or "
                        "truncated; save it again as PNG or JPEG") from None


def mnist_like(path: Path) -> np.ndarray:
    """An image file -> uint8 (28, 28), white digit on black, size-normalised and centred as in MNIST.

    Raises UserError (one line naming the file) for a file that is missing, unreadable, undecodable, over
    MAX_PIXELS pixels, or holds no digit."""
    name = shown(path, sys.stderr)
    gray = _grayscale(path, name)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:  # dark digit on a light background: MNIST is the other way round
        gray, border = 255.0 - gray, 255.0 - border
    gray = np.clip(gray - np.median(border), 0, None)
    if gray.max() <= 0:
        raise UserError(f"{name}: blank image, no digit found: pass an image of one digit on a plain background")
    gray = gray * (255.0 / gray.max())
    rows, cols = np.nonzero(gray > 0.2 * 255)
    digit = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    height, width = digit.shape
    scale = 20.0 / max(height, width)
    if digit.sum() / 255.0 * scale * scale < MIN_INK_PIXELS:
        raise UserError(f"{name}: no digit found: its marks ({rows.size} pixels spread over {width}x{height}) vanish "
                        "when scaled to MNIST's 20x20 box: crop the image to the digit")
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = np.clip(np.asarray(Image.fromarray(digit.astype(np.float32)).resize(size, Image.LANCZOS)), 0, None)
    if digit.max() <= 0:
        raise UserError(f"{name}: no digit found: its marks vanish when scaled to MNIST's 20x20 box: crop the "
                        "image to the digit")
    digit = np.minimum(digit * (255.0 / digit.max()), 255.0)  # thin strokes of a large image stay fully visible
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
    if (args.workdir is None) == (args.model_file is None):
        raise UserError("give the model as --workdir DIR (a trained workdir) or --model-file FILE (an exported "
                        "model), one of the two")
    if args.model_file is not None:
        model = ExportedModel(args.model_file)
        print(f"using the exported model {args.model_file}", file=sys.stderr)
    else:
        model = load_model(args.workdir, args.checkpoint, args.member, args.conv)
        _, words = checkpoint_used(args.workdir, args.checkpoint, model, args.member)
        member = f"member {settings.member_label(model.member)}, " if args.member else ""
        print(f"using {member}{words}", file=sys.stderr)  # stdout stays the data
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
                print(json.dumps({"path": json_name(path), "digit": digit, "probability": float(p[digit]),
                                  "probabilities": [round(float(v), 6) for v in p]}))
            else:
                print(f"{shown(path)}\t{digit}\t{p[digit]:.4f}")
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main)
