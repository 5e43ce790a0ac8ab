"""Direct backend calls with 8-bit states and stochastic rounding (``scales=`` and ``rounding=``,
docs/kernel-interface.md) on every fused backend, against the reference (whose rules are
``fusedopt/lowbit.py``'s):

- the compiled CPU op, on CPU tensors;
- Triton, in its interpreter on CPU tensors (``TRITON_INTERPRET=1``, as conftest.py sets), or
  compiled on a GPU (``TRITON_INTERPRET=0``);
- CUDA, on a GPU (skipped without one).

Every algorithm and slot variant with 8-bit states in one call of odd sizes, an empty tensor, two
rows and three step counts (params within their dtype's tolerance, scales within float32
rounding, codes equal but for a few that differ by one where a float32 update one ulp off crosses
a midpoint); bit for bit where the float32 update is exact (SGD with power-of-two lr and
momentum): codes, scales and stochastically rounded bfloat16/float16 params, whose bits depend on
the seed, the offset and the step count; master weights; LAMB's split phases; grad_scale and an
overflow step, which writes nothing. A compiled backend that fell back to the reference fails
the test. What only one backend has (Triton's jitted rule kernels and table cache, CUDA's
unaligned tiles and device tables) stays in test_triton_lowbit.py and test_cuda_backend.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from fusedopt import _ext, backends  # noqa: E402
from parity import clone_call, count_cuda_kernels, cuda_skip_reason, run_call  # noqa: E402
from lowbit_parity import (LOWBIT_VARIANTS, assert_lowbit_calls_match, exact_sgd_call, lowbit_call,  # noqa: E402
                           lowbit_variant_id)

try:
    import fusedopt.triton as ft
except ImportError:  # triton is not installed
    ft = None

_CUDA = cuda_skip_reason()
_TRITON_DEVICE = "cpu" if ft is None or ft.INTERPRETED else "cuda"
_TRITON = ("triton is not installed" if ft is None else
           "" if ft.INTERPRETED or torch.cuda.is_available() else
           "Triton kernels compiled for CUDA (TRITON_INTERPRET is not 1) and no GPU")
_CPU = "" if _ext.cpu_status()[0] else "the compiled CPU backend is not loaded"
# (backend, device); six sizes each: an empty tensor, odd and partial blocks, and one past a work
# item (the CPU's 16,384 elements, one Triton program's chunk, many CUDA thread blocks)
WHERE = [pytest.param(("cpu", "cpu"), id="cpu", marks=pytest.mark.skipif(bool(_CPU), reason=_CPU or "-")),
         pytest.param(("triton", _TRITON_DEVICE), id="triton",
                      marks=pytest.mark.skipif(bool(_TRITON), reason=_TRITON or "-")),
         pytest.param(("cuda", "cuda"), id="cuda", marks=pytest.mark.skipif(bool(_CUDA), reason=_CUDA or "-"))]
SIZES = {"cpu": (0, 1, 255, 257, 4097, 16384 + 300),
         "triton": (0, 1, 255, 257, 300, (ft.block_size() if ft is not None else 4096) + 1),
         "cuda": (0, 1, 255, 257, 4097, 70000)}
CODE_MISMATCH = 0.005  # the fraction of codes that may differ (by exactly one)


@dataclass
class Fused:
    name: str
    device: torch.device
    backend: object
    sizes: tuple[int, ...]

    def call(self, algo, options, dtype=torch.float32, **kw):
        """``lowbit_parity.lowbit_call`` on this backend's device and sizes."""
        return lowbit_call(algo, options, self.sizes, dtype, device=self.device, **kw)

    def exact_sgd(self, dtype, rounding, quantized):
        return exact_sgd_call(dtype, rounding, quantized, self.sizes, device=self.device)

    def run(self, call, **kw):
        return run_call(self.backend, call, **kw)

    def reference(self, call, **kw):
        return run_call(backends.get_backend("reference", self.device), call, **kw)

    def launches(self, fn) -> int | None:
        """The kernel launches of ``fn()``; None where they are not counted (the CPU op)."""
        if self.name == "triton":
            before = ft.launch_count()
            fn()
            return ft.launch_count() - before
        if self.name == "cuda":
            return count_cuda_kernels(fn)
        fn()
        return None


@pytest.fixture(params=WHERE)
def fused(request, monkeypatch):
    name, device = request.param
    backend = backends.get_backend(name, torch.device(device))
    if hasattr(backend, "_fallback"):  # the compiled backends give what their ops refuse to the reference
        def refuse():
            raise AssertionError(f"the {name} backend fell back to the reference")
        monkeypatch.setattr(backend, "_fallback", refuse)
    return Fused(name, torch.device(device), backend, SIZES[name])


def _tensors(call, key):
    return call[key] if key == "params" else [t for slot in call[key] for t in slot]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("algo,options", LOWBIT_VARIANTS, ids=lowbit_variant_id)
def test_8bit_call_matches_the_reference(fused, algo, options, dtype):
    """Every algorithm and slot variant with 8-bit states: one launch (two for LAMB), the params,
    codes and scales as the reference's, and the codes were written."""
    spec, call = fused.call(algo, options, dtype)
    assert sum(len(s) for s in call["scales"]), "no 8-bit slot"
    got = clone_call(call)
    assert fused.launches(lambda: fused.backend.step(**got)) in (None, 2 if spec.REDUCES else 1)
    assert_lowbit_calls_match(got, fused.reference(call), f"{algo} {options} {dtype}", slack=CODE_MISMATCH)
    changed = [not torch.equal(a, b) for a, b in zip(got["states"][0], call["states"][0]) if a.numel() > 256]
    assert changed and all(changed)


@pytest.mark.parametrize("quantized", [False, True], ids=["f32-states", "8bit-states"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_stochastic_rounding_bit_for_bit(fused, dtype, quantized):
    """Each tensor with its own seed (64-bit) and offset and its own step count: where the float32
    update is exact, the params (and codes and scales) equal the reference's bit for bit, they
    were not rounded to nearest, and the bits depend on the seed, the offset and the step count."""
    n = len(fused.sizes)
    rounding = [(1234 + 7 * i, (i << 40) + 3) for i in range(n)]
    rounding[1] = (2 ** 64 - 5, 2 ** 33)
    spec, call = fused.exact_sgd(dtype, rounding, quantized)
    got = fused.run(call)
    assert_lowbit_calls_match(got, fused.reference(call), f"sgd stochastic rounding {dtype}", exact=True)
    nearest = fused.reference({k: v for k, v in call.items() if k != "rounding"})
    assert any(not torch.equal(a, b) for a, b in zip(got["params"], nearest["params"]))
    for change in ("seed", "offset", "step"):
        other = dict(call)
        if change == "step":
            other["steps"] = call["steps"] + 1
        else:
            other["rounding"] = [(s + 1, o) if change == "seed" else (s, o + 1) for s, o in rounding]
        moved = fused.run(other)
        assert torch.equal(moved["params"][5], fused.reference(other)["params"][5]), change
        assert not torch.equal(moved["params"][5], got["params"][5]), change


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("algo", ["adam", "lamb"])
def test_stochastic_rounding_with_8bit_states(fused, algo, dtype):
    """Adam and LAMB (which stores the param in both traversals, with the same bits), 16-bit params
    stochastically rounded, 8-bit states: as the reference, and almost every param bit for bit
    (one float32 ulp of the update moves a rounding only where the bits sit on its threshold)."""
    spec, call = fused.call(algo, {}, dtype, rounding=[(99 + i, i << 40) for i in range(len(fused.sizes))])
    got, want = fused.run(call), fused.reference(call)
    assert_lowbit_calls_match(got, want, f"{algo} 8-bit stochastic rounding {dtype}", slack=CODE_MISMATCH)
    same = sum(int((a.view(torch.int16) == b.view(torch.int16).to(a.device)).sum())
               for a, b in zip(got["params"], want["params"]))
    assert same >= 0.99 * sum(fused.sizes)


def test_master_weights_with_8bit_states(fused):
    spec, call = fused.call("adam", {"amsgrad": True}, torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    call["master"] = [p.float() + 1e-3 * torch.randn(p.shape, generator=gen).to(fused.device) for p in call["params"]]
    assert_lowbit_calls_match(fused.run(call), fused.reference(call), "adam master 8-bit", slack=CODE_MISMATCH)


def test_lamb_split_phases_with_8bit_states(fused):
    """A split LAMB step with 8-bit states: phase 1's sums as the reference's, phase 2 from changed
    sums as the reference's, and phase 2 writes no code and no scale; with its own sums the split
    step is the whole step, bit for bit."""
    spec, call = fused.call("lamb", {})
    n = len(fused.sizes)
    ref = backends.get_backend("reference", fused.device)
    got, want = clone_call(call), clone_call(call)
    s_got = torch.full((n, 2), float("nan"), dtype=torch.float64, device=fused.device)
    s_want = torch.zeros(n, 2, dtype=torch.float64, device=fused.device)
    fused.backend.step(**got, sums=s_got, phase=1)
    ref.step(**want, sums=s_want, phase=1)
    torch.testing.assert_close(s_got, s_want, rtol=1e-6, atol=0)
    codes = [[t.clone() for t in slot] for slot in got["states"]]
    scales = [[t.clone() for t in slot] for slot in got["scales"]]
    s_got.mul_(1.5)
    s_want.mul_(1.5)
    fused.backend.step(**got, sums=s_got, phase=2)
    ref.step(**want, sums=s_want, phase=2)
    assert_lowbit_calls_match(got, want, "lamb split 8-bit", slack=CODE_MISMATCH)
    for before, after in ((codes, got["states"]), (scales, got["scales"])):
        assert all(torch.equal(a, b) for x, y in zip(before, after) for a, b in zip(x, y))
    whole = fused.run(call)
    split = clone_call(call)
    sums = torch.zeros(n, 2, dtype=torch.float64, device=fused.device)
    fused.backend.step(**split, sums=sums, phase=1)
    fused.backend.step(**split, sums=sums, phase=2)
    for key in ("params", "states", "scales"):
        assert all(torch.equal(a, b) for a, b in zip(_tensors(split, key), _tensors(whole, key))), key


@pytest.mark.parametrize("algo", ["adam", "sgd"])
def test_grad_scale_and_overflow_step(fused, algo):
    """grad_scale with 8-bit states and stochastic rounding: as the reference; an overflow step
    (found_inf = 1) writes nothing: params, codes and scales unchanged."""
    rounding = [(5, i << 40) for i in range(len(fused.sizes))]
    spec, call = fused.call(algo, {"momentum": 0.9} if algo == "sgd" else {}, torch.bfloat16, rounding=rounding)
    scale, zero = torch.tensor(0.25, device=fused.device), torch.tensor(0.0, device=fused.device)
    got = fused.run(call, grad_scale=scale, found_inf=zero)
    assert_lowbit_calls_match(got, fused.reference(call, grad_scale=scale, found_inf=zero), f"{algo} grad_scale",
                              slack=CODE_MISMATCH)
    assert not torch.equal(got["params"][5], call["params"][5])
    got = fused.run(call, grad_scale=scale, found_inf=torch.tensor(1.0, device=fused.device))
    for key in ("params", "states", "scales"):
        assert all(torch.equal(a, b) for a, b in zip(_tensors(got, key), _tensors(call, key))), key
