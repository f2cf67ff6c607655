"Agreement of `dl2.optimizers` with torch.optim and with the papers' formulas; checkpoints; parameter handling."
import copy, io
from functools import partial
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from dl2.core import test_close as assert_close, test_eq as assert_eq
from dl2.optimizers import *
from dl2.optimizers import l2_reg, sgd_mom_opt
from dl2.callbacks import Learner
from dl2.training import Dataset, DataBunch, get_dls

SHAPES = [(3, 4), (5,), (2, 3, 3, 3), (1,)]


def params64(seed=0):
    "A few float64 parameters of different shapes (double precision: only a real difference exceeds 1e-6)."
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in SHAPES]

def grad_seq(n=100, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES] for _ in range(n)]

def run(opt, ps, seq):
    for gs in seq:
        for p, g in zip(ps, gs): p.grad = None if g is None else g.clone()
        opt.step(); opt.zero_grad()
    return ps

def assert_same(ps1, ps2, eps=1e-6):
    for a, b in zip(ps1, ps2): assert_close(a, b, eps=eps)


@pytest.mark.parametrize('wd', [0., 0.01])
def test_sgd_matches_torch(wd):
    seq, ps1, ps2 = grad_seq(), params64(), params64()
    run(sgd_opt(ps1, lr=0.05, wd=wd), ps1, seq)
    run(torch.optim.SGD(ps2, lr=0.05, weight_decay=wd), ps2, seq)   # L2 == decoupled decay for plain SGD
    assert_same(ps1, ps2)

@pytest.mark.parametrize('wd', [0., 0.01])
def test_sgd_momentum_matches_torch(wd):
    "torch's momentum buffer is our undampened `AverageGrad`; its `weight_decay` is our `l2_reg`."
    seq, ps1, ps2 = grad_seq(), params64(), params64()
    run(sgd_mom_opt(ps1, lr=0.01, mom=0.9, wd=wd, wd_step=l2_reg), ps1, seq)
    run(torch.optim.SGD(ps2, lr=0.01, momentum=0.9, dampening=0, weight_decay=wd), ps2, seq)
    assert_same(ps1, ps2)

def test_sgd_momentum_decoupled_differs_from_l2():
    seq, ps1, ps2 = grad_seq(), params64(), params64()
    run(sgd_mom_opt(ps1, lr=0.01, mom=0.9, wd=0.1), ps1, seq)
    run(torch.optim.SGD(ps2, lr=0.01, momentum=0.9, weight_decay=0.1), ps2, seq)
    assert max((a - b).abs().max() for a, b in zip(ps1, ps2)) > 1e-3

@pytest.mark.parametrize('mom,sqr_mom,eps,wd', [(0.9, 0.99, 1e-5, 0.), (0.9, 0.999, 1e-8, 0.1), (0.5, 0.9, 1e-3, 0.01)])
def test_adam_matches_adamw(mom, sqr_mom, eps, wd):
    "Mapping: betas=(mom, sqr_mom); eps added after the root in both; decoupled decay before the step in both."
    seq, ps1, ps2 = grad_seq(), params64(), params64()
    run(adam_opt(mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)(ps1, lr=0.01), ps1, seq)
    run(torch.optim.AdamW(ps2, lr=0.01, betas=(mom, sqr_mom), eps=eps, weight_decay=wd), ps2, seq)
    assert_same(ps1, ps2)

def test_adam_l2_matches_torch_adam():
    seq, ps1, ps2 = grad_seq(), params64(), params64()
    opt = StatefulOptimizer(ps1, [l2_reg, adam_step], stats=[AverageGrad(dampening=True), AverageSqrGrad(), StepCount()], lr=0.01, wd=0.1)
    run(opt, ps1, seq)
    run(torch.optim.Adam(ps2, lr=0.01, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.1), ps2, seq)
    assert_same(ps1, ps2)

def test_adam_intermittent_gradients_match_adamw():
    "A parameter without a gradient is skipped and its step count does not advance, as in torch."
    seq, ps1, ps2 = grad_seq(), params64(), params64()
    for i, gs in enumerate(seq):
        if i % 3: gs[1] = None
    run(adam_opt(wd=0.1)(ps1, lr=0.01), ps1, seq)
    run(torch.optim.AdamW(ps2, lr=0.01, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.1), ps2, seq)
    assert_same(ps1, ps2)

def mlp_and_data(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    x, y = torch.randn(512, 10), torch.randint(0, 3, (512,))
    return m, x, y

def train(m, opt, x, y, steps=60, bs=32):
    for i in range(steps):
        j = (i * bs) % len(x)
        F.cross_entropy(m(x[j:j+bs]), y[j:j+bs]).backward()
        opt.step(); opt.zero_grad()
    return F.cross_entropy(m(x), y).item()

def test_adam_real_training_close_to_adamw():
    m1, x, y = mlp_and_data(); m2 = copy.deepcopy(m1)
    l1 = train(m1, adam_opt(wd=0.01)(m1.parameters(), lr=3e-3), x, y)
    l2 = train(m2, torch.optim.AdamW(m2.parameters(), lr=3e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01), x, y)
    assert_close(l1, l2, eps=1e-4)
    assert_same(list(m1.parameters()), list(m2.parameters()), eps=1e-4)

def lamb_reference(p, grads, lr, b1=0.9, b2=0.99, eps=1e-6, wd=0.):
    "LAMB (You et al. 2019, algorithm 2) for one tensor, trust ratio clipped at 10 and 1 when a norm is 0."
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, 1):
        m, v = b1*m + (1-b1)*g, b2*v + (1-b2)*g*g
        r = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps) + wd*p
        pn, rn = p.norm(), r.norm()
        p = p - lr * (min(pn / rn, 10.) if pn > 0 and rn > 0 else 1.) * r
    return p

@pytest.mark.parametrize('wd', [0., 0.01])
def test_lamb_matches_paper(wd):
    seq, ps = grad_seq(), params64()
    with torch.no_grad(): ps[1].zero_()
    init = [p.detach().clone() for p in ps]
    run(lamb(wd=wd)(ps, lr=0.01), ps, seq)
    for i, (p, p0) in enumerate(zip(ps, init)): assert_close(p, lamb_reference(p0, [gs[i] for gs in seq], 0.01, wd=wd), eps=1e-6)

def test_lamb_trust_ratio_is_clipped():
    p = torch.full((4,), 100., dtype=torch.float64, requires_grad=True)
    p.grad = torch.full((4,), 1e-3, dtype=torch.float64)
    lamb()([p], lr=0.1).step()
    assert_close(p, torch.full((4,), 100. - 0.1 * 10 * (1 / (1 + 1e-6 / 1e-3))), eps=1e-6)


def needs_kernel():
    "dl2's C++ LAMB kernel, or a skip naming why this machine has none."
    kernel = lamb_kernel()
    if kernel is None: pytest.skip('no C++ compiler with OpenMP: the LAMB kernel could not be built')
    return kernel

@pytest.mark.parametrize('wd', [0., 0.01])
def test_lamb_kernel_matches_paper(wd):
    "float32 CPU tensors take the C++ kernel; compared with the paper's update run in float64."
    needs_kernel()
    seq, ps64 = grad_seq(), params64()
    with torch.no_grad(): ps64[1].zero_()
    ps = [p.detach().float().requires_grad_() for p in ps64]
    run(lamb(wd=wd)(ps, lr=0.01), ps, [[g.float() for g in gs] for gs in seq])
    for i, (p, p0) in enumerate(zip(ps, ps64)):
        assert_close(p.double(), lamb_reference(p0.detach(), [gs[i] for gs in seq], 0.01, wd=wd), eps=1e-5)

def test_lamb_kernel_trust_ratio_is_clipped():
    needs_kernel()
    p = torch.full((4,), 100., requires_grad=True)
    p.grad = torch.full((4,), 1e-3)
    lamb()([p], lr=0.1).step()
    assert_close(p, torch.full((4,), 100. - 0.1 * 10 * (1 / (1 + 1e-6 / 1e-3))), eps=1e-4)

def test_lamb_kernel_tells_autograd():
    "The kernel writes through pointers, so it bumps the version counters: a stale graph fails loudly, as after torch.optim."
    needs_kernel()
    p = torch.randn(8, requires_grad=True)
    loss = (p * p).sum()
    p.grad = torch.randn(8)
    lamb()([p], lr=0.1).step()
    with pytest.raises(RuntimeError, match='modified by an inplace operation'): loss.backward()

def test_lamb_kernel_rejects_other_tensors():
    kernel = needs_kernel()
    p, g, m, v = (torch.zeros(3, dtype=torch.float64) for _ in range(4))
    with pytest.raises(RuntimeError, match='dense float32 CPU tensors'): kernel.lamb_([p], [g], [m], [v], [1], 0.1, 0.9, 0.99, 1e-6, 0., 10.)

def test_lamb_without_kernel_warns_and_falls_back(no_compiler):
    "No compiler: one warning naming the cause, then the fused-AdamW path gives the same LAMB."
    with pytest.warns(UserWarning, match="could not build the C[+][+] kernel 'dl2_lamb'.*c[+][+] not found"): assert lamb_kernel() is None
    seq, ps64 = grad_seq(), params64()
    ps = [p.detach().float().requires_grad_() for p in ps64]
    run(lamb()(ps, lr=0.01), ps, [[g.float() for g in gs] for gs in seq])
    for i, (p, p0) in enumerate(zip(ps, ps64)):
        assert_close(p.double(), lamb_reference(p0.detach(), [gs[i] for gs in seq], 0.01), eps=1e-5)


@pytest.mark.parametrize('opt_func', [adam_opt(wd=0.1), lamb(wd=0.1), sgd_opt, partial(sgd_mom_opt, mom=0.8)],
                         ids=['adam', 'lamb', 'sgd', 'sgd_mom'])
def test_resume_from_checkpoint(opt_func):
    m1, x, y = mlp_and_data(); m2 = copy.deepcopy(m1)
    o1 = opt_func(m1.parameters(), lr=0.01)
    train(m1, o1, x, y, steps=10)
    buf = io.BytesIO(); torch.save({'model': m1.state_dict(), 'opt': o1.state_dict()}, buf)
    train(m1, o1, x[320:], y[320:], steps=10)
    buf.seek(0); ck = torch.load(buf)
    m2.load_state_dict(ck['model'])
    o2 = opt_func(m2.parameters(), lr=0.5)
    o2.load_state_dict(ck['opt'])
    assert_eq(o2.param_groups[0]['lr'], 0.01)
    train(m2, o2, x[320:], y[320:], steps=10)
    assert_same(list(m1.parameters()), list(m2.parameters()), eps=1e-6)

def test_load_state_dict_copies_and_checks():
    m, x, y = mlp_and_data()
    o = adam_opt()(m.parameters(), lr=0.01)
    train(m, o, x, y, steps=2)
    sd = o.state_dict()
    o2 = adam_opt()(m.parameters(), lr=0.01)
    o2.load_state_dict(sd)
    p = next(m.parameters())
    assert o2.state[p]['grad_avg'] is not o.state[p]['grad_avg']
    assert_eq(o2.state[p]['step'], 2)
    with pytest.raises(ValueError, match='parameters'): adam_opt()(list(m.parameters())[:2], lr=0.01).load_state_dict(sd)


def test_param_groups_discriminative_lrs():
    seq, ps1, ps2 = grad_seq(), params64(), params64()
    run(adam_opt(wd=0.1)([{'params': ps1[:2], 'lr': 1e-3}, {'params': ps1[2:], 'wd': 0.}], lr=0.01), ps1, seq)
    run(torch.optim.AdamW([{'params': ps2[:2], 'lr': 1e-3}, {'params': ps2[2:], 'weight_decay': 0.}],
                          lr=0.01, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.1), ps2, seq)
    assert_same(ps1, ps2)

def test_groups_as_lists_and_generator():
    m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    o = sgd_opt((p for p in m.parameters()), lr=0.1)
    assert_eq(len(o.param_groups[0]['params']), 4)
    o = sgd_opt([m[0].parameters(), list(m[1].parameters())], lr=0.1)
    assert_eq([len(pg['params']) for pg in o.param_groups], [2, 2])
    assert o.hypers is o.param_groups

def test_frozen_and_unused_params_skipped():
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    m[0].weight.requires_grad_(False)
    before = [p.detach().clone() for p in m.parameters()]
    o = adam_opt(wd=0.1)(m.parameters(), lr=0.1)
    m[0](torch.randn(5, 4)).sum().backward()   # m[1] unused
    o.step()
    assert_eq(m[0].weight, before[0]); assert_eq(m[1].weight.detach(), before[2]); assert_eq(m[1].bias.detach(), before[3])
    assert (m[0].bias.detach() != before[1]).all()
    assert set(o.state) == {m[0].bias}

def test_zero_grad():
    p = torch.ones(3, requires_grad=True)
    o = sgd_opt([p], lr=0.1)
    p.grad = torch.ones(3); o.zero_grad(set_to_none=False); assert_eq(p.grad, torch.zeros(3))
    o.zero_grad(); assert p.grad is None
    o.zero_grad(); o.step()                      # nothing to do, no error

def test_bad_params_errors():
    with pytest.raises(ValueError, match='empty parameter list'): sgd_opt([], lr=0.1)
    with pytest.raises(ValueError, match='empty parameter list'): adam_opt()(iter([]), lr=0.1)
    with pytest.raises(ValueError, match='group 1 is empty'): sgd_opt([[torch.ones(1, requires_grad=True)], []], lr=0.1)
    p = torch.ones(1, requires_grad=True)
    with pytest.raises(ValueError, match='twice'): sgd_opt([p, p], lr=0.1)
    with pytest.raises(TypeError, match='float'): sgd_opt([[p, 1.]], lr=0.1)
    with pytest.raises(ValueError, match="without 'params'"): sgd_opt([{'lr': 0.1}], lr=0.1)

@pytest.mark.parametrize('opt_func', [sgd_opt, adam_opt(), lamb()], ids=['sgd', 'adam', 'lamb'])
def test_sparse_grad_error(opt_func):
    emb = nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match='sparse gradients'): opt_func(emb.parameters(), lr=0.1).step()

def test_xtra_step_and_defaults():
    calls = []
    def spy(ps, grads, lr, **kwargs): calls.append(len(ps)); return ps
    spy._defaults = dict(spy_hyper=3)
    p = torch.ones(2, requires_grad=True)
    o = adam_opt(xtra_step=spy)([p], lr=0.1)
    assert_eq(o.param_groups[0]['spy_hyper'], 3)
    assert_eq({k: v for k, v in o.param_groups[0].items() if k != 'params'},
            dict(lr=0.1, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0., spy_hyper=3))
    p.grad = torch.ones(2); o.step()
    assert_eq(calls, [1])

def test_callbacks_drive_hypers():
    "ParamScheduler and Recorder set and read our hypers; LR_Find restores weights and optimizer state."
    torch.manual_seed(0)
    x, y = torch.randn(256, 10), torch.randint(0, 3, (256,))
    data = DataBunch(*get_dls(Dataset(x, y), Dataset(x[:64], y[:64]), 32), c_in=10, c_out=3)
    m = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    learn = Learner(m, data, F.cross_entropy, opt_func=adam_opt(), lr=1e-3, cb_funcs=Recorder)
    learn.fit(1, cbs=ParamScheduler('mom', lambda pos: 0.95 - 0.1 * pos))
    assert learn.opt.param_groups[0]['mom'] < 0.87
    learn.fit(1)
    before, opt_before = copy.deepcopy(m.state_dict()), copy.deepcopy(learn.opt.state_dict())
    learn.fit(2, cbs=LR_Find(max_iter=10))
    lrs = learn.recorder.lrs[0]
    assert len(lrs) > 2 and all(b > a for a, b in zip(lrs, lrs[1:]))
    for k, v in m.state_dict().items(): assert_eq(v, before[k])
    p = next(m.parameters())
    assert_eq(learn.opt.state[p]['step'], opt_before['state'][0]['step'])
    assert_eq(learn.opt.state[p]['sqr_avg'], opt_before['state'][0]['sqr_avg'])
