"""Build every kernel launch of `dl2.fast.triton_kernels`' two training steps for an H100 (sm_90), on any machine, GPU or not.

Triton's interpreter runs some code that its compiler rejects, so the interpreter tests alone do not show that the kernels
build. Here every launch compiles instead of running: a stand-in driver names sm_90 as the target, and CPU tensors stand
in for CUDA ones (only their dtypes and alignments matter to the compiler). Run without TRITON_INTERPRET;
`tests/test_triton.py` runs it in a subprocess. Prints one line per launch: kernel, registers, 16-byte loads.
"""
import os, subprocess, sys, tempfile
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction
from dl2.fast.kernels import triton_interpreting

class BuildOnlyDriver:
    "Just enough of a Triton driver for a launch to compile for `target` and stop there."
    def __init__(self, target): self.target = target
    def get_current_device(self): return 0
    def get_current_stream(self, device=None): return 0
    def get_current_target(self): return self.target

def registers(kernel):
    "Registers per thread of a compiled kernel, from `cuobjdump`."
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(kernel.asm['cubin']); f.flush()
        out = subprocess.run([cuobjdump, '--dump-resource-usage', f.name], capture_output=True, text=True).stdout
    return next((w.split(':')[1] for w in out.split() if w.startswith('REG:')), '?')

def main():
    if triton_interpreting(): sys.exit('triton_sm90_build.py: unset TRITON_INTERPRET, this builds the real kernels')
    built = []
    run = JITFunction.run
    def build_only(self, *args, grid, warmup, **kwargs):
        built.append((self.fn.__name__, run(self, *args, grid=grid, warmup=True, **kwargs)))
    JITFunction.run = build_only
    driver.set_active(BuildOnlyDriver(GPUTarget('cuda', 90, 32)))

    import dl2.fast.triton_kernels as tk
    tk.triton_available = lambda: True
    tk._check_device = lambda fn, t: None
    tk._n_programs = lambda device: 4 * 132
    for shape, dtype in [((8, 32, 28, 28), torch.float32), ((64, 33), torch.bfloat16)]:   # planar; rows of channels
        x, C = torch.randn(shape, dtype=dtype), shape[1]
        mults = torch.ones(C, requires_grad=True)
        y = tk.running_bn_triton(x.requires_grad_(), mults, torch.zeros(C), torch.zeros(C), torch.ones(C), torch.tensor(1e-5), 0.1, 0.01)
        y.backward(torch.ones_like(y))
        P, x, n = tk.running_bn_sync_parts, x.detach(), 2 * x.numel() // C   # the synchronised step's four parts
        y, saved = P.apply(x, P.sums(x, torch.zeros(C)), mults.detach(), torch.zeros(C), torch.zeros(C), torch.ones(C), torch.tensor(1e-5), 0.1, 0.01, n)
        local = P.grad_sums(torch.ones_like(y), x, saved)
        P.grad_apply(torch.ones_like(y), x, mults.detach(), saved, local, local.clone(), 0.1, n, True)
    ps = [torch.randn(5000), torch.randn(3, 4)]
    tk.lamb_triton_(ps, [torch.randn_like(p) for p in ps], [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps],
                    torch.ones(2), 0.01, 0.9, 0.99, 1e-6, 0.01)
    for name, k in built: print(f"{name:24} {registers(k):>4} registers {k.asm['ptx'].count('ld.global.v4'):>3} 16-byte loads")
    for name, k in built:
        if name.startswith('_lamb_') and name != '_lamb_scale_kernel' and 'ld.global.v4' not in k.asm['ptx']:
            sys.exit(f'{name}: no 16-byte loads in its whole chunks')
    print(f'{len(built)} launches built for sm_90')

if __name__ == '__main__': main()
