"Property and device tests of `RunningBatchNorm` (the lesson's code) and `FastRunningBatchNorm` (its fast routes) beyond the notebooks'."
import copy, sys, warnings
import pytest, torch
from torch import nn
from hypothesis import given, settings, strategies as st
from dl2.batchnorm import RunningBatchNorm, Lesson11RunningBatchNorm, conv_rbn
from dl2.fast.batchnorm import FastRunningBatchNorm, fast_batchnorm, running_bn_kernel, running_bn_torch
from dl2.fast.kernels import load_cpp

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

def fast(m, route=None):
    "A `FastRunningBatchNorm` with the parameters and state of `m`, stepping by `route` (default: the fastest)."
    f = fast_batchnorm(copy.deepcopy(m))
    f.route = route
    return f

def random_params(m):
    with torch.no_grad(): m.mults.uniform_(0.5, 2); m.adds.normal_()
    return m

def float32_tolerance(ref, x):
    "The relative error float32 allows in a step of `ref` on `x`: 1e-4, more for a channel whose values sit far from their mean\
 compared with its spread (`x*factor + offset` then cancels: at mean 30 and spread 0.02, float32 keeps about 4 digits)."
    dims = [d for d in range(x.ndim) if d != 1]
    spread = (ref.vars.clamp_min(ref.var_floor(ref.batch)) + ref.eps).sqrt()
    cond = (x.double().abs().amax(dims) / spread).max().item()
    return max(1e-4, 16 * torch.finfo(torch.float32).eps * cond)

def needs_kernel():
    if running_bn_kernel() is None: pytest.skip('no C++ compiler with OpenMP: the RunningBatchNorm kernel could not be built')

@settings(max_examples=15, deadline=None)
@given(bss=st.lists(st.integers(2, 9), min_size=1, max_size=20), hw=st.sampled_from([1, 2, 5]),
       mom=st.floats(0.01, 0.5), scale=st.floats(0.05, 5.), seed=st.integers(0, 1000), route=st.sampled_from(['lesson', 'torch']))
def test_matches_lesson_11(bss, hw, mom, scale, seed, route):
    "Any batch-size sequence, spatial size and momentum: dl2's lesson class and the fast layer's PyTorch route match lesson 11 (float64)."
    torch.manual_seed(seed)
    ours, ref = random_params(RunningBatchNorm(3, mom=mom).double()), Lesson11RunningBatchNorm(3, mom=mom).double()
    if route != 'lesson': ours = fast(ours, route)
    with torch.no_grad(): ref.mults.copy_(ours.mults.view(3, 1, 1)); ref.adds.copy_(ours.adds.view(3, 1, 1))
    for bs in bss:
        x, g = torch.randn(bs, 3, hw, hw, dtype=torch.float64) * scale + 1, torch.randn(bs, 3, hw, hw, dtype=torch.float64)
        for a, b in zip(_step(ours, x, g), _step(ref, x, g)): torch.testing.assert_close(a, b.view_as(a), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(ours.sums, ref.sums.flatten()); torch.testing.assert_close(ours.count, ref.count)

@settings(max_examples=12, deadline=None)
@given(bss=st.lists(st.integers(1, 9), min_size=1, max_size=25), hw=st.sampled_from([1, 3]), nd=st.sampled_from([2, 3, 4]),
       channels_last=st.booleans(), mom=st.floats(0.01, 0.5), loc=st.sampled_from([0., 1., 30.]), seed=st.integers(0, 1000),
       route=st.sampled_from(['torch', 'cpp']))
def test_fast_matches_lesson(bss, hw, nd, channels_last, mom, loc, seed, route):
    "Each CPU route of the fast layer in float32 against the lesson's class in float64: every step's output and gradients (batch sizes\
 from 1, ranks 2 to 4, channels-last; a channel far under the variance floor, one far over it), then the statistics, counters and an\
 eval output."
    if route == 'cpp': needs_kernel()
    torch.manual_seed(seed)
    lesson = random_params(RunningBatchNorm(3, mom=mom))
    ours, ref = fast(lesson, route), copy.deepcopy(lesson).double()
    for bs in bss:
        shape = (bs, 3) + (hw,) * (nd - 2)
        x, g = torch.randn(shape) * torch.tensor([0.02, 1, 3]).view(1, 3, *[1] * (nd - 2)) + loc, torch.randn(shape)
        if channels_last and nd == 4: x, g = x.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last)
        for a, b in zip(_step(ours, x, g), _step(ref, x.double(), g.double())):
            tol = float32_tolerance(ref, x)
            torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * max(1., b.abs().max().item()))
    for k in ('means', 'vars', 'count'): torch.testing.assert_close(getattr(ours, k).double(), getattr(ref, k), rtol=1e-4, atol=1e-4 * max(1, loc))
    assert ours.batch == ref.batch == sum(bss)
    ours.eval(); ref.eval()
    tol = float32_tolerance(ref, x)
    torch.testing.assert_close(ours(x).double(), ref(x.double()), rtol=tol, atol=tol * max(1, loc))

def test_backward_paths_agree():
    "The PyTorch route's fast backward (after 20 samples) and its general one (used while the clamp may apply) give the same gradients."
    torch.manual_seed(0)
    x, g = torch.randn(6, 4, 5, 5, dtype=torch.float64), torch.randn(6, 4, 5, 5, dtype=torch.float64)
    w, b = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    means, vars, eps = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5, torch.tensor(1e-5, dtype=torch.float64)
    apply = lambda xi, wi, bi, min_var: running_bn_torch(xi, wi, bi, means.clone(), vars.clone(), eps, 0.7, min_var)
    grads = []
    for min_var in (1e-12, 0.):  # a positive floor takes the general path; nothing is clamped at 1e-12
        xi, wi, bi = [t.clone().requires_grad_() for t in (x, w, b)]
        apply(xi, wi, bi, min_var).backward(g)
        grads.append([xi.grad, wi.grad, bi.grad])
    for a, b in zip(*grads): torch.testing.assert_close(a, b)
    small = [t.clone().requires_grad_() for t in (x[:2, :, :2, :2], w, b)]
    for min_var in (0., 0.3):  # 0.3 clamps some channels of this small batch
        assert torch.autograd.gradcheck(lambda xi, wi, bi: apply(xi, wi, bi, min_var), small)

both = pytest.mark.parametrize('cls', [RunningBatchNorm, FastRunningBatchNorm])

@both
def test_no_grad_training_updates_stats(cls):
    "Training mode under `no_grad` (as LSUV runs it) still updates the statistics."
    m = cls(3)
    with torch.no_grad(): m(torch.randn(32, 3, 4, 4) + 5)
    assert (m.means > 4).all() and m.batch == 32

@both
def test_channels_last(cls):
    "A channels-last input gives the same output and gradient as a contiguous one."
    torch.manual_seed(0)
    x, g = torch.randn(4, 8, 6, 6), torch.randn(4, 8, 6, 6)
    outs = [_step(cls(8), xi, g) for xi in (x, x.to(memory_format=torch.channels_last))]
    for a, b in zip(*outs): torch.testing.assert_close(a, b)

@both
def test_integer_input(cls):
    "An integer input gets a clear error, in training and in eval (eval returned integers once)."
    m = cls(3)
    for mode in (True, False):
        with pytest.raises(TypeError, match=f'{cls.__name__}: expected a floating-point input, got torch.int64'): m.train(mode)(torch.ones(2, 3, 4, dtype=torch.long))

@both
def test_no_host_reads(cls, no_host_reads):
    "Training steps, backward passes and eval read nothing back from the tensors (the fast layer: after its first step, which reads its counters)."
    m, x = cls(3), torch.randn(2, 3, 4, 4)
    m(x)
    with no_host_reads():
        for bs in (1, 8, 30):   # across the end of the variance floor, at 20 samples
            m(torch.randn(bs, 3, 4, 4, requires_grad=True)).sum().backward()
        m.eval()(x)

@pytest.mark.slow
def test_compiled_model_trains_as_eager():
    "A CNN of `RunningBatchNorm`s compiled by Inductor trains as the eager one, batch sizes changing (issue 24: a recursion error on the\
 second compiled step); the fast layers too, with eager steps in between, their counters kept right."
    torch.manual_seed(0)
    eager = nn.Sequential(conv_rbn(1, 4), conv_rbn(4, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    lesson, quick = copy.deepcopy(eager), fast_batchnorm(copy.deepcopy(eager))
    compiled = [torch.compile(lesson), torch.compile(quick)]
    for i, bs in enumerate([8, 8, 3, 5]):
        x = torch.randn(bs, 1, 12, 12)
        ref = eager(x)
        ref.sum().backward()
        for model, step in zip((lesson, quick), compiled):
            y = (model if i == 2 else step)(x)   # the third step eager
            y.sum().backward()
            torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    for model in (lesson, quick):
        for (k, a), b in zip(eager.state_dict().items(), model.state_dict().values()): torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)
        for a, b in zip(eager.parameters(), model.parameters()): torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4)

@settings(max_examples=15, deadline=None)
@given(bss=st.lists(st.integers(2, 9), min_size=1, max_size=25), hw=st.sampled_from([1, 2, 5]), nd=st.sampled_from([2, 3, 4]),
       channels_last=st.booleans(), mom=st.floats(0.01, 0.5), scale=st.floats(0.05, 5.), seed=st.integers(0, 1000))
def test_kernel_matches_lesson_11(bss, hw, nd, channels_last, mom, scale, seed):
    "The float32 C++ kernel against lesson 11 in float64, for any batch sizes (lesson 11 divides by zero at 1), ranks and layouts."
    needs_kernel()
    torch.manual_seed(seed)
    ours, ref = fast(random_params(RunningBatchNorm(3, mom=mom)), 'cpp'), Lesson11RunningBatchNorm(3, mom=mom).double()
    with torch.no_grad(): ref.mults.copy_(ours.mults.view(3, 1, 1)); ref.adds.copy_(ours.adds.view(3, 1, 1))
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

def _trains_as_lesson():
    "A fast layer (what runs where the kernel cannot be built) gives the lesson's training step."
    torch.manual_seed(0)
    x, g = torch.randn(4, 8, 6, 6), torch.randn(4, 8, 6, 6)
    outs = [_step(cls(8), x, g) for cls in (FastRunningBatchNorm, RunningBatchNorm)]
    for a, b in zip(*outs): torch.testing.assert_close(a, b)

def test_kernel_build_failure_falls_back(no_compiler):
    "No compiler: one warning naming the cause, then the PyTorch route gives the lesson's training step."
    with pytest.warns(UserWarning, match="could not build the C[+][+] kernel 'running_bn'.*c[+][+] not found"):
        assert running_bn_kernel() is None
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # warned once only
        _trains_as_lesson()

def test_windows_builds_nothing(monkeypatch, tmp_path):
    "On Windows no build is tried: one warning, and training goes on by the PyTorch route."
    monkeypatch.setattr(sys, 'platform', 'win32')
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    load_cpp.cache_clear()
    try:
        with pytest.warns(UserWarning, match="could not build the C[+][+] kernel 'running_bn'.*not on Windows"): assert running_bn_kernel() is None
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            _trains_as_lesson()
    finally: load_cpp.cache_clear()
    assert not any(tmp_path.iterdir())   # nothing built, nothing remembered

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

@cuda
@both
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_cuda_autocast(dtype, cls):
    "Under CUDA autocast the statistics are fp32 and match those of the half-precision activations."
    torch.manual_seed(0)
    conv, m = nn.Conv2d(3, 8, 3, bias=False).cuda(), cls(8).cuda()
    with torch.autocast('cuda', dtype=dtype):
        act = conv(torch.randn(16, 3, 12, 12, device='cuda') * 20)
        y = m(act)
    assert act.dtype == dtype and y.dtype == dtype and m.means.dtype == torch.float32
    y.float().sum().backward()
    assert conv.weight.grad.isfinite().all()
    v, mu = torch.var_mean(act.double(), (0, 2, 3), correction=0)
    torch.testing.assert_close(m.means, mu.float(), rtol=1e-3, atol=1e-3); torch.testing.assert_close(m.vars, v.float(), rtol=1e-3, atol=1e-3)

@cuda
@both
def test_cuda_matches_cpu(cls):
    "Same statistics, outputs and gradients on the GPU as on the CPU, and the state moves between them."
    torch.manual_seed(0)
    cpu = cls(5); gpu = copy.deepcopy(cpu).cuda()
    for bs in [2, 3, 16, 64]:
        x, g = torch.randn(bs, 5, 7, 7) + 2, torch.randn(bs, 5, 7, 7)
        for a, b in zip(_step(cpu, x, g), _step(gpu, x.cuda(), g.cuda())): torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-4)
    fresh = cls(5); fresh.load_state_dict(gpu.state_dict())
    torch.testing.assert_close(fresh.eval()(x), cpu.eval()(x))
