"""``shapes``: a procedurally generated 10-class colour image dataset, a second offline domain.

Five object classes (disc, square, triangle, cross, ring) and five texture classes (horizontal,
vertical and diagonal stripes, checkerboard, dot grid) drawn at a random position and scale, in a
random foreground colour on a random background colour, plus a little Gaussian noise. Everything is
computed with whole-batch tensor ops from one seeded ``torch.Generator``: the same ``(n, size, seed)``
always gives the same images, on any machine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["SHAPE_CLASSES", "generate_shapes"]

SHAPE_CLASSES = (
    "disc",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "checkerboard",
    "dot grid",
)

# Each mask takes local coordinates (u, v) — offsets from the object centre in units of its radius —
# image coordinates (x, y) in [0, 1), and the texture period and phase ([n, 1, 1] each); it returns a
# boolean mask broadcastable to [n, S, S].


T = torch.Tensor


def _box(u: T, v: T, half: float = 1.0) -> T:
    return torch.maximum(u.abs(), v.abs()) <= half


def _stripes(t: T, period: T, phase: T) -> T:
    return torch.frac(t / period + phase) < 0.5


def _disc(u: T, v: T, x: T, y: T, p: T, ph: T) -> T:
    return u**2 + v**2 <= 1.0


def _square(u: T, v: T, x: T, y: T, p: T, ph: T) -> T:
    return _box(u, v, 0.8)


def _triangle(u: T, v: T, x: T, y: T, p: T, ph: T) -> T:
    return (v <= 0.8) & (u.abs() <= (v + 0.9) * 0.55)


def _cross(u: T, v: T, x: T, y: T, p: T, ph: T) -> T:
    return (torch.minimum(u.abs(), v.abs()) <= 0.25) & _box(u, v, 0.95)


def _ring(u: T, v: T, x: T, y: T, p: T, ph: T) -> T:
    r2 = u**2 + v**2
    return (r2 <= 1.0) & (r2 >= 0.55**2)


def _h_stripes(u: T, v: T, x: T, y: T, p: T, ph: T) -> T:
    return _box(u, v) & _stripes(y, p, ph)


def _v_stripes(u: T, v: T, x: T, y: T, p: T, ph: T) -> T:
    return _box(u, v) & _stripes(x, p, ph)


def _d_stripes(u: T, v: T, x: T, y: T, p: T, ph: T) -> T:
    return _box(u, v) & _stripes(x + y, p * 1.4, ph)


def _checkerboard(u: T, v: T, x: T, y: T, p: T, ph: T) -> T:
    return _box(u, v) & (_stripes(x, p * 2, ph) ^ _stripes(y, p * 2, ph))


def _dot_grid(u: T, v: T, x: T, y: T, p: T, ph: T) -> T:
    dx, dy = torch.frac(x / p + ph) - 0.5, torch.frac(y / p + ph) - 0.5
    return _box(u, v) & (dx**2 + dy**2 <= 0.3**2)


_MASKS: tuple[Callable[..., torch.Tensor], ...] = (
    _disc,
    _square,
    _triangle,
    _cross,
    _ring,
    _h_stripes,
    _v_stripes,
    _d_stripes,
    _checkerboard,
    _dot_grid,
)


def _uniform(n: int, low: float, high: float, g: torch.Generator, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, *shape, generator=g)


def generate_shapes(n: int, size: int = 32, seed: int = 0, noise: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``[n, 3, size, size]`` float32 in [0, 1] and balanced labels ``[n]`` int64.

    Labels cycle through the ten classes and are then shuffled, so every class has ``n // 10`` or one
    more image.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"shapes: n must be a positive int, got {n!r}")
    if not isinstance(size, int) or size < 4:
        raise ValueError(f"shapes: size must be an int >= 4 pixels, got {size!r}")
    g = torch.Generator().manual_seed(int(seed))
    labels = (torch.arange(n) % len(SHAPE_CLASSES))[torch.randperm(n, generator=g)]

    radius = _uniform(n, 0.18, 0.32, g, 1, 1)
    cx = radius + _uniform(n, 0.0, 1.0, g, 1, 1) * (1 - 2 * radius)
    cy = radius + _uniform(n, 0.0, 1.0, g, 1, 1) * (1 - 2 * radius)
    period = _uniform(n, 0.12, 0.2, g, 1, 1)
    phase = _uniform(n, 0.0, 1.0, g, 1, 1)
    bg = torch.rand(n, 3, generator=g)
    fg = torch.rand(n, 3, generator=g)
    # Keep the object visible: where the colours are too close, use the background's complement.
    fg = torch.where(((fg - bg).abs().mean(dim=1, keepdim=True) < 0.3), 1.0 - bg, fg)
    noise_t = noise * torch.randn(n, 3, size, size, generator=g)

    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = coords.view(1, size, 1), coords.view(1, 1, size)
    u, v = (x - cx) / radius, (y - cy) / radius
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    for cls, fn in enumerate(_MASKS):
        idx = (labels == cls).nonzero(as_tuple=True)[0]
        if idx.numel():
            mask[idx] = fn(u[idx], v[idx], x, y, period[idx], phase[idx]).expand(-1, size, size)
    m = mask.unsqueeze(1).float()
    images = bg[:, :, None, None] * (1 - m) + fg[:, :, None, None] * m + noise_t
    return images.clamp_(0.0, 1.0), labels
