"Property and device tests of `RunningBatchNorm` (lesson code and fast routes) beyond the notebooks'."
import copy, importlib.util
from pathlib import Path
import pytest, torch
from torch import nn
from hypothesis import given, settings, strategies as st
from dl2.batchnorm import RunningBatchNorm
from dl2.fast.batchnorm import _RunningBNFunction, running_bn_kernel

_spec = importlib.util.spec_from_file_location('bench_batchnorm', Path(__file__).parent.parent/'benchmarks'/'bench_batchnorm.py')
_bench = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(_bench)
RunningBatchNorm10, LessonRunningBatchNorm11 = _bench.lesson_classes()

@pytest.fixture(autouse=True)
def one_thread():
    "These tensors are tiny: on a busy CPU, a second thread only adds waiting (a 50x slowdown measured)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def _step(m, x, g):
    "Output, input gradient and parameter gradients of one training step of `m`."
    x = x.clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    y = m(x); y.backward(g)
    return y.detach(), x.grad, m.mults.grad.flatten(), m.adds.grad.flatten()

@settings(max_examples=15, deadline=None)
@given(bss=st.lists(st.integers(2, 9), min_size=1, max_size=20), hw=st.sampled_from([1, 2, 5]),
       mom=st.floats(0.01, 0.5), scale=st.floats(0.05, 5.), seed=st.integers(0, 1000), kernel=st.sampled_from([False, 'torch']))
def test_matches_lesson_11(bss, hw, mom, scale, seed, kernel):
    "Any batch-size sequence, spatial size and momentum: dl2's lesson code and its PyTorch route match lesson 11 (float64)."
    torch.manual_seed(seed)
    ours, ref = RunningBatchNorm(3, mom=mom, kernel=kernel).double(), LessonRunningBatchNorm11(3, mom=mom).double()
    with torch.no_grad(): ours.mults.uniform_(0.5, 2); ours.adds.normal_(); ref.mults.copy_(ours.mults.view(3, 1, 1)); ref.adds.copy_(ours.adds.view(3, 1, 1))
    for bs in bss:
        x, g = torch.randn(bs, 3, hw, hw, dtype=torch.float64) * scale + 1, torch.randn(bs, 3, hw, hw, dtype=torch.float64)
        for a, b in zip(_step(ours, x, g), _step(ref, x, g)): torch.testing.assert_close(a, b.view_as(a), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(ours.sums, ref.sums.flatten()); torch.testing.assert_close(ours.count, ref.count)

def test_backward_paths_agree():
    "The fast backward (after 20 samples) and the general one (used while the clamp may apply) give the same gradients."
    torch.manual_seed(0)
    x, g = torch.randn(6, 4, 5, 5, dtype=torch.float64), torch.randn(6, 4, 5, 5, dtype=torch.float64)
    w, b = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    means, vars, eps = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5, torch.tensor(1e-5, dtype=torch.float64)
    apply = lambda xi, wi, bi, min_var: _RunningBNFunction.apply(xi, wi, bi, means, vars, eps, 0.7, min_var)[0]
    grads = []
    for min_var in (1e-12, 0.):  # a positive floor takes the general path; nothing is clamped at 1e-12
        xi, wi, bi = [t.clone().requires_grad_() for t in (x, w, b)]
        apply(xi, wi, bi, min_var).backward(g)
        grads.append([xi.grad, wi.grad, bi.grad])
    for a, b in zip(*grads): torch.testing.assert_close(a, b)
    small = [t.clone().requires_grad_() for t in (x[:2, :, :2, :2], w, b)]
    for min_var in (0., 0.3):  # 0.3 clamps some channels of this small batch
        assert torch.autograd.gradcheck(lambda xi, wi, bi: apply(xi, wi, bi, min_var), small)

def test_no_grad_training_updates_stats():
    "Training mode under `no_grad` (as LSUV runs it) still updates the statistics."
    m = RunningBatchNorm(3)
    with torch.no_grad(): m(torch.randn(32, 3, 4, 4) + 5)
    assert (m.means > 4).all() and m.batch == 32

def test_channels_last():
    "A channels-last input gives the same output and gradient as a contiguous one."
    torch.manual_seed(0)
    x, g = torch.randn(4, 8, 6, 6), torch.randn(4, 8, 6, 6)
    outs = [_step(RunningBatchNorm(8), xi, g) for xi in (x, x.to(memory_format=torch.channels_last))]
    for a, b in zip(*outs): torch.testing.assert_close(a, b)

def needs_kernel():
    if running_bn_kernel() is None: pytest.skip('no C++ compiler with OpenMP: the RunningBatchNorm kernel could not be built')

@settings(max_examples=15, deadline=None)
@given(bss=st.lists(st.integers(2, 9), min_size=1, max_size=25), hw=st.sampled_from([1, 2, 5]), nd=st.sampled_from([2, 3, 4]),
       channels_last=st.booleans(), mom=st.floats(0.01, 0.5), scale=st.floats(0.05, 5.), seed=st.integers(0, 1000))
def test_kernel_matches_lesson_11(bss, hw, nd, channels_last, mom, scale, seed):
    "The float32 C++ kernel against lesson 11 in float64, for any batch sizes (lesson 11 divides by zero at 1), ranks and layouts."
    needs_kernel()
    torch.manual_seed(seed)
    ours, ref = RunningBatchNorm(3, mom=mom), LessonRunningBatchNorm11(3, mom=mom).double()
    with torch.no_grad(): ours.mults.uniform_(0.5, 2); ours.adds.normal_(); ref.mults.copy_(ours.mults.view(3, 1, 1)); ref.adds.copy_(ours.adds.view(3, 1, 1))
    for bs in bss:
        shape = (bs, 3) + (hw,) * (nd - 2)
        x, g = torch.randn(shape, dtype=torch.float64) * scale + 1, torch.randn(shape, dtype=torch.float64)
        xf, gf = x.float(), g.float()
        if channels_last and nd == 4: xf, gf = xf.contiguous(memory_format=torch.channels_last), gf.contiguous(memory_format=torch.channels_last)
        # lesson 11 takes 4-d input: give the reference the same values with trailing positions flattened to (hw*hw..., 1)
        x4, g4 = x.reshape(bs, 3, -1, 1), g.reshape(bs, 3, -1, 1)
        for a, b in zip(_step(ours, xf, gf), _step(ref, x4, g4)):
            b = b.view_as(a)
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * max(1., b.abs().max().item()))
    torch.testing.assert_close(ours.sums.double(), ref.sums.flatten(), rtol=1e-4, atol=1e-4)

def test_kernel_build_failure_falls_back(no_compiler):
    "No compiler: one warning naming the cause, then the PyTorch path gives the same training step."
    with pytest.warns(UserWarning, match="could not build the C[+][+] kernel 'running_bn'.*c[+][+] not found"):
        assert running_bn_kernel() is None
    torch.manual_seed(0)
    x, g = torch.randn(4, 8, 6, 6), torch.randn(4, 8, 6, 6)
    outs = [_step(RunningBatchNorm(8, kernel=k), x, g) for k in (True, False)]
    for a, b in zip(*outs): torch.testing.assert_close(a, b)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

@cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_cuda_autocast(dtype):
    "Under CUDA autocast the statistics are fp32 and match those of the half-precision activations."
    torch.manual_seed(0)
    conv, m = nn.Conv2d(3, 8, 3, bias=False).cuda(), RunningBatchNorm(8).cuda()
    with torch.autocast('cuda', dtype=dtype):
        act = conv(torch.randn(16, 3, 12, 12, device='cuda') * 20)
        y = m(act)
    assert act.dtype == dtype and y.dtype == dtype and m.means.dtype == torch.float32
    y.float().sum().backward()
    assert conv.weight.grad.isfinite().all()
    v, mu = torch.var_mean(act.double(), (0, 2, 3), correction=0)
    torch.testing.assert_close(m.means, mu.float(), rtol=1e-3, atol=1e-3); torch.testing.assert_close(m.vars, v.float(), rtol=1e-3, atol=1e-3)

@cuda
def test_cuda_matches_cpu():
    "Same statistics, outputs and gradients on the GPU as on the CPU, and the state moves between them."
    torch.manual_seed(0)
    cpu = RunningBatchNorm(5); gpu = copy.deepcopy(cpu).cuda()
    for bs in [2, 3, 16, 64]:
        x, g = torch.randn(bs, 5, 7, 7) + 2, torch.randn(bs, 5, 7, 7)
        for a, b in zip(_step(cpu, x, g), _step(gpu, x.cuda(), g.cuda())): torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-4)
    fresh = RunningBatchNorm(5); fresh.load_state_dict(gpu.state_dict())
    torch.testing.assert_close(fresh.eval()(x), cpu.eval()(x))
