"""smooth_losses (debiased EMA) and plot_losses (PIL chart)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from lora_lab.lora_core.files.loss_plot import RAW, SMOOTH, nice_ticks, plot_losses, smooth_losses

NAN = float("nan")


# ---- smoothing ----------------------------------------------------------------------------------------

def test_smooth_empty_and_constant():
    assert smooth_losses([]) == []
    assert smooth_losses([0.7] * 5) == pytest.approx([0.7] * 5)  # debiased: no pull toward 0


def test_smooth_debiased_ema_values():
    # beta 0.5: ema1 = 0.5 -> /0.5 = 1; ema2 = 0.25 -> /0.75 = 1/3
    assert smooth_losses([1.0, 0.0], beta=0.5) == pytest.approx([1.0, 1 / 3])
    assert smooth_losses([3.0, 1.0, 2.0], beta=0.0) == [3.0, 1.0, 2.0]
    smoothed = smooth_losses([1.0] * 10 + [0.0] * 10, beta=0.9)
    assert len(smoothed) == 20 and smoothed[9] == pytest.approx(1.0)
    assert smoothed[10] == pytest.approx(0.9 * (1 - 0.9**10) / (1 - 0.9**11))


def test_smooth_skips_non_finite():
    out = smooth_losses([NAN, 2.0, float("inf"), 4.0], beta=0.5)
    assert math.isnan(out[0])
    assert out[1:] == pytest.approx([2.0, 2.0, (0.5 * 1.0 + 0.5 * 4.0) / 0.75])


@pytest.mark.parametrize("beta", [1.0, -0.1, 2.0])
def test_smooth_rejects_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        smooth_losses([1.0], beta=beta)


# ---- ticks ----------------------------------------------------------------------------------------------

def test_nice_ticks_are_round_and_inside():
    assert nice_ticks(0.0123, 0.0987, 6) == pytest.approx([0.02, 0.04, 0.06, 0.08])
    assert nice_ticks(1, 10000, 8, integer=True) == [2000, 4000, 6000, 8000, 10000]
    assert nice_ticks(1, 3, 8, integer=True) == [1, 2, 3]  # never fractional steps
    assert nice_ticks(-1.0, 1.0, 5) == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0])


# ---- plotting -------------------------------------------------------------------------------------------

def color_mask(image: Image.Image, color) -> np.ndarray:
    return np.all(np.asarray(image) == np.array(color, np.uint8), axis=2)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 10_000])
def test_plot_sizes_and_mode(n):
    losses = [0.1 + 0.05 * math.sin(i) for i in range(n)]
    image = plot_losses(losses, width=640, height=320, title=f"{n} steps")
    assert image.mode == "RGB" and image.size == (640, 320)
    assert color_mask(image, SMOOTH).any() == (n > 0)


def test_plot_draws_both_lines_and_decreasing_curve_goes_down():
    rng = np.random.default_rng(0)
    losses = list(0.5 * np.exp(-np.arange(2000) / 500) + 0.05 + 0.05 * rng.random(2000))
    image = plot_losses(losses)
    raw, smooth = color_mask(image, RAW), color_mask(image, SMOOTH)
    assert raw.sum() > 1000 and smooth.sum() > 500
    w = image.width
    left_rows = np.nonzero(smooth[:, 80: w // 4])[0]
    right_rows = np.nonzero(smooth[:, w // 2: 3 * w // 4])[0]  # the legend sits further right
    assert left_rows.mean() < right_rows.mean() - 100  # high loss early = near the top


def test_plot_leaves_a_gap_at_nan_steps():
    losses = [0.3 - 0.001 * i for i in range(100)]
    losses[40:61] = [NAN] * 21
    image = plot_losses(losses)
    line = color_mask(image, RAW) | color_mask(image, SMOOTH)
    x_gap = image.width // 2  # step ~47 of 100 at the default layout
    assert not line[:, x_gap - 15: x_gap + 15].any()
    assert line[:, 100:200].any() and line[:, 560:700].any()


def test_plot_all_nan_and_inf_has_no_curve():
    image = plot_losses([NAN, float("inf"), NAN])
    assert not color_mask(image, SMOOTH).any() and not color_mask(image, RAW).any()


def test_plot_title_is_drawn():
    with_title = np.asarray(plot_losses([0.2, 0.1], title="LoRA Lab loss"))
    without = np.asarray(plot_losses([0.2, 0.1]))
    assert (with_title[:18] != without[:18]).any()


def test_plot_extreme_values_do_not_crash():
    for losses in ([1e-9, 2e-9], [1e6, 1e6], [-1.0, 1.0], [5.0] * 3):
        assert plot_losses(losses).size == (768, 384)


def test_plot_rejects_tiny_canvas():
    with pytest.raises(ValueError, match="too small"):
        plot_losses([1.0], width=50, height=40)
