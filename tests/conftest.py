"Fixtures shared by the test modules."
import pytest
import torch.utils.cpp_extension
from dl2.batchnorm_kernels import running_bn_kernel
from dl2.fused_optimizers import lamb_kernel

@pytest.fixture
def no_compiler(monkeypatch):
    "A machine where building C++ extensions fails: dl2's kernel caches are emptied before and after."
    def fail(*args, **kwargs): raise RuntimeError('Error building extension: c++ not found')
    monkeypatch.setattr(torch.utils.cpp_extension, 'load', fail)
    for kernel in (running_bn_kernel, lamb_kernel): kernel.cache_clear()
    yield
    for kernel in (running_bn_kernel, lamb_kernel): kernel.cache_clear()
