"""`linear(x, weight, bias)`: x @ weight.T + bias by the fastest kernel this machine has, and `fast_linears()`, which
routes a frozen model's `nn.Linear` layers through it.

On CPUs in fp32, oneDNN's matmul (the kernel that torch.compile's CPU backend emits for linear layers) runs 10 to 25%
faster than the MKL sgemm behind `torch.addmm` and `F.linear`, at the SAE encoder's shape and at an LM's projections
(`scripts/benchmark.py --sections roofline` measures both). It has no autograd formula, so it serves computations that
record no gradient: the frozen LM's forward and the encoder matmul inside the sparse training step, whose backward is
its own. Everywhere else (a recorded gradient, CUDA, other dtypes, autocast, a build without oneDNN, or
`torch.backends.mkldnn.flags(enabled=False)`) `linear` is `F.linear`.
"""

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight.contiguous(), bias, "none", [], "")


@functools.cache
def onednn_works() -> bool:
    """Whether this build's oneDNN linear runs and agrees with F.linear (checked once, on a tiny exact case)."""
    if not torch.backends.mkldnn.is_available():
        return False
    x, weight, bias = torch.arange(6.0).view(2, 3), torch.arange(12.0).view(4, 3), torch.arange(4.0)
    try:
        return torch.equal(_onednn_linear(x, weight, bias), F.linear(x, weight, bias))
    except (RuntimeError, AttributeError, NotImplementedError):  # an op this build does not register
        return False


def uses_onednn(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether `linear` takes the oneDNN kernel for these tensors here and now."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.enabled
        and onednn_works()
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)`, by oneDNN where `uses_onednn` says so."""
    return _onednn_linear(x, weight, bias) if uses_onednn(x, weight, bias) else F.linear(x, weight, bias)


class _FastLinears(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear and not kwargs:  # nn.Linear passes (input, weight, bias) positionally
            return linear(*args)
        return func(*args, **(kwargs or {}))


def fast_linears() -> TorchFunctionMode:
    """A context in which every `F.linear` (so every `nn.Linear`) goes through `linear`."""
    return _FastLinears()
