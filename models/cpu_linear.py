"""Which library multiplies the float32 linear layers on the CPU: the BLAS (MKL, torch's default) or oneDNN.

torch sends float32 ``F.linear`` to MKL, and MKL runs its AVX-512 kernels only on Intel CPUs: on an AMD CPU with
AVX-512 it takes its AVX2 ones. oneDNN, which torch already uses for convolutions, runs AVX-512 everywhere; on an
AMD EPYC Zen 5 (2 threads) its float32 products of the transformer's shapes ran at 310-365 GFLOP/s against
MKL's 165-185. ``linear`` sends the three products of a layer (forward, input gradient, weight gradient) to
oneDNN where it is chosen; both compute in float32, only the order of the additions differs.

The choice: ``UNIVAL_CPU_LINEAR=auto|blas|onednn`` (environment) or ``set_backend``; ``auto`` takes oneDNN on a
non-Intel x86 CPU whose vector capability torch reports as AVX-512, the BLAS elsewhere.
"""
import functools
import logging
import os
import platform
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "blas", "onednn")
ENVIRONMENT_VARIABLE = "UNIVAL_CPU_LINEAR"

_chosen: Dict[str, Optional[str]] = {"backend": None}


def cpuinfo_fields(cpuinfo: str = "/proc/cpuinfo") -> Dict[str, str]:
    """The first processor's fields of ``cpuinfo`` (``vendor_id``, ``model name``, ...); empty where unreadable."""
    fields: Dict[str, str] = {}
    try:
        with open(cpuinfo) as file:
            for line in file:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


@functools.lru_cache(maxsize=None)
def onednn_available() -> bool:
    """Whether this torch has oneDNN's linear product (a private operator of torch's oneDNN fusions) and it
    multiplies as ``F.linear`` does: checked once on a small product, so that a torch whose operator changed
    falls back to the BLAS rather than failing or computing something else."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    x = torch.arange(12, dtype=torch.float32).view(3, 4) / 8
    weight = torch.arange(20, dtype=torch.float32).view(5, 4) / 16 - 0.5
    bias = torch.arange(5, dtype=torch.float32)
    try:
        with torch.no_grad():
            product = onednn_product(x, weight, bias)
    except RuntimeError as error:
        logger.warning("oneDNN's linear product failed a check (%s); the BLAS multiplies the linear layers", error)
        return False
    return product.shape == (3, 5) and torch.allclose(product, F.linear(x, weight, bias), atol=1e-5)


def auto_backend(vendor: Optional[str] = None, capability: Optional[str] = None) -> str:
    """``onednn`` on a non-Intel x86 CPU with AVX-512 (where MKL runs AVX2 code), else ``blas``."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not onednn_available():
        return "blas"
    vendor = cpuinfo_fields().get("vendor_id", "") if vendor is None else vendor
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    return "onednn" if capability.startswith("AVX512") and vendor not in ("", "GenuineIntel") else "blas"


def resolve_backend(name: str) -> str:
    """``name`` (one of BACKENDS) as ``blas`` or ``onednn``; ValueError for another name or a missing oneDNN."""
    if name not in BACKENDS:
        raise ValueError(f"unknown CPU linear backend {name!r} (from {ENVIRONMENT_VARIABLE} or set_backend); "
                         f"choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return auto_backend()
    if name == "onednn" and not onednn_available():
        raise ValueError(f"CPU linear backend 'onednn' asked for ({ENVIRONMENT_VARIABLE} or set_backend), but this "
                         f"torch {torch.__version__} has no oneDNN linear product; use 'blas' or 'auto'")
    return name


def set_backend(name: Optional[str]) -> str:
    """Chooses the library of the CPU float32 linear layers for this process (None: ``$UNIVAL_CPU_LINEAR``, else
    auto) and returns what ``auto`` resolved to."""
    _chosen["backend"] = resolve_backend(name or os.environ.get(ENVIRONMENT_VARIABLE) or "auto")
    logger.info("CPU float32 linear layers: %s", describe(_chosen["backend"]))
    return _chosen["backend"]


def backend() -> str:
    """The library of the CPU float32 linear layers, chosen at the first call (``set_backend(None)``)."""
    if _chosen["backend"] is None:
        set_backend(None)
    return _chosen["backend"]


def describe(name: str) -> str:
    if name == "onednn":
        return f"oneDNN (vector capability {torch.backends.cpu.get_cpu_capability()})"
    return "the BLAS (torch's default)"


def onednn_product(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x @ weight^T (+ bias) by oneDNN; either operand may be a strided view."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.with_bias = bias is not None
        return onednn_product(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        flat_grad = grad.reshape(-1, grad.size(-1))
        if ctx.needs_input_grad[0]:
            grad_x = onednn_product(grad, weight.t(), None)
        if ctx.needs_input_grad[1]:
            grad_weight = onednn_product(flat_grad.t(), x.reshape(-1, x.size(-1)).t(), None)
        if ctx.with_bias and ctx.needs_input_grad[2]:
            grad_bias = flat_grad.sum(0)
        return grad_x, grad_weight, grad_bias


def uses_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether ``linear`` sends this product to oneDNN: float32 on the CPU, outside autocast and compilation,
    with rows to multiply, where the backend is oneDNN."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.numel() > 0 and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and backend() == "onednn")


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.linear(x, weight, bias)``, by oneDNN where ``uses_onednn`` says so (the weight's gradient then comes
    out as a plain (out, in) matrix)."""
    if not uses_onednn(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _OneDNNLinear.apply(x, weight, bias)
    return onednn_product(x, weight, bias)
