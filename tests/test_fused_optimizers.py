"Property tests of `dl2.fast.optimizers` against the lesson's per-tensor optimizers, and what a notebook can't show: no compiler."
from functools import partial
import pytest, torch
from hypothesis import given, settings, strategies as st
from dl2.optimizers import adam_opt, lamb, sgd_opt, sgd_mom_opt, l2_reg
from dl2.fast.optimizers import FusedOptimizer, fused, lamb_kernel, lamb_route

OPTS = {'sgd': sgd_opt, 'momentum': sgd_mom_opt, 'momentum_l2': partial(sgd_mom_opt, wd_step=l2_reg), 'adam': adam_opt(), 'lamb': lamb}

def run(make_opt, shapes, steps, hyper, seed, dtype=torch.float32, skip=()):
    "Parameters and optimizer after `steps` steps of `make_opt` on seeded gradients; parameter `i` skips step `j` for (i, j) in `skip`."
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=dtype) for s in shapes] for _ in range(steps)]
    opt = make_opt(ps, **hyper)
    for j, gs in enumerate(grads):
        for i, (p, gr) in enumerate(zip(ps, gs)): p.grad = None if (i, j) in skip else gr.clone()
        opt.step()
    return ps, opt

shapes = st.lists(st.sampled_from([(1,), (7,), (3, 5), (4, 3, 3, 3), (2, 1, 1, 1)]), min_size=1, max_size=4)

@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(list(OPTS)), shapes=shapes, steps=st.integers(1, 12), seed=st.integers(0, 10_000),
       lr=st.floats(1e-4, 0.5), wd=st.sampled_from([0., 1e-4, 0.1]), mom=st.floats(0., 0.99), sqr_mom=st.floats(0., 0.999),
       skip=st.sets(st.tuples(st.integers(0, 3), st.integers(0, 11)), max_size=6))
def test_fused_matches_lesson(name, shapes, steps, seed, lr, wd, mom, sqr_mom, skip):
    "Any shapes, hyper-parameters and skipped steps: the fused route lands where the lesson's loop does (float64)."
    hyper = dict(lr=lr, wd=wd, mom=mom, sqr_mom=sqr_mom)
    ref, o_ref = run(OPTS[name], shapes, steps, hyper, seed, torch.float64, skip)
    got, o_got = run(fused(OPTS[name]), shapes, steps, hyper, seed, torch.float64, skip)
    assert isinstance(o_got, FusedOptimizer) and o_got.update is not None
    for a, b in zip(got, ref): torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for p, q in zip(got, ref):
        assert (p in o_got.state) == (q in o_ref.state)
        for k, v in o_ref.state.get(q, {}).items(): torch.testing.assert_close(torch.as_tensor(o_got.state[p][k]), torch.as_tensor(v), rtol=1e-9, atol=1e-9)

def stepped_groups(make_opt, lrs, hyper2, seed):
    "Two groups (the second with its own hyper-parameters `hyper2`), float64, the learning rates set to `lrs[i]` (and half that) before step `i`."
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in [(3, 4), (5,), (2, 3, 2, 2), (4,)]]
    opt = make_opt([ps[:2], {'params': ps[2:], **hyper2}], lr=0.1)
    for lr in lrs:
        opt.param_groups[0]['lr'], opt.param_groups[1]['lr'] = lr, lr / 2
        for p in ps: p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
        opt.step()
    return ps, opt.state_dict()

@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(list(OPTS)), seed=st.integers(0, 10_000), lrs=st.lists(st.floats(1e-4, 0.3), min_size=1, max_size=8),
       wd=st.sampled_from([0., 1e-3, 0.2]), mom=st.floats(0., 0.99), sqr_mom=st.floats(0., 0.999))
def test_groups_and_schedules_match_lesson(name, seed, lrs, wd, mom, sqr_mom):
    "Two groups with different hyper-parameters, learning rates changing at every step: weights and saved states agree."
    hyper2 = dict(wd=wd, mom=mom, sqr_mom=sqr_mom)
    ref, ref_sd = stepped_groups(OPTS[name], lrs, hyper2, seed)
    got, sd = stepped_groups(fused(OPTS[name]), lrs, hyper2, seed)
    for a, b in zip(got, ref): torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert sd['param_groups'] == ref_sd['param_groups'] and sd['state'].keys() == ref_sd['state'].keys()
    for i, s in ref_sd['state'].items():
        assert sd['state'][i].keys() == s.keys()
        for k, v in s.items(): torch.testing.assert_close(torch.as_tensor(sd['state'][i][k]), torch.as_tensor(v), rtol=1e-9, atol=1e-9)

@settings(max_examples=15, deadline=None)
@given(shapes=shapes, steps=st.integers(1, 12), seed=st.integers(0, 10_000), lr=st.floats(1e-4, 0.1), wd=st.sampled_from([0., 0.1]),
       route=st.sampled_from(['adamw_copy', 'cpp']))
def test_lamb_routes_match_lesson(shapes, steps, seed, lr, wd, route):
    "Each LAMB route in float32 against the lesson's `lamb_step` in float32 (the C++ route where it can be built)."
    if route == 'cpp' and lamb_kernel() is None: pytest.skip('no C++ compiler with OpenMP here: the LAMB kernel could not be built')
    ref, _ = run(lamb, shapes, steps, dict(lr=lr, wd=wd), seed)
    got, _ = run(fused(lamb, lamb_route=route), shapes, steps, dict(lr=lr, wd=wd), seed)
    for a, b in zip(got, ref): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(1., b.abs().max().item()))

def test_lamb_kernel_tells_autograd():
    "The C++ kernel writes through pointers, so it bumps the version counters: a stale graph fails loudly, as after torch.optim."
    if lamb_kernel() is None: pytest.skip('no C++ compiler with OpenMP here: the LAMB kernel could not be built')
    p = torch.randn(8, requires_grad=True)
    loss = (p * p).sum()
    p.grad = torch.randn(8)
    fused(lamb, lamb_route='cpp')([p], lr=0.1).step()
    with pytest.raises(RuntimeError, match='modified by an inplace operation'): loss.backward()

def test_lamb_without_compiler_warns_and_falls_back(no_compiler):
    "No compiler: one warning naming the cause, then the fused-AdamW route gives the lesson's LAMB."
    with pytest.warns(UserWarning, match="could not build the C[+][+] kernel 'lamb'.*c[+][+] not found"): assert lamb_kernel() is None
    assert lamb_route([torch.zeros(3)]) == 'adamw_copy'
    ref, _ = run(lamb, [(3, 4), (5,)], 20, dict(lr=0.01), seed=0)
    got, _ = run(fused(lamb), [(3, 4), (5,)], 20, dict(lr=0.01), seed=0)
    for a, b in zip(got, ref): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
