"""`dl2.fast.triton_kernels` against dl2's PyTorch code: outputs, gradients, statistics and LAMB steps; no host sync; sm_90 builds.

    python -m pytest -q tests/test_triton.py                     # no GPU: conftest.py turns Triton's CPU interpreter on
    TRITON_INTERPRET=1 python -m pytest -q tests/test_triton.py  # the interpreter, even where there is a GPU

Triton reads TRITON_INTERPRET when it is first imported: without a GPU, `conftest.py` switches the interpreter on before any
test module is collected. With a GPU and no variable, the same tests run the compiled kernels on CUDA tensors.
"""
import copy, importlib, os, subprocess, sys, threading
from pathlib import Path
import pytest, torch
from torch import nn

pytest.importorskip('triton')
tk = importlib.import_module('dl2.fast.triton_kernels')
from dl2.fast.kernels import triton_interpreting
DEVICE = 'cpu' if triton_interpreting() else 'cuda'

# ---- dl2's PyTorch reference code: one helper per kernel, the only place that names dl2's modules
from dl2.batchnorm import RunningBatchNorm
from dl2.fast.batchnorm import FastRunningBatchNorm, fast_batchnorm, running_bn_step, running_bn_torch
from dl2.optimizers import StatefulOptimizer, adam_stats, lamb_step, lamb
from dl2.fast.optimizers import fused

def bn_reference(x, mults, adds, means, vars, eps, w2, min_var, g):
    "Output, updated statistics and gradients of dl2's PyTorch training step of `RunningBatchNorm`, in float64."
    x, mults, adds = [t.detach().cpu().double().requires_grad_() for t in (x, mults, adds)]
    means, vars = means.cpu().double(), vars.cpu().double()   # copies, updated in place
    y = running_bn_torch(x, mults, adds, means, vars, torch.tensor(eps, dtype=torch.float64), w2, min_var)
    y.backward(g.cpu().double())
    return dict(y=y, means=means, vars=vars, dx=x.grad, dmults=mults.grad, dadds=adds.grad)

def triton_layer(nf, **kwargs):
    "A `FastRunningBatchNorm` stepping by its 'triton' route, on DEVICE."
    m = FastRunningBatchNorm(nf, **kwargs).to(DEVICE)
    m.route = 'triton'
    return m

def rbn_pair(nf, mom):
    "dl2's `RunningBatchNorm`: the lesson's class in float64 (the reference), and the fast layer in float32 by its 'triton' route."
    return RunningBatchNorm(nf, mom=mom).double(), triton_layer(nf, mom=mom)

def lamb_reference(params, **hyper):
    "dl2's LAMB as the lesson writes it (per tensor, PyTorch operations) over `params`."
    return StatefulOptimizer(params, [lamb_step], stats=adam_stats(), **hyper)

# ---- tolerances, as a fraction of the reference's largest magnitude
# float32 arithmetic and accumulation: a few 1e-7 relative, more where a mean is large against the spread (1e-5 allows
# a mean 50x the spread). Values stored in float16 are off by up to half a last place, 2^-11 relative; in bfloat16 by
# up to a whole one, 2^-7, as the interpreter truncates float32 to bfloat16 (a GPU rounds to nearest).
TOL = {torch.float32: 1e-5, torch.bfloat16: 2**-7 + 1e-5, torch.float16: 2**-11 + 1e-5}

def assert_near(actual, expected, tol, what=''):
    "Every value of `actual` within `tol` times the largest magnitude of `expected` (at least 1) of it."
    expected = expected.detach().double().cpu()
    err, scale = (actual.detach().double().cpu() - expected).abs().max().item(), max(1., expected.abs().max().item())
    assert err <= tol * scale, f'{what}: largest difference {err:.2e} > {tol:.1e} x {scale:.2e}'

def rbn_case(shape, dtype=torch.float32, channels_last=False, mean=0., min_var=0., w2=0.3, seed=0):
    "Inputs of one training step: x (with `mean`), upstream gradient, parameters and running statistics."
    torch.manual_seed(seed)
    C = shape[1]
    x, g = (torch.randn(shape) * (torch.rand(C) + 0.2).view(1, C, *[1] * (len(shape) - 2)) + mean).to(dtype), torch.randn(shape).to(dtype)
    if channels_last: x, g = x.to(memory_format=torch.channels_last), g.to(memory_format=torch.channels_last)
    return dict(x=x, g=g, mults=torch.rand(C) + 0.5, adds=torch.randn(C), means=torch.randn(C) * 0.1 + mean,
                vars=torch.rand(C) * 0.2 + 0.05, eps=1e-5, w2=w2, min_var=min_var)

def triton_step(c):
    "`running_bn_triton` on case `c` (on DEVICE): output, updated statistics and gradients."
    x, mults, adds = [t.to(DEVICE).requires_grad_() for t in (c['x'], c['mults'], c['adds'])]
    means, vars = c['means'].to(DEVICE, copy=True), c['vars'].to(DEVICE, copy=True)   # updated in place
    y = tk.running_bn_triton(x, mults, adds, means, vars, torch.tensor(c['eps'], device=DEVICE), c['w2'], c['min_var'])
    y.backward(c['g'].to(DEVICE))
    return dict(y=y, means=means, vars=vars, dx=x.grad, dmults=mults.grad, dadds=adds.grad)

def check_rbn(c):
    "`running_bn_triton` matches the reference on case `c`; outputs and dx keep the input's dtype and layout."
    ours, ref = triton_step(c), bn_reference(**c)
    x = c['x']
    for k in ('y', 'dx'):
        assert ours[k].dtype == x.dtype and ours[k].stride() == x.stride(), f'{k}: {ours[k].dtype} {ours[k].stride()}'
        assert_near(ours[k], ref[k], TOL[x.dtype], k)
    for k in ('means', 'vars', 'dmults', 'dadds'): assert_near(ours[k], ref[k], TOL[torch.float32], k)   # float32, from the same inputs
    return ref

@pytest.mark.parametrize('shape', [(6, 7), (3, 33, 5), (4, 3, 5, 6), (1, 7, 3, 3), (5, 3, 1, 1), (2, 4, 3, 2, 2)],
                         ids=['rank2', 'rank3-33ch', 'rank4', 'batch1', 'spatial1', 'rank5'])
def test_rbn_shapes(shape):
    check_rbn(rbn_case(shape))

@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('channels_last', [False, True])
def test_rbn_half_inputs(dtype, channels_last):
    "Half-precision inputs, float32 statistics and parameters; output and dx in the input's dtype."
    check_rbn(rbn_case((4, 7, 5, 3), dtype, channels_last))

def test_rbn_channels_last_large_mean():
    "A mean 50x the spread: the shifted sums keep the variance; channels-last layout kept."
    check_rbn(rbn_case((4, 33, 3, 5), channels_last=True, mean=20.))

def test_rbn_clamp():
    "`min_var` holds some channels' variance at the floor: their variance gradient stops there."
    c = rbn_case((3, 7, 2, 2), min_var=0.3, w2=0.5)
    floored = check_rbn(c)['vars'] < 0.3
    assert floored.any() and not floored.all()

def test_rbn_many_splits(monkeypatch):
    "Many splits of the partial sums, merged in more than one block of 16; several tiles per split; a partial last tile."
    monkeypatch.setattr(tk, '_TILE', 64)   # tiles of 64 positions: 2 per sample, the second partly outside
    monkeypatch.setattr(tk, '_n_programs', lambda device: 20)   # 20 splits
    check_rbn(rbn_case((25, 1, 10, 10), mean=3.))   # 50 tiles, 2 or 3 per split

def test_rbn_training_steps():
    "The fast layer with its step done by the kernels, over batches of 1 to 9 (the floor applies for 20 samples): the lesson's outputs,\
 gradients and statistics in float64, then its eval output."
    torch.manual_seed(0)
    ref, ours = rbn_pair(5, mom=0.2)
    for bs in [1, 4, 9, 3, 7, 2, 8]:
        x, g = torch.randn(bs, 5, 3, 3) * 2 + 1, torch.randn(bs, 5, 3, 3)
        outs = []
        for m, dt in ((ref, torch.float64), (ours, torch.float32)):
            xi = x.to(DEVICE if m is ours else 'cpu', dt).requires_grad_()
            m.zero_grad(set_to_none=True)
            y = m(xi)
            y.backward(g.to(xi.device, dt))
            outs.append([y, xi.grad, m.mults.grad, m.adds.grad, m.means, m.vars, m.count])
        for name, a, b in zip(['y', 'dx', 'dmults', 'dadds', 'means', 'vars', 'count'], outs[1], outs[0]): assert_near(a, b, 1e-5, f'batch of {bs}: {name}')
    assert ours.batch.item() == ref.batch.item() == 34
    x = torch.randn(4, 5, 3, 3)
    assert_near(ours.eval()(x.to(DEVICE)), ref.eval()(x.double()), 1e-5, 'eval')

def test_rbn_layer_autocast_bf16():
    "After a convolution under autocast in bfloat16, channels-last, batch sizes from 1: the fast layer by its 'triton' route gives the\
 lesson's outputs (to a bfloat16 rounding or two), gradients and statistics."
    torch.manual_seed(1)
    lesson = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), RunningBatchNorm(6)).to(memory_format=torch.channels_last)
    ours = fast_batchnorm(copy.deepcopy(lesson)).to(DEVICE)
    ours[1].route = 'triton'
    for bs in [2, 1, 8, 5]:
        x = (torch.randn(bs, 3, 7, 7) * 3).to(memory_format=torch.channels_last)
        ys = []
        for m, dev in ((lesson, 'cpu'), (ours, DEVICE)):
            with torch.autocast(dev, dtype=torch.bfloat16): ys.append(m(x.to(dev)))
            ys[-1].float().square().mean().backward()
        assert ys[1].dtype == torch.bfloat16 and ys[1].is_contiguous(memory_format=torch.channels_last)
        assert_near(ys[1], ys[0], 2 * TOL[torch.bfloat16], f'batch of {bs}: y')
    for (k, a), b in zip(lesson.named_parameters(), ours.parameters()): assert_near(b.grad, a.grad, 2**-6, f'gradient of {k}')
    for k, v in lesson.state_dict().items(): assert_near(ours.state_dict()[k], v, 1e-4, k)

class ThreadSum:
    "A `sync` for `world` threads standing in for processes: each call waits for all of them, then each gets the sum. The threads\
 take turns outside the calls (`turn`), as Triton's interpreter is not thread-safe."
    def __init__(self, world): self.world, self.barrier, self.parts, self.turn = world, threading.Barrier(world), {}, threading.Lock()
    def __call__(self, t):
        self.parts[threading.get_ident()] = t.clone()
        self.turn.release()
        try:
            self.barrier.wait()
            total = sum(self.parts.values())
            self.barrier.wait()
        finally: self.turn.acquire()
        t.copy_(total)

def synced_triton_step(c, world):
    "Case `c`'s batch split over `world` threads standing in for processes, each doing a synchronised 'triton' step of its slice."
    sync, res = ThreadSum(world), [None] * world
    def run(rank):
        with sync.turn:
            try:
                x, g = c['x'].chunk(world)[rank].to(DEVICE).requires_grad_(), c['g'].chunk(world)[rank].to(DEVICE)
                mults, adds = [t.to(DEVICE, copy=True).requires_grad_() for t in (c['mults'], c['adds'])]   # each process's copy
                means, vars = c['means'].to(DEVICE, copy=True), c['vars'].to(DEVICE, copy=True)
                y = running_bn_step(x, mults, adds, means, vars, torch.tensor(c['eps'], device=DEVICE), c['w2'], c['min_var'], 'triton', sync)
                y.backward(g)
                res[rank] = dict(y=y, dx=x.grad, means=means, vars=vars, dmults=mults.grad, dadds=adds.grad)
            except Exception as e: res[rank] = e; sync.barrier.abort()
    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads: t.start()
    for t in threads: t.join()
    for r in res:
        if isinstance(r, Exception) and not isinstance(r, threading.BrokenBarrierError): raise r
    return res

@pytest.mark.parametrize('shape, dtype, channels_last, min_var, world', [
    ((4, 3, 5, 6), torch.float32, False, 0., 2), ((4, 7, 5, 3), torch.float32, True, 0., 2), ((6, 7), torch.float32, False, 0., 3),
    ((6, 7, 2, 2), torch.float32, False, 0.3, 2), ((4, 7, 5, 3), torch.bfloat16, True, 0., 2)],
    ids=['rank4', 'channels-last', 'rank2-world3', 'clamp', 'bf16'])
def test_rbn_synchronised(shape, dtype, channels_last, min_var, world):
    "The step in four parts with sums over threads standing in for processes, each with a slice of the batch: the whole batch's step."
    c = rbn_case(shape, dtype, channels_last, mean=1., min_var=min_var, w2=0.5)
    ref, parts = bn_reference(**c), synced_triton_step(c, world)
    for k in ('y', 'dx'):
        assert all(p[k].dtype == dtype and p[k].stride() == c['x'].chunk(world)[0].stride() for p in parts), k
        assert_near(torch.cat([p[k] for p in parts]), ref[k], TOL[dtype], k)
    for k in ('dmults', 'dadds'): assert_near(sum(p[k] for p in parts), ref[k], TOL[torch.float32], k)   # data parallelism adds them up
    for p in parts:
        for k in ('means', 'vars'): assert_near(p[k], ref[k], TOL[torch.float32], k)

def test_rbn_without_input_grad():
    "When x needs no gradient, the backward still gives the parameters theirs."
    c = rbn_case((2, 3, 4))
    ref = bn_reference(**c)
    mults = c['mults'].to(DEVICE).requires_grad_()
    tk.running_bn_triton(c['x'].to(DEVICE), mults, c['adds'].to(DEVICE), c['means'].to(DEVICE), c['vars'].to(DEVICE),
                         c['eps'], c['w2'], 0.).backward(c['g'].to(DEVICE))
    assert_near(mults.grad, ref['dmults'], 1e-5, 'dmults')

def test_rbn_bad_inputs():
    c = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in rbn_case((2, 3, 4)).items()}
    del c['g']
    with pytest.raises(TypeError, match='float32, bfloat16 or float16'): tk.running_bn_triton(**{**c, 'x': c['x'].double()})
    with pytest.raises(ValueError, match='vars must be a contiguous float32 vector of 3'): tk.running_bn_triton(**{**c, 'vars': c['vars'][:2]})
    with pytest.raises(ValueError, match='non-empty'): tk.running_bn_triton(**{**c, 'x': c['x'][:0]})
    with pytest.raises(ValueError, match='contiguous or 4-d channels-last'): tk.running_bn_triton(**{**c, 'x': c['x'].transpose(0, 2)})

LAMB = dict(lr=0.02, mom=0.9, sqr_mom=0.99, eps=1e-6, wd=0.05)

def test_lamb_steps():
    "Five steps against dl2's LAMB: tensors over several chunks, one that skips a step, one at zero with zero gradients, one unaligned."
    torch.manual_seed(0)
    ps = [torch.randn(4500), torch.randn(3, 4), torch.zeros(7), torch.randn(5, 2), torch.randn(2 * 2048 + 11)]
    ref_ps = [p.clone().requires_grad_() for p in ps]
    ref_ps[4] = ps[4][1:].clone().requires_grad_()
    ref_opt = lamb_reference(ref_ps, **LAMB)
    ps = [p.to(DEVICE) for p in ps]
    ps[4] = ps[4][1:]   # starts 4 bytes into its allocation: the kernels' variant for unaligned tensors
    avgs, sqr_avgs, steps = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps], torch.zeros(len(ps), device=DEVICE)
    for i in range(5):
        active = [j for j in range(len(ps)) if not (i == 2 and j == 1)]
        grads = [torch.zeros(p.shape) if j == 2 else torch.randn(p.shape) for j, p in enumerate(ps)]
        for j, p in enumerate(ref_ps): p.grad = grads[j].clone() if j in active else None
        ref_opt.step()
        steps[active] += 1
        pick = lambda ts: [ts[j] for j in active]
        tk.lamb_triton_(pick(ps), [grads[j].to(DEVICE) for j in active], pick(avgs), pick(sqr_avgs), steps[active], **LAMB)
        for j, (p, r) in enumerate(zip(ps, ref_ps)): assert_near(p, r, 2e-6, f'step {i}, tensor {j}')
    for j, p in enumerate(ref_ps):
        assert_near(avgs[j], ref_opt.state[p]['grad_avg'], 1e-6, f'average {j}')
        assert_near(sqr_avgs[j], ref_opt.state[p]['sqr_avg'], 1e-6, f'squared average {j}')
    assert steps.tolist() == [5, 4, 5, 5, 5] and not ps[2].any()

def test_lamb_trust_ratio_cap():
    "A tiny direction against large weights: the ratio is capped at `max_trust`."
    p, g = torch.full((10,), 100., device=DEVICE), torch.full((10,), 1e-3, device=DEVICE)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    tk.lamb_triton_([p], [g], [m], [v], torch.ones(1, device=DEVICE), lr=0.1, mom=0.9, sqr_mom=0.99, eps=1e-6, wd=0., max_trust=3.)
    # the first debiased Adam direction is g/(|g| + eps): about 1 everywhere; ||p||/||d|| = 100 is capped at 3
    assert_near(p, torch.full((10,), 100 - 0.1 * 3 * 1e-3 / (1e-3 + 1e-6)), 1e-7, 'p')

def test_lamb_bad_inputs():
    p = torch.zeros(3, device=DEVICE)
    args = lambda **kw: {**dict(ps=[p], grads=[p.clone()], grad_avgs=[p.clone()], sqr_avgs=[p.clone()], steps=torch.ones(1, device=DEVICE)), **kw, **LAMB}
    with pytest.raises(ValueError, match='steps must be a 1-d tensor of 1'): tk.lamb_triton_(**args(steps=torch.ones(2, device=DEVICE)))
    with pytest.raises(ValueError, match='tensor 0'): tk.lamb_triton_(**args(grads=[p.double()]))
    with pytest.raises(ValueError, match='1 weights, 0 gradients'): tk.lamb_triton_(**args(grads=[]))

def test_no_host_sync(no_host_reads):
    "Neither training step reads anything back from the device: step counts and `eps` stay there."
    ps = [torch.randn(3000, device=DEVICE), torch.randn(4, 3, device=DEVICE)]
    grads, steps = [torch.randn_like(p) for p in ps], torch.zeros(2, device=DEVICE)
    state = [[torch.zeros_like(p) for p in ps] for _ in range(2)]
    x = torch.randn(2, 3, 4, 4, device=DEVICE, requires_grad=True)
    mults, adds, means, vars = [torch.full((3,), v, device=DEVICE) for v in (1., 0., 0., 1.)]
    mults.requires_grad_()
    eps, g = torch.tensor(1e-5, device=DEVICE), torch.randn_like(x)
    rbn, opt = triton_layer(3), fused(lamb, lamb_route='triton')([p.clone().requires_grad_() for p in ps], lr=0.01)
    for p in opt.param_groups[0]['params']: p.grad = torch.randn_like(p)
    rbn(x.detach())   # the first call reads the module's counters once, after construction
    with no_host_reads(cuda_syncs=True):
        for _ in range(2):
            steps += 1
            tk.lamb_triton_(ps, grads, *state, steps, **LAMB)
            opt.step()
            rbn(x).backward(g)
        tk.running_bn_triton(x, mults, adds, means, vars, eps, 0.1, 0.01).backward(g)
    assert x.grad is not None and mults.grad is not None

ROOT = Path(__file__).resolve().parent.parent

def run_python(*args):
    "Python run on `args` in a fresh process, this checkout's dl2 first on its path, without TRITON_INTERPRET."
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)

@pytest.mark.slow
def test_compiles_for_h100():
    "Every kernel launch of both steps compiles for an H100 (sm_90), GPU or not; LAMB's whole chunks use 16-byte loads."
    pytest.importorskip('triton.backends.nvidia')
    r = run_python(str(ROOT/'tests'/'tools'/'triton_sm90_build.py'))
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'built for sm_90' in r.stdout, r.stdout

@pytest.mark.slow
def test_without_triton():
    "Where Triton is missing the module still imports, `triton_available()` is False, and the steps say why they cannot run."
    code = '''import sys
sys.modules['triton'] = None   # import triton fails, as on macOS, Windows or with PyTorch's CPU-only wheels
import torch
import dl2.fast.triton_kernels as tk
assert not tk.triton_available()
try: tk.lamb_triton_([torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], torch.ones(1), 0.1, 0.9, 0.99, 1e-6, 0.)
except RuntimeError as e: print(e)'''
    r = run_python('-c', code)
    assert r.returncode == 0, r.stderr
    assert 'needs Triton and a CUDA GPU' in r.stdout, r.stdout

def test_lamb_route_of_the_optimizer():
    "`lamb` with its 'triton' route (device step counts, parameters skipping steps) lands where the lesson's loop does."
    torch.manual_seed(0)
    shapes = [(3000,), (4, 5), (7,)]
    ws = [torch.randn(s) for s in shapes]
    runs = []
    for opt_func, dev in ((lamb, 'cpu'), (fused(lamb, lamb_route='triton'), DEVICE)):
        ps = [w.clone().to(dev).requires_grad_() for w in ws]
        opt = opt_func(ps, lr=0.01, wd=0.1)
        g = torch.Generator().manual_seed(1)
        for i in range(4):
            for j, p in enumerate(ps): p.grad = None if (i, j) == (1, 1) else torch.randn(p.shape, generator=g).to(dev)
            opt.step()
        runs.append([p.detach().cpu() for p in ps])
    for a, b in zip(*runs): assert_near(a, b, 2e-6, 'weights')
