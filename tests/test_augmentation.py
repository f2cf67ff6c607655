"`dl2.augmentation` where a notebook can't show it well: worker processes, and properties over many random inputs."
import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader
from dl2.data_block import ImageList, make_rgb, to_byte_tensor
from dl2.augmentation import *

@pytest.mark.parametrize('method', ['fork', pytest.param('spawn', marks=pytest.mark.slow)])   # spawn: each worker imports dl2
def test_item_augmentation_in_workers(tmp_path, method):
    "PIL transforms survive pickling (spawn), and each worker draws its own crops: workers' random states are seeded apart."
    fn = tmp_path/'a.jpg'
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(fn)
    il = ImageList([fn] * 8, tmp_path, tfms=[make_rgb, RandomResizedCrop(16, scale=(0.1, 0.5)), PilRandomFlip(), to_byte_tensor])
    dl = DataLoader(il, batch_size=1, num_workers=2, multiprocessing_context=method)
    xs = [b[0] for b in dl]  # batches alternate between the workers: 0, 1, 0, 1, ...
    assert all(x.shape == (3, 16, 16) for x in xs)
    assert not torch.equal(xs[0], xs[1])

@settings(max_examples=200, deadline=None)
@given(st.floats(-0.249, 0.249), st.floats(-0.249, 0.249))
def test_tilts_below_a_quarter_never_fold(ud, lr):
    "Below 1/4, a tilt maps the output square onto the tilted corners without folding (positive depth everywhere)."
    t = tilt_mats(torch.tensor([ud]), torch.tensor([lr])).double()
    corners = torch.cat([tilt_corners(torch.tensor(0.), torch.tensor(0.)).double() * 2 - 1, torch.ones(4, 1, dtype=torch.float64)], 1)
    p = corners @ t[0].T
    assert (p[:, 2] > 0).all()
    target = tilt_corners(torch.tensor(ud, dtype=torch.float64), torch.tensor(lr, dtype=torch.float64)) * 2 - 1
    assert torch.allclose(p[:, :2] / p[:, 2:], target, atol=1e-4)

@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2000), st.integers(1, 2000), st.floats(0.01, 1), st.floats(0.01, 1))
def test_random_resized_crop_box_inside(w, h, lo, hi):
    "Whatever the image shape and scale range, the box is inside the image and not empty."
    l, t, r, b = RandomResizedCrop(8, scale=(min(lo, hi), max(lo, hi))).get_corners(w, h, w, h)
    assert -1e-9 <= l < r <= w + 1e-9 and -1e-9 <= t < b <= h + 1e-9

@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-0.3, 0.3), min_size=8, max_size=8))
def test_find_coeffs_maps_corners(jitter):
    "For any quadrilateral near a rectangle, the coefficients take the output corners to it."
    dst = [(0, 0), (0, 30), (40, 30), (40, 0)]
    src = [(x + 40 * dx, y + 30 * dy) for (x, y), dx, dy in zip(dst, jitter[::2], jitter[1::2])]
    a, b, c, d, e, f, g, h = find_coeffs(src, dst)
    for (u, v), (x, y) in zip(src, dst):
        den = g * x + h * y + 1
        assert abs((a * x + b * y + c) / den - u) < 1e-6 and abs((d * x + e * y + f) / den - v) < 1e-6
