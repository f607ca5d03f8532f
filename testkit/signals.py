"""Synthetic inputs the zoo's tests and its detection benchmark share: tones, sounds and
rendered text lines, each seeded and on its model's input grid."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["rendered_lines", "sounds", "tones"]


def tones(n: int, seed: int = 0, lo_hz: float = 55.0, hi_hz: float = 1000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` SYNTHETIC frames ``(n, 1024)`` in ``[-1, 1]`` on the 16-bit grid and their
    fundamentals in Hz (log-uniform in ``[lo_hz, hi_hz]``), seeded."""
    g = torch.Generator().manual_seed(seed)
    f0 = lo_hz * (hi_hz / lo_hz) ** torch.rand(n, 1, generator=g, dtype=torch.float64)
    t = torch.arange(1024, dtype=torch.float64) / 16_000
    x = torch.zeros(n, 1024, dtype=torch.float64)
    for k in range(1, 5):
        strength = (1.0 if k == 1 else 0.6 * float(torch.rand(1, generator=g))) / k
        phase = 2 * math.pi * torch.rand(n, 1, generator=g, dtype=torch.float64)
        x += strength * torch.sin(2 * math.pi * k * f0 * t + phase)
    x += 0.01 * torch.randn(n, 1024, generator=g, dtype=torch.float64)
    gain = 0.05 + 0.6 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    x = gain * x / x.abs().amax(1, keepdim=True)
    return (torch.round(x * 32768) / 32768).float(), f0.squeeze(1)


def sounds(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` SYNTHETIC frames ``(n, 576)`` on the 16-bit grid, in turn: noise at a random
    level, a tone of 80-2,000 Hz, and a chirp with three overtones sweeping an octave."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(576, dtype=torch.float64) / 16_000
    frames = []
    for i in range(n):
        f = 80 * 25 ** float(torch.rand(1, generator=g, dtype=torch.float64))
        level = 0.02 + 0.5 * float(torch.rand(1, generator=g, dtype=torch.float64))
        if i % 3 == 0:
            x = torch.randn(576, generator=g, dtype=torch.float64)
        elif i % 3 == 1:
            x = torch.sin(2 * math.pi * f * t + 6 * float(torch.rand(1, generator=g)))
        else:
            phase = 2 * math.pi * f * (t + t**2 / (2 * 0.036))  # up one octave over 36 ms
            x = sum(torch.sin(k * phase) / k for k in range(1, 5))
            x = x + 0.05 * torch.randn(576, generator=g, dtype=torch.float64)
        frames.append(level * x / x.abs().max())
    return (torch.round(torch.stack(frames) * 32768) / 32768).float()


TEXT = ("the quick brown fox jumps over a lazy dog while models answer every query of the "
         "fingerprint with sensitive samples that verify weights intact or tampered 0123456789")
WORDS = TEXT.split()


def rendered_lines(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``2 n`` SYNTHETIC text lines, uint8 RGB ``(2n, 48, 192, 3)``: ``n`` upright lines of
    three random words (font size 22-33, dark ink on light paper, each seeded), then the
    same lines turned by 180 degrees; labels 0 then 1."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS, 3))
        font = ImageFont.load_default(size=int(rng.integers(22, 34)))
        ink, paper = int(rng.integers(0, 80)), int(rng.integers(190, 256))
        tint = rng.integers(-20, 21, 3)
        im = Image.new("RGB", (192, 48), tuple(int(v) for v in np.clip(paper + tint, 0, 255)))
        ImageDraw.Draw(im).text((int(rng.integers(0, 8)), 24), text, fill=(ink,) * 3, font=font, anchor="lm")
        lines.append(np.asarray(im))
    up = np.stack(lines)
    return np.concatenate([up, up[:, ::-1, ::-1]]), np.repeat(np.array([0, 1]), n)
