"""Regenerate the catalogue's binary data files (IDX, npz, PNG): `python tests/catalogue/make_files.py`.

The files are committed; this script documents how each broken file was made, and remakes them byte for
byte (fixed seeds). Only numpy and Pillow.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CASES = Path(__file__).parent / "cases"
rng = np.random.default_rng(0)


def images(n: int, h: int = 8, w: int = 8, c: int | None = None) -> np.ndarray:
    shape = (n, h, w) if c is None else (n, h, w, c)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def labels(n: int, k: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % k


def idx_bytes(a: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def npz(case: str, name: str = "data.npz", **arrays: np.ndarray) -> None:
    path = CASES / case / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(f, **arrays)


def png(path: Path, size: tuple[int, int] = (8, 8), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], len(mode))
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(path)


def write(case: str, name: str, data: bytes) -> None:
    path = CASES / case / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main() -> None:
    x, y = images(60), labels(60, 3)
    # IDX: a wrong magic number; a truncated image file (header promises 60 images, holds 10)
    write("data-idx-corrupt", "mnist/train-images-idx3-ubyte", b"PK\x03\x04" + idx_bytes(x)[4:])
    write("data-idx-corrupt", "mnist/train-labels-idx1-ubyte", idx_bytes(y))
    write("data-idx-truncated", "mnist/train-images-idx3-ubyte.gz", gzip.compress(idx_bytes(x)[: 16 + 64 * 10], mtime=0))
    write("data-idx-truncated", "mnist/train-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(y), mtime=0))
    # npz: not a zip; a truncated zip; arrays under other names; object arrays (need pickle)
    write("data-npz-corrupt", "data.npz", b"x_train,y_train\n0,1\n")
    buf = CASES / "data-npz-truncated" / "data.npz"
    npz("data-npz-truncated", x_train=x, y_train=y)
    buf.write_bytes(buf.read_bytes()[:700])
    npz("data-npz-wrong-arrays", images=x, labels=y)
    npz("data-npz-pickle", x_train=np.array([x[i] for i in range(60)] + [None], dtype=object)[:60], y_train=y)
    # labels: out of range of the class names; fractional; images with 2 channels; train/test channels differ
    npz("data-labels-out-of-range", x_train=x, y_train=labels(60, 5), class_names=np.array(["a", "b", "c"]))
    npz("data-labels-float", x_train=x, y_train=(y + 0.5).astype(np.float32))
    npz("data-images-two-channels", x_train=images(60, c=2), y_train=y)
    npz("data-images-mixed-channels", x_train=images(60, c=3), y_train=y, x_test=images(20, c=1), y_test=labels(20, 3))
    npz("data-images-mixed-sizes", x_train=x, y_train=y, x_test=images(20, 10, 10), y_test=labels(20, 3))
    npz("data-fewer-than-a-batch", x_train=images(40), y_train=labels(40, 2))
    npz("data-labels-negative", x_train=x, y_train=y - 1)
    # image folders: one class only; images of two sizes; an unreadable image
    for i in range(4):
        png(CASES / "data-folder-one-class" / "images" / "cat" / f"{i}.png")
        png(CASES / "data-folder-mixed-sizes" / "images" / "cat" / f"{i}.png")
        png(CASES / "data-folder-mixed-sizes" / "images" / "dog" / f"{i}.png", size=(8, 8) if i else (12, 9))
        png(CASES / "data-folder-corrupt-image" / "images" / "cat" / f"{i}.png")
        png(CASES / "data-folder-corrupt-image" / "images" / "dog" / f"{i}.png")
    write("data-folder-corrupt-image", "images/dog/4.png", b"\x89PNG\r\n\x1a\n not really")
    write("data-folder-empty", "images/.gitkeep", b"")
    png(CASES / "data-folder-empty-class" / "images" / "cat" / "0.png")
    write("data-folder-empty-class", "images/dog/notes.txt", b"no images here\n")


if __name__ == "__main__":
    main()
