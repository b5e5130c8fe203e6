"""The CPU linear layers' library choice (models/cpu_linear.py): oneDNN's products give F.linear's values and
gradients, are used where chosen and only there, and the choice follows the CPU and UNIVAL_CPU_LINEAR."""
import pytest
import torch
import torch.nn.functional as F

from unival.models import cpu_linear

needs_onednn = pytest.mark.skipif(not cpu_linear.onednn_available(),
                                  reason="this torch has no oneDNN linear product (torch.ops.mkldnn._linear_pointwise)")


@pytest.fixture
def backend():
    """Sets the process's backend for one test; the choice in force before is restored after it."""
    saved = dict(cpu_linear._chosen)
    yield lambda name: cpu_linear.set_backend(name)
    cpu_linear._chosen.update(saved)


@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts the oneDNN products made."""
    calls = []
    product = cpu_linear.onednn_product

    def counted(x, weight, bias):
        calls.append(tuple(x.shape))
        return product(x, weight, bias)

    monkeypatch.setattr(cpu_linear, "onednn_product", counted)
    return calls


def values_and_gradients(function, x, weight, bias, grad):
    inputs = [t.detach().clone().requires_grad_(t.requires_grad) for t in (x, weight, bias) if t is not None]
    out = function(*inputs, None) if bias is None else function(*inputs)
    out.backward(grad)
    return out.detach(), [t.grad for t in inputs]


@needs_onednn
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
def test_onednn_linear_matches_f_linear_in_values_and_gradients(backend, onednn_calls, with_bias, layout):
    backend("onednn")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 16, generator=generator)
    if layout == "permuted":  # (T, B, C) views of (B, T, C) activations, as the transformer passes them
        x = x.transpose(0, 1)
    x.requires_grad_(True)
    weight = torch.randn(24, 16, generator=generator, requires_grad=True)
    bias = torch.randn(24, generator=generator, requires_grad=True) if with_bias else None
    grad = torch.randn(*x.shape[:-1], 24, generator=generator)
    ours, our_grads = values_and_gradients(cpu_linear.linear, x, weight, bias, grad)
    reference, reference_grads = values_and_gradients(F.linear, x, weight, bias, grad)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    for our_grad, reference_grad in zip(our_grads, reference_grads):
        torch.testing.assert_close(our_grad, reference_grad, rtol=1e-5, atol=1e-5)
    assert our_grads[1].is_contiguous()  # the weight's gradient is a plain (out, in) matrix
    # forward, input gradient, weight gradient
    assert onednn_calls == [tuple(x.shape), tuple(grad.shape), (24, 14)]


@needs_onednn
def test_onednn_linear_skips_the_gradients_nobody_needs(backend, onednn_calls):
    backend("onednn")
    x = torch.randn(5, 8)
    weight = torch.randn(3, 8, requires_grad=True)  # an input without gradient: its product is not made
    cpu_linear.linear(x, weight).sum().backward()
    assert onednn_calls == [(5, 8), (3, 5)] and weight.grad.shape == (3, 8)
    with torch.no_grad():
        cpu_linear.linear(x, weight)
    assert len(onednn_calls) == 3


@needs_onednn
def test_f_linear_where_onednn_does_not_apply(backend, onednn_calls):
    backend("onednn")
    weight = torch.randn(3, 8)
    for x in (torch.randn(5, 8, dtype=torch.float64), torch.randn(0, 8)):
        assert cpu_linear.linear(x, weight.to(x.dtype)).shape == (x.shape[0], 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cpu_linear.linear(torch.randn(5, 8), weight)
    assert out.dtype == torch.bfloat16  # autocast's own bfloat16 product
    backend("blas")
    cpu_linear.linear(torch.randn(5, 8), weight)
    assert onednn_calls == []


@needs_onednn
def test_tiny_model_gives_the_same_loss_and_gradients_with_either_library(backend, onednn_calls):
    from test_unival import batch, tiny_model  # tests/models/test_unival.py

    losses, gradients = {}, {}
    for name in ("blas", "onednn"):
        backend(name)
        model = tiny_model().train()
        inputs = batch(size=3, text=6, target=10)  # 30 decoder rows: the output projection goes to oneDNN too
        logits, _ = model(**inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), inputs["src_tokens"][:, :1].expand(-1, 10).flatten())
        loss.backward()
        losses[name] = loss.item()
        gradients[name] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert bool(onednn_calls) == (name == "onednn")
    assert (30, 64) in onednn_calls  # the output projection's rows
    assert losses["onednn"] == pytest.approx(losses["blas"], rel=1e-5)
    assert gradients["onednn"].keys() == gradients["blas"].keys()
    for name, grad in gradients["onednn"].items():
        torch.testing.assert_close(grad, gradients["blas"][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("vendor, capability, expected", [
    ("AuthenticAMD", "AVX512", "onednn"),   # MKL runs AVX2 code there
    ("GenuineIntel", "AVX512", "blas"),     # MKL's AVX-512 kernels
    ("AuthenticAMD", "AVX2", "blas"),
    ("", "AVX512", "blas"),                 # unknown vendor: torch's default
])
def test_auto_takes_onednn_on_non_intel_avx512_cpus(monkeypatch, vendor, capability, expected):
    monkeypatch.setattr(cpu_linear.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu_linear, "onednn_available", lambda: True)
    assert cpu_linear.auto_backend(vendor, capability) == expected


def test_auto_is_the_blas_off_x86(monkeypatch):
    monkeypatch.setattr(cpu_linear.platform, "machine", lambda: "aarch64")
    assert cpu_linear.auto_backend("AuthenticAMD", "AVX512") == "blas"


def test_backend_follows_the_environment_and_refuses_unknown_names(backend, monkeypatch):
    monkeypatch.setenv(cpu_linear.ENVIRONMENT_VARIABLE, "blas")
    assert backend(None) == "blas" and cpu_linear.backend() == "blas"
    monkeypatch.setenv(cpu_linear.ENVIRONMENT_VARIABLE, "mkl")
    with pytest.raises(ValueError, match="unknown CPU linear backend 'mkl'.*UNIVAL_CPU_LINEAR.*auto, blas, onednn"):
        backend(None)
    monkeypatch.setattr(cpu_linear, "onednn_available", lambda: False)
    with pytest.raises(ValueError, match="'onednn' asked for.*no oneDNN linear product"):
        backend("onednn")
    assert backend("auto") == "blas"


def test_cpuinfo_fields_reads_the_first_processor(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\n"
                       "processor\t: 1\nvendor_id\t: other\n")
    assert cpu_linear.cpuinfo_fields(str(cpuinfo)) == {"processor": "0", "vendor_id": "AuthenticAMD",
                                                       "model name": "AMD EPYC"}
    assert cpu_linear.cpuinfo_fields(str(tmp_path / "missing")) == {}


def test_a_onednn_product_that_fails_its_check_leaves_the_blas(monkeypatch):
    cpu_linear.onednn_available.cache_clear()
    monkeypatch.setattr(cpu_linear, "onednn_product", lambda x, weight, bias: x @ weight.t())  # bias forgotten
    try:
        assert cpu_linear.onednn_available() is False
        monkeypatch.setattr(cpu_linear.platform, "machine", lambda: "x86_64")
        assert cpu_linear.auto_backend("AuthenticAMD", "AVX512") == "blas"
    finally:
        cpu_linear.onednn_available.cache_clear()
