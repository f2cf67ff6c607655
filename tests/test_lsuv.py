"Property tests for `dl2.lsuv`: any small stack converges, nothing is left behind, weights stay finite."
import warnings
import torch
from torch import nn
from hypothesis import given, settings, strategies as st
from dl2.lsuv import ConvLayer, lsuv_init

def _no_hooks(model): return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())

@settings(max_examples=15, deadline=None)
@given(widths=st.lists(st.integers(1, 12), min_size=1, max_size=6), bias=st.booleans(), scale=st.floats(1e-3, 1e3),
       seed=st.integers(0, 2**16))
def test_mlp_converges(widths, bias, scale, seed):
    torch.manual_seed(seed)
    dims = [5] + widths
    model = nn.Sequential(*[nn.Sequential(nn.Linear(a, b, bias=bias), nn.LeakyReLU(0.1)) for a, b in zip(dims, dims[1:])]).eval()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        report = lsuv_init(model, torch.randn(64, 5) * scale)
    assert len(report) == len(widths)
    for s in report:
        if s.status in ('dead', 'nan'): continue   # e.g. a width-1 layer behind an all-negative one
        assert s.converged and abs(s.std - 1) < 1e-3 and (not bias or abs(s.mean) < 1e-3), report
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not model.training and _no_hooks(model)

def test_error_inside_measured_layer_cleans_up():
    class Fails(nn.Linear):
        def forward(self, x): raise RuntimeError('bad layer')
    model = nn.Sequential(nn.Linear(3, 3), Fails(3, 3))
    try: lsuv_init(model, torch.randn(4, 3))
    except RuntimeError as e: assert 'bad layer' in str(e)
    else: raise AssertionError('the error was swallowed')
    assert model.training and _no_hooks(model)

def test_conv_layer_dead_stays_finite():
    layer = ConvLayer(1, 2, leak=None, sub=0.)
    with torch.no_grad(): layer.conv.weight.zero_(); layer.conv.bias.fill_(-1.)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        report = lsuv_init(layer, torch.randn(2, 1, 8, 8), ortho=False)
    assert report[0].status == 'dead' and any('dead' in str(w.message) or 'std 0' in str(w.message) for w in ws)
    assert torch.isfinite(layer.weight).all() and layer.bias == 0.
