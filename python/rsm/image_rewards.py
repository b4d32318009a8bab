"""Image rewards: real black-box scorers and differentiable ones, all rsm.Reward objects (so they
go through the same call and validation path as a user's reward).

  jpeg_compressibility / jpeg_incompressibility   DDPO's rewards: -/+ JPEG file size in kB (Pillow)
  digit_probability                               a scikit-learn classifier's probability of the
                                                  target digit (the condition): black box
  geneval                                         ShapeChecker: finds the shapes of a procedural
                                                  image, scores count/colour/shape/position
                                                  against the prompt: black box and discrete
  digit_log_probability                           log p(target | x) of an rsm.MLP classifier trained
                                                  here; its input gradient is the MLP's VJP in C
  contrast                                        "aesthetic" score: the pixel standard deviation,
                                                  with its exact gradient

A reward is called as reward(x0, cond) with x0 an rsm.Tensor [n, C*H*W] of images in [-1, 1] and
cond the per-sample condition (class ids [n] or [n, 1], or None); `image_shape` = (C, H, W)
says how to read the rows.
"""
from __future__ import annotations

import functools
import io
from typing import Any

import numpy as np

from ._reward import Reward

__all__ = ["as_images", "to_uint8", "jpeg_size_kb", "jpeg_compressibility", "jpeg_incompressibility",
           "digit_classifier", "digit_probability", "ShapeChecker", "geneval", "RSMClassifier",
           "digit_log_probability", "contrast", "class_ids"]


def _check_shape(image_shape: Any, func: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"{func}(): image_shape must be (C, H, W), got {image_shape!r}") from None
    if c not in (1, 3) or h < 1 or w < 1:
        raise ValueError(f"{func}(): image_shape must be (1 or 3, H, W), got {image_shape!r}")
    return c, h, w


def as_images(x0: Any, image_shape: tuple[int, int, int], func: str = "reward") -> np.ndarray:
    """Rows x0 [n, C*H*W] (any DLPack array) as float64 images [n, C, H, W]."""
    c, h, w = _check_shape(image_shape, func)
    x = np.from_dlpack(x0) if hasattr(x0, "__dlpack__") and not isinstance(x0, np.ndarray) else np.asarray(x0)
    if x.ndim == 4 and tuple(x.shape[1:]) == (c, h, w):
        return x.astype(np.float64)
    if x.ndim != 2 or x.shape[1] != c * h * w:
        raise ValueError(f"{func}(): images must be [n, {c * h * w}] rows of {(c, h, w)} images, "
                         f"got shape {tuple(x.shape)}")
    return x.astype(np.float64).reshape(-1, c, h, w)


def class_ids(cond: Any, n: int, num_classes: int, func: str) -> np.ndarray:
    """The target class of every sample from a reward's cond: ids [n] or [n, 1] (a class-conditional
    model's cond) or one-hot vectors [n, num_classes], as int64; ValueError when missing or out of
    range."""
    if cond is None:
        raise ValueError(f"{func}(): this reward needs the target class of each sample as cond "
                         "(fine-tune with conditions=..., or call reward(x0, class_ids))")
    c = np.from_dlpack(cond) if hasattr(cond, "__dlpack__") and not isinstance(cond, np.ndarray) else np.asarray(cond)
    c = c.reshape(-1) if c.ndim == 2 and c.shape[1] == 1 else c
    if c.ndim == 2 and c.shape == (n, num_classes):   # one-hot condition vectors: their argmax
        if not np.all((c == 0) | (c == 1)) or not np.all(c.sum(1) == 1):
            raise ValueError(f"{func}(): cond of shape [{n}, {num_classes}] must be one-hot class vectors")
        c = c.argmax(1)
    if c.shape != (n,):
        raise ValueError(f"{func}(): cond must be class ids of shape [{n}] or [{n}, 1], got {tuple(c.shape)}")
    ids = np.rint(c).astype(np.int64)
    if not np.all(np.isfinite(c)) or np.any(ids != c) or ids.min() < 0 or ids.max() >= num_classes:
        raise ValueError(f"{func}(): cond must hold class ids in 0..{num_classes - 1}, got {c[:8]}")
    return ids


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 0..255 (clipped, rounded), the encoding a PNG/JPEG stores."""
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


# ---- JPEG (DDPO) -----------------------------------------------------------------------------

def jpeg_size_kb(images: np.ndarray, quality: int = 95) -> np.ndarray:
    """JPEG file size in kB (1000 bytes) of each image [n, C, H, W] in [-1, 1] (Pillow)."""
    from PIL import Image

    out = np.empty(images.shape[0])
    for i, img in enumerate(to_uint8(images)):
        pil = Image.fromarray(img[0], "L") if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0), "RGB")
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(quality))
        out[i] = buf.tell() / 1000.0
    return out


def jpeg_compressibility(image_shape: tuple[int, int, int], quality: int = 95) -> Reward:
    """DDPO's compressibility reward: r = -(JPEG size in kB). Black box."""
    shape = _check_shape(image_shape, "jpeg_compressibility")

    def jpeg_compressibility(x0: Any, cond: Any = None) -> np.ndarray:
        return -jpeg_size_kb(as_images(x0, shape, "jpeg_compressibility"), quality)

    return Reward(jpeg_compressibility)


def jpeg_incompressibility(image_shape: tuple[int, int, int], quality: int = 95) -> Reward:
    """DDPO's incompressibility reward: r = +(JPEG size in kB). Black box."""
    shape = _check_shape(image_shape, "jpeg_incompressibility")

    def jpeg_incompressibility(x0: Any, cond: Any = None) -> np.ndarray:
        return jpeg_size_kb(as_images(x0, shape, "jpeg_incompressibility"), quality)

    return Reward(jpeg_incompressibility)


# ---- a scikit-learn digit classifier (black box) ----------------------------------------------

@functools.lru_cache(maxsize=4)
def digit_classifier(seed: int = 0) -> Any:
    """A scikit-learn LogisticRegression trained on the digits train split (rsm.image_datasets
    .digits, inputs in [-1, 1] flattened to 64), cached per process. Its accuracy on the test
    split is stored as `.test_accuracy_`."""
    from sklearn.linear_model import LogisticRegression

    from .image_datasets import digits

    train, test = digits("train", seed=seed), digits("test", seed=seed)
    clf = LogisticRegression(C=0.5, max_iter=3000)
    clf.fit(train.flat().astype(np.float64), train.labels)
    clf.test_accuracy_ = float((clf.predict(test.flat().astype(np.float64)) == test.labels).mean())
    return clf


def digit_probability(classifier: Any = None) -> Reward:
    """r(x, c) = p_classifier(digit c | x) for 8x8 digit images (rows of 64 in [-1, 1]); the
    target c is the condition (class ids). Black box: a scikit-learn model (default
    digit_classifier()); anything with predict_proba works."""
    clf = digit_classifier() if classifier is None else classifier

    def digit_probability(x0: Any, cond: Any = None) -> np.ndarray:
        x = as_images(x0, (1, 8, 8), "digit_probability").reshape(-1, 64)
        target = class_ids(cond, x.shape[0], 10, "digit_probability")
        proba = clf.predict_proba(np.clip(x, -1.0, 1.0))
        return proba[np.arange(len(target)), target]

    return Reward(digit_probability)


# ---- GenEval-like checker for the procedural shapes (black box, discrete) ---------------------

class ShapeChecker:
    """Finds the coloured shapes of a procedural image (rsm.image_datasets.shapes) and scores them
    against its prompt, as GenEval does with a detector.

    Detection: a pixel is foreground when its brightest channel exceeds `threshold` (in [-1, 1])
    and leads the second brightest by `margin`; its colour is that channel. Objects are the
    4-connected components of one colour with >= `min_area` pixels. Shape: by which corners of the
    object's bounding box are filled (square: all four; triangle: the bottom two only; circle:
    none), the fill ratio area / box deciding ties. Position: the centroid's half.

    score(images, prompts) -> float64 [n] in {0, 1/4, 1/2, 3/4, 1}: the fraction of the four
    checks (count, colour, shape, position) that pass; with strict=True, 1 only when all pass."""

    def __init__(self, threshold: float = 0.0, margin: float = 0.5, min_area: int = 4) -> None:
        self.threshold, self.margin, self.min_area = float(threshold), float(margin), int(min_area)

    def detect(self, image: np.ndarray) -> list[dict]:
        """Objects of one image [3, H, W]: dicts (colour, shape, area, centroid (y, x), box)."""
        from .image_datasets import COLOURS

        img = np.asarray(image, dtype=np.float64)
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"ShapeChecker.detect(): image must be [3, H, W], got {img.shape}")
        order = np.sort(img, axis=0)
        top, second = order[-1], order[-2]
        colour = np.argmax(img, axis=0)
        fg = (top > self.threshold) & (top - second > self.margin)
        label = np.where(fg, colour, -1)
        seen = np.zeros(label.shape, dtype=bool)
        h, w = label.shape
        objects = []
        for y0 in range(h):
            for x0 in range(w):
                if label[y0, x0] < 0 or seen[y0, x0]:
                    continue
                c = label[y0, x0]
                stack, pixels = [(y0, x0)], []
                seen[y0, x0] = True
                while stack:
                    y, x = stack.pop()
                    pixels.append((y, x))
                    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w and not seen[yy, xx] and label[yy, xx] == c:
                            seen[yy, xx] = True
                            stack.append((yy, xx))
                if len(pixels) < self.min_area:
                    continue
                p = np.asarray(pixels)
                ys, xs = p[:, 0], p[:, 1]
                y_lo, y_hi, x_lo, x_hi = ys.min(), ys.max(), xs.min(), xs.max()
                mask = np.zeros((y_hi - y_lo + 1, x_hi - x_lo + 1), dtype=bool)
                mask[ys - y_lo, xs - x_lo] = True
                objects.append({"colour": COLOURS[c], "shape": self._classify(mask), "area": len(pixels),
                                "centroid": (float(ys.mean()), float(xs.mean())),
                                "box": (int(y_lo), int(x_lo), int(y_hi), int(x_hi))})
        return objects

    @staticmethod
    def _classify(mask: np.ndarray) -> str:
        top = mask[0, 0] and mask[0, -1]
        bottom = mask[-1, 0] and mask[-1, -1]
        if top and bottom:
            return "square"
        if bottom and not (mask[0, 0] or mask[0, -1]):
            return "triangle"
        if not (mask[0, 0] or mask[0, -1] or mask[-1, 0] or mask[-1, -1]):
            return "circle"
        fill = mask.mean()  # ambiguous corners: square ~1, circle ~0.8, triangle ~0.55
        return "square" if fill > 0.93 else ("circle" if fill > 0.7 else "triangle")

    def checks(self, image: np.ndarray, prompt: Any) -> dict[str, bool]:
        """The four checks of one image against its prompt (an image_datasets.ShapePrompt)."""
        objects = self.detect(image)
        width = np.asarray(image).shape[-1]
        any_found = len(objects) > 0
        left = [o["centroid"][1] < width / 2.0 for o in objects]
        return {"count": len(objects) == prompt.count,
                "colour": any_found and all(o["colour"] == prompt.colour for o in objects),
                "shape": any_found and all(o["shape"] == prompt.shape for o in objects),
                "position": any_found and all(l == (prompt.position == "left") for l in left)}

    def score(self, images: np.ndarray, prompts: list, strict: bool = False) -> np.ndarray:
        out = np.empty(len(prompts))
        for i, (img, p) in enumerate(zip(images, prompts)):
            c = self.checks(img, p)
            out[i] = float(all(c.values())) if strict else sum(c.values()) / 4.0
        return out


def geneval(size: int = 16, strict: bool = False, checker: ShapeChecker | None = None) -> Reward:
    """The GenEval-like reward of procedural `size` x `size` images: ShapeChecker.score against the
    prompt whose class id (rsm.image_datasets.shape_prompts order) is the condition. Discrete, so
    whole groups often score the same: the Trainer gives zero-std groups no advantage (mask) and
    keeps only their KL anchor."""
    from .image_datasets import shape_prompts

    table = shape_prompts(size)
    check = checker or ShapeChecker()

    def geneval(x0: Any, cond: Any = None) -> np.ndarray:
        images = as_images(x0, (3, size, size), "geneval")
        ids = class_ids(cond, images.shape[0], len(table), "geneval")
        return check.score(images, [table[i] for i in ids], strict=strict)

    return Reward(geneval)


# ---- differentiable rewards ------------------------------------------------------------------

class RSMClassifier:
    """A classifier built on rsm.MLP (the C core does its forward, backward and input VJP):
    logits = MLP(x, t = 0)[:, :num_classes] (the MLP's output has the input's width; the first
    num_classes entries are read as logits). Trained by cross-entropy with rsm.AdamW.

    log_prob(x, y) and its input gradient d log p(y | x) / dx = J_x^T (onehot(y) - softmax),
    a VJP through the network in C."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 128, depth: int = 2, seed: int = 0,
                 dtype: str = "float32") -> None:
        from .models import MLP

        if not 2 <= num_classes <= dim:
            raise ValueError(f"RSMClassifier(): num_classes={num_classes} must be in 2..dim={dim}")
        self.num_classes = int(num_classes)
        self.model = MLP(dim, hidden=hidden, depth=depth, seed=seed, dtype=dtype)

    @property
    def dim(self) -> int:
        return self.model.dim

    def _t(self, n: int) -> np.ndarray:
        return np.zeros(n, dtype=self.model.dtype)

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.model.dtype)
        return np.from_dlpack(self.model.forward(x, self._t(len(x))))[:, : self.num_classes].astype(np.float64)

    def _pad(self, g: np.ndarray) -> np.ndarray:
        out = np.zeros((g.shape[0], self.dim), dtype=self.model.dtype)
        out[:, : self.num_classes] = g
        return out

    @staticmethod
    def _softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def fit(self, x: np.ndarray, y: np.ndarray, steps: int = 400, batch_size: int = 128,
            lr: float = 3e-3, seed: int = 0) -> list[float]:
        """Cross-entropy training with AdamW; returns the loss per step. Deterministic per seed."""
        from .training import AdamW

        x = np.ascontiguousarray(x, dtype=self.model.dtype)
        y = np.asarray(y, dtype=np.int64)
        opt = AdamW(self.model, lr=lr, weight_decay=1e-4, max_grad_norm=1.0)
        rng = np.random.Generator(np.random.PCG64(seed))
        losses = []
        for _ in range(steps):
            idx = rng.integers(0, len(x), size=min(batch_size, len(x)))
            xb, yb = x[idx], y[idx]
            out, token = self.model.forward_keep(xb, self._t(len(xb)))
            p = self._softmax(np.from_dlpack(out)[:, : self.num_classes].astype(np.float64))
            losses.append(float(-np.log(p[np.arange(len(yb)), yb] + 1e-12).mean()))
            # d mean CE / d logits = (softmax - onehot) / B
            p[np.arange(len(yb)), yb] -= 1.0
            _, dparams = self.model.backward(self._pad(p / len(yb)), token)
            opt.step(dparams)
        return losses

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float((self.logits(x).argmax(1) == np.asarray(y)).mean())

    def log_prob(self, x: np.ndarray, y: np.ndarray, grad: bool = True):
        """(log p(y | x) [n], d/dx [n, dim] or None)."""
        x = np.ascontiguousarray(x, dtype=self.model.dtype)
        n = len(x)
        if not grad:
            z = self.logits(x)
            z = z - z.max(axis=1, keepdims=True)
            return (z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(n), y], None
        dummy = np.zeros((n, self.dim), dtype=self.model.dtype)
        out, token = self.model.forward_keep(x, self._t(n))
        z = np.from_dlpack(out)[:, : self.num_classes].astype(np.float64)
        p = self._softmax(z)
        shifted = z - z.max(axis=1, keepdims=True)           # log-softmax without underflow
        logp = (shifted - np.log(np.exp(shifted).sum(1, keepdims=True)))[np.arange(n), y]
        g = -p
        g[np.arange(n), y] += 1.0
        dummy[:, : self.num_classes] = g
        dx, _ = self.model.backward(dummy, token)
        return logp, np.from_dlpack(dx).astype(np.float64)


@functools.lru_cache(maxsize=2)
def digit_rsm_classifier(seed: int = 0, steps: int = 600) -> RSMClassifier:
    """An RSMClassifier trained on the digits train split (noise-augmented: inputs x + 0.2 z, so
    it also judges slightly noisy samples), cached per process; `.test_accuracy_` on the split."""
    from .image_datasets import digits

    train, test = digits("train", seed=seed), digits("test", seed=seed)
    clf = RSMClassifier(64, 10, hidden=128, depth=2, seed=seed)
    rng = np.random.Generator(np.random.PCG64(seed + 1))
    x = np.concatenate([train.flat(), train.flat() + 0.2 * rng.standard_normal(train.flat().shape)])
    y = np.concatenate([train.labels, train.labels])
    clf.fit(x.astype(np.float32), y, steps=steps, seed=seed)
    clf.test_accuracy_ = clf.accuracy(test.flat(), test.labels)
    return clf


def digit_log_probability(classifier: RSMClassifier | None = None) -> Reward:
    """r(x, c) = log p(digit c | x) under an rsm.MLP classifier (default digit_rsm_classifier()),
    differentiable: returns (r, dr/dx) with the gradient from the classifier's VJP in C."""
    clf = digit_rsm_classifier() if classifier is None else classifier

    def digit_log_probability(x0: Any, cond: Any = None):
        x = as_images(x0, (1, 8, 8), "digit_log_probability").reshape(-1, 64)
        target = class_ids(cond, x.shape[0], clf.num_classes, "digit_log_probability")
        return clf.log_prob(x, target)

    return Reward(digit_log_probability, differentiable=True)


def contrast(image_shape: tuple[int, int, int], scale: float = 1.0) -> Reward:
    """An "aesthetic"-style differentiable score: r(x) = scale * std(x) over the pixels of each
    image (population std, D = C*H*W), with dr/dx = scale (x - mean) / (D std)."""
    shape = _check_shape(image_shape, "contrast")
    dim = int(np.prod(shape))

    def contrast(x0: Any, cond: Any = None):
        x = as_images(x0, shape, "contrast").reshape(-1, dim)
        centred = x - x.mean(axis=1, keepdims=True)
        std = np.sqrt((centred**2).mean(axis=1))
        safe = np.where(std > 0, std, 1.0)
        grad = np.where(std[:, None] > 0, centred / (dim * safe[:, None]), 0.0)
        return scale * std, scale * grad

    return Reward(contrast, differentiable=True)
