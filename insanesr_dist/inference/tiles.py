"""Upscaling one image of any size: overlapping tiles, blended with linear ramps, optional x8 self-ensemble.

Layout along each axis (in LR pixels): windows of `tile + 2*overlap` pixels, as few as keep every pair of
neighbours overlapping by at least `2*overlap`, spread evenly from edge to edge. The seam between two
neighbours sits in the middle of their overlap, and output pixels near a seam are a blend of both tiles,
weighted by a linear ramp `overlap / 2` LR pixels wide centred on the seam. So every output pixel a tile
contributes to lies at least `3/4 * overlap` LR pixels inside that tile's window: once that covers the
network's receptive radius (`receptive_radius`; `exact_overlap` says from which overlap), a tile's output there
is exactly the whole image's, and the tiled result equals the untiled one up to float rounding. Below that,
errors fall off fast with the distance from a tile's edge (measured: under 0.0001/255 at 8 LR pixels for a
trained default model), and the ramp turns what is left into a gradual blend instead of a hard seam.

Why half the overlap: a wider ramp averages two tiles' edge errors over more pixels but lets pixels closer to
a window's edge contribute; with errors that decay this fast, a narrower ramp wins (it was measured), and a
hard cut (no ramp) would leave a visible step wherever two tiles disagree.

Weights are separable (one 1-D profile per axis, normalised to sum to 1), so the blend needs no per-pixel
weight map, and rows are finished and quantized strip by strip: the blending device (the host, unless told)
holds the uint8 output plus one strip of float accumulator, and the accelerator holds `batch_size` tiles.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from insanesr_dist.data.tensors import to_uint8
from insanesr_dist.inference.forward import Forward
from insanesr_dist.model.settings import ModelConfig

RAMP = 0.5  # blend width as a fraction of the overlap


def receptive_radius(config: ModelConfig) -> int:
    """How many LR pixels away from its own LR pixel an output pixel can see (the receptive field is
    `2 * radius + 1` LR pixels wide). Every 3x3 conv on the longest path (the dense blocks chain all their
    convs) reaches one pixel further at its own resolution; the convs after the first PixelShuffle work on
    finer grids, so they are followed back to LR pixels one x2 step at a time, for the worst output pixel.
    (The bilinear skip reaches only the neighbouring LR pixels, well inside that.)"""
    lr_convs = 1 + config.num_rrdb * 3 * config.layers_per_block + 1 + 1  # head, trunk, trunk_conv, upscale1
    steps = config.scale.bit_length() - 1
    worst = 0
    for j in range(config.scale):  # output pixel j of LR pixel 0; the pattern repeats every `scale`
        lo, hi = j - 1, j + 1  # tail conv
        for step in range(steps):
            lo, hi = lo // 2, hi // 2  # back through one PixelShuffle
            if step < steps - 1:
                lo, hi = lo - 1, hi + 1  # the conv of the upscale block on that grid
        worst = max(worst, -lo, hi)
    return lr_convs + worst


def exact_overlap(config: ModelConfig) -> int:
    """The smallest `overlap` for which tiles give exactly the untiled output (up to float rounding)."""
    return math.ceil(receptive_radius(config) / (1 - RAMP / 2))


@dataclass(frozen=True)
class Axis:
    """The tile windows along one axis: start offsets (LR pixels), window length, seam positions."""

    starts: tuple[int, ...]
    window: int
    seams: tuple[float, ...]


def layout(length: int, tile: int, overlap: int) -> Axis:
    """Windows of `tile + 2*overlap` (or the whole axis) covering [0, length) with >= 2*overlap shared."""
    window = tile + 2 * overlap
    if tile <= 0 or length <= window:
        return Axis((0,), length, ())
    count = -(-(length - 2 * overlap) // tile)  # ceil: neighbours then step at most `tile`
    span = length - window
    starts = tuple(i * span // (count - 1) for i in range(count))
    seams = tuple((a + b + window) / 2 for a, b in itertools.pairwise(starts))
    return Axis(starts, window, seams)


def axis_weights(axis: Axis, length: int, scale: int, ramp: float) -> torch.Tensor:
    """(tiles, scale*window) blend weights of each window's output pixels; they sum to 1 at every pixel."""
    span = axis.window * scale
    centres = (torch.arange(span, dtype=torch.float64) + 0.5) / scale  # output pixel -> LR offset in the window
    rows, total = [], torch.zeros(length * scale, dtype=torch.float64)
    for i, start in enumerate(axis.starts):
        w = torch.ones(span, dtype=torch.float64)
        if i > 0:  # rise across the seam with the previous tile
            w *= _ramp(centres + start - axis.seams[i - 1], ramp)
        if i < len(axis.starts) - 1:  # fall across the seam with the next tile
            w *= 1 - _ramp(centres + start - axis.seams[i], ramp)
        total[start * scale : start * scale + span] += w
        rows.append(w)
    return torch.stack([w / total[s * scale : s * scale + span] for w, s in zip(rows, axis.starts)]).float()


def _ramp(offset: torch.Tensor, width: float) -> torch.Tensor:
    """0 before -width/2, 1 after +width/2, linear in between (a hard step when width is 0)."""
    if width <= 0:
        return (offset >= 0).to(offset.dtype)
    return (offset / width + 0.5).clamp(0, 1)


def self_ensemble(forward: Forward) -> Forward:
    """x8 test-time augmentation: the 4 rotations of the input and of its mirror image, each output
    transformed back, averaged. Each transform runs as its own forward pass, so non-square inputs work."""

    def ensembled(x: torch.Tensor) -> torch.Tensor:
        total = None
        for turns in range(4):
            for mirror in (False, True):
                view = torch.rot90(x, turns, (-2, -1))
                view = view.flip(-1) if mirror else view
                out = forward(view).float()
                out = out.flip(-1) if mirror else out
                out = torch.rot90(out, -turns, (-2, -1))
                total = out if total is None else total + out
        return total / 8

    return ensembled


@torch.no_grad()
def upscale_image(
    forward: Forward,
    lr: torch.Tensor,
    *,
    tile: int = 0,
    overlap: int = 0,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    quantize: bool = True,
    out_device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Upscale one 3xHxW uint8 image with `forward` (float [0,1] batches in, float batches out).

    `tile` 0 runs the whole image at once. Otherwise windows of `tile + 2*overlap` LR pixels are cut on the
    image's own device, sent to `device` `batch_size` at a time and blended on `out_device`. Returns the
    3x(s*H)x(s*W) uint8 result on `out_device` (s: the model's scale; the host by default, where a large
    image's output has room), quantized as the submission stores it (`quantize=False`: the blended float32
    values instead).
    """
    finish = to_uint8 if quantize else (lambda rows: rows.float())
    device = torch.device(device) if device is not None else lr.device
    out_device = torch.device(out_device)
    height, width = lr.shape[-2:]
    ys, xs = layout(height, tile, overlap), layout(width, tile, overlap)
    if len(ys.starts) == len(xs.starts) == 1:
        return finish(forward(lr[None].to(device).float() / 255))[0].to(out_device)

    windows = [(i, j) for i in range(len(ys.starts)) for j in range(len(xs.starts))]  # row-major
    result = strip = None
    strip_top = 0  # `strip` holds the float rows from here on that may still get contributions
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        tiles = torch.stack(
            [lr[:, ys.starts[i] : ys.starts[i] + ys.window, xs.starts[j] : xs.starts[j] + xs.window] for i, j in batch]
        )
        outs = forward(tiles.to(device).float() / 255).float().to(out_device)
        if result is None:  # the first batch tells the scale
            scale = outs.shape[-1] // xs.window
            wy, wx = (axis_weights(a, n, scale, overlap * RAMP).to(out_device) for a, n in ((ys, height), (xs, width)))
            result = torch.empty(
                3, height * scale, width * scale, dtype=torch.uint8 if quantize else torch.float32, device=out_device
            )
            strip = torch.zeros(3, 0, width * scale, device=out_device)
        for (i, j), out in zip(batch, outs):
            top, left = ys.starts[i] * scale, xs.starts[j] * scale
            bottom = top + out.shape[-2]
            if bottom > strip_top + strip.shape[1]:
                more = torch.zeros(3, bottom - strip_top - strip.shape[1], width * scale, device=out_device)
                strip = torch.cat([strip, more], 1)
            weight = wy[i][:, None] * wx[j][None, :]
            strip[:, top - strip_top : bottom - strip_top, left : left + out.shape[-1]] += out * weight
        # Rows above the next window's top get no more contributions: quantize them and let them go.
        rest = first + len(batch) < len(windows)
        done = ys.starts[windows[first + len(batch)][0]] * scale if rest else strip_top + strip.shape[1]
        if done > strip_top:
            result[:, strip_top:done] = finish(strip[:, : done - strip_top])
            strip, strip_top = strip[:, done - strip_top :].clone(), done
    return result


def needs_tiles(lr: torch.Tensor, tile: int) -> bool:
    """Whether training's evaluation upscales this (...xHxW) image in tiles: an edge over `tile` (0: never)."""
    return bool(tile) and max(lr.shape[-2:]) > tile


def upscale_for_eval(forward: Forward, lr: torch.Tensor, *, tile: int = 0, overlap: int = 0) -> torch.Tensor:
    """One 3xHxW uint8 image upscaled as training validates and submits it, uint8 on the image's device:
    whole, or in tiles of `tile` LR pixels with `overlap` pixels of context (training passes the model's
    `exact_overlap`, so the tiles give the whole image's result up to float rounding) when `needs_tiles`.
    Blended where the image is: the scores and panels are computed there, so the output needs no round trip
    through the host."""
    return upscale_image(forward, lr, tile=tile if needs_tiles(lr, tile) else 0, overlap=overlap, out_device=lr.device)
