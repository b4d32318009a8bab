"""Image data that exists on this machine (nothing is downloaded): scikit-learn's bundled 8x8
handwritten digits, and procedurally drawn coloured shapes with known attributes (GenEval-like).

Images are float32 [n, C, H, W] scaled to [-1, 1] (-1 black); `ImageDataset.flat()` gives the
[n, C*H*W] rows that models and pretraining take. Labels are class ids (ints).

Shapes: a `size` x `size` RGB image (size a multiple of 8) is a grid of 8x8 cells. A "prompt" is
(shape, colour, count, position): `count` shapes of one kind and one colour, each in its own cell,
all in the left or the right half. Prompts are encoded both as a class id (for class-conditional
models and CFG) and as a condition vector (one-hot shape, one-hot colour, count / max_count,
position +-1) for condition-vector models. rsm.image_rewards.ShapeChecker recovers the attributes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ImageDataset", "digits", "shapes", "SHAPES", "COLOURS", "POSITIONS", "ShapePrompt",
           "shape_prompts", "draw_shapes"]

SHAPES = ("square", "circle", "triangle")
COLOURS = ("red", "green", "blue")
POSITIONS = ("left", "right")
CELL = 8  # pixels per grid cell of the procedural images


@dataclass
class ImageDataset:
    """images float32 [n, C, H, W] in [-1, 1]; labels int64 [n] (class ids 0..num_classes-1);
    cond float32 [n, cond_dim] condition vectors (None when the class id is the condition);
    attributes: per-image dicts (procedural images)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    cond: np.ndarray | None = None
    attributes: list = field(default_factory=list)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def dim(self) -> int:
        return int(np.prod(self.images.shape[1:]))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def flat(self) -> np.ndarray:
        """[n, C*H*W] float32 rows (C-contiguous), the layout models take."""
        return np.ascontiguousarray(self.images.reshape(len(self), -1))

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
                f"num_classes={self.num_classes})")


def _check_seed(seed: Any, func: str) -> int:
    from ._args import seed_int

    return seed_int(seed, func)


def digits(split: str = "train", *, test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's 1797 8x8 digits (UCI; pixel values 0..16) scaled to [-1, 1] as
    x / 8 - 1, images [n, 1, 8, 8], labels 0..9. split: "train", "test" or "all"; the split is a
    seeded permutation, stratified per class (so both sides hold every digit in proportion)."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"digits(): split must be 'train', 'test' or 'all', got {split!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"digits(): test_fraction={test_fraction!r} must be in (0, 1)")
    seed = _check_seed(seed, "digits")
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - an optional dependency
        raise ImportError("digits(): needs scikit-learn (pip install 'rsm[images]')") from exc
    raw = load_digits()
    x = (raw.data.astype(np.float64) / 8.0 - 1.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = raw.target.astype(np.int64)
    if split == "all":
        index = np.arange(len(y))
    else:
        rng = np.random.Generator(np.random.PCG64(seed))
        test = []
        for c in range(10):
            members = np.flatnonzero(y == c)
            members = members[rng.permutation(len(members))]
            test.extend(members[: int(round(test_fraction * len(members)))])
        is_test = np.zeros(len(y), dtype=bool)
        is_test[test] = True
        index = np.flatnonzero(is_test if split == "test" else ~is_test)
    return ImageDataset(f"digits-{split}", np.ascontiguousarray(x[index]), y[index], 10)


@dataclass(frozen=True)
class ShapePrompt:
    """What a procedural image shows: `count` shapes of kind `shape` and colour `colour`, all in
    the `position` half of the image."""

    shape: str
    colour: str
    count: int
    position: str

    def text(self) -> str:
        words = {1: "one", 2: "two", 3: "three", 4: "four"}
        noun = self.shape + ("s" if self.count > 1 else "")
        return f"{words.get(self.count, str(self.count))} {self.colour} {noun} on the {self.position}"


def _max_count(size: int) -> int:
    """Cells in one half of the grid, at most 3 (GenEval counts up to a few objects)."""
    grid = size // CELL
    return min(3, grid * (grid // 2))


def shape_prompts(size: int = 16) -> list[ShapePrompt]:
    """All prompts of `size` images, in class-id order:
    id = ((shape * 3 + colour) * max_count + count - 1) * 2 + position."""
    _check_size(size, "shape_prompts")
    return [ShapePrompt(s, c, k, p) for s in SHAPES for c in COLOURS
            for k in range(1, _max_count(size) + 1) for p in POSITIONS]


def _check_size(size: Any, func: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16 or size % CELL:
        raise ValueError(f"{func}(): size must be an int >= 16 and a multiple of {CELL}, got {size!r}")
    return int(size)


def prompt_vector(prompt: ShapePrompt, size: int = 16) -> np.ndarray:
    """The condition vector of a prompt: one-hot shape (3), one-hot colour (3), count / max_count,
    position (-1 left, +1 right): float32 [8]."""
    v = np.zeros(8, dtype=np.float32)
    v[SHAPES.index(prompt.shape)] = 1.0
    v[3 + COLOURS.index(prompt.colour)] = 1.0
    v[6] = prompt.count / _max_count(size)
    v[7] = -1.0 if prompt.position == "left" else 1.0
    return v


_RGB = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def _shape_mask(kind: str, extent: int, cell: int, oy: int, ox: int) -> np.ndarray:
    """Boolean [cell, cell] mask of one shape of side `extent` with its top-left corner at (oy, ox)."""
    yy, xx = np.mgrid[0:cell, 0:cell].astype(np.float64)
    y, x = yy - oy, xx - ox  # coordinates inside the shape's box
    inside = (y >= 0) & (y < extent) & (x >= 0) & (x < extent)
    if kind == "square":
        return inside
    c = (extent - 1) / 2.0
    if kind == "circle":
        return inside & ((y - c) ** 2 + (x - c) ** 2 <= (extent / 2.0) ** 2 - 0.25)
    # triangle: apex at the top centre, base on the bottom row; half-width grows with the row
    half = (y + 1) * (extent / 2.0) / extent
    return inside & (np.abs(x - c) <= half - 0.25)


def draw_shapes(prompt: ShapePrompt, size: int, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """One image [3, size, size] in [-1, 1] for `prompt` and the drawn objects
    [(row, col, extent)]: cells drawn without replacement from the prompted half, each shape of
    side 5..6 at a random offset inside its cell (>= 1 pixel margin), colour intensity 0.75..1."""
    grid = size // CELL
    cols = range(0, grid // 2) if prompt.position == "left" else range(grid // 2, grid)
    cells = [(r, c) for r in range(grid) for c in cols]
    chosen = rng.choice(len(cells), size=prompt.count, replace=False)
    img = np.zeros((3, size, size), dtype=np.float64)
    objects = []
    colour = np.asarray(_RGB[prompt.colour])
    for k in sorted(int(i) for i in chosen):
        r, c = cells[k]
        extent = int(rng.integers(5, 7))
        # a margin of >= 1 pixel inside the cell keeps neighbouring shapes apart
        oy, ox = (int(v) for v in rng.integers(1, CELL - extent, size=2))
        mask = _shape_mask(prompt.shape, extent, CELL, oy, ox)
        level = 0.75 + 0.25 * float(rng.random())
        for ch in range(3):
            img[ch, r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL][mask] = colour[ch] * level
        objects.append((r * CELL + oy, c * CELL + ox, extent))
    return (2.0 * img - 1.0).astype(np.float32), objects


def shapes(n: int = 1000, *, size: int = 16, seed: int = 0,
           prompts: list[ShapePrompt] | None = None) -> ImageDataset:
    """n procedural images [n, 3, size, size]; image i shows prompt (class id) i mod
    num_classes (or the given `prompts` cycled), drawn from a Generator(PCG64(seed)): the same seed
    gives the same images. labels = class ids (shape_prompts order), cond = prompt vectors [n, 8],
    attributes = [{prompt, objects}]."""
    size = _check_size(size, "shapes")
    seed = _check_seed(seed, "shapes")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"shapes(): n must be a positive int, got {n!r}")
    table = shape_prompts(size)
    chosen = table if prompts is None else list(prompts)
    for p in chosen:
        if p not in table:
            raise ValueError(f"shapes(): prompt {p!r} is not drawable at size {size} "
                             f"(count <= {_max_count(size)}, shapes {SHAPES}, colours {COLOURS})")
    rng = np.random.Generator(np.random.PCG64(seed))
    images = np.empty((n, 3, size, size), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    cond = np.empty((n, 8), dtype=np.float32)
    attributes = []
    for i in range(n):
        p = chosen[i % len(chosen)]
        images[i], objects = draw_shapes(p, size, rng)
        labels[i] = table.index(p)
        cond[i] = prompt_vector(p, size)
        attributes.append({"prompt": p, "objects": objects})
    return ImageDataset(f"shapes-{size}", images, labels, len(table), cond=cond, attributes=attributes)
