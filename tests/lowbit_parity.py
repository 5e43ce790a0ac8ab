"""The low-bit part of the parity harness: a fused backend's 8-bit states and stochastic
rounding against the reference (tests/test_lowbit_kernels.py for the cpu and cuda optimizers,
tests/test_triton_lowbit.py and tests/test_cuda_backend.py for direct backend calls)."""
from __future__ import annotations

import torch

import fusedopt
from fusedopt import algorithms, lowbit
from parity import TOL, random_state, set_counters


# -- 8-bit states and stochastic rounding: a fused backend against the reference ---------------
# Codes: a kernel computes the same float32 update as the reference in almost every element;
# where an update differs by an ulp (Note [float32 atol]) and lands on the other side of a
# midpoint, a code differs by one. CODE_SLACK bounds how many of a step's codes may do so.

CODE_SLACK = 0.002


def lowbit_pair(backend, name, kw, sizes, dtype=torch.float32, seed=0, device="cpu", **storage):
    """Params of ``sizes`` and two optimizers ``name(**kw, **storage)`` on them: ``backend``'s
    and the reference's (on the same device)."""
    gen = torch.Generator().manual_seed(seed)
    pc = [torch.nn.Parameter(torch.randn(n, generator=gen).to(device, dtype)) for n in sizes]
    pr = [torch.nn.Parameter(p.detach().clone()) for p in pc]
    cls = getattr(fusedopt, name)
    return pc, pr, cls(pc, **kw, **storage, backend=backend), cls(pr, **kw, **storage, backend="reference")


def lowbit_step_both(pc, pr, oc, orf, seed):
    """One step of each from the fused optimizer's params and states (so that each step is
    compared on its own; copied in place, so that the counters kept outside the state go on)."""
    with torch.no_grad():
        for a, b in zip(pr, pc):
            a.copy_(b)
            for key, v in oc.state[b].items():
                orf.state[a][key].copy_(v)
    gen = torch.Generator().manual_seed(seed)
    for a, b in zip(pc, pr):
        g = torch.randn(a.shape, generator=gen).to(a.device, a.dtype)
        a.grad, b.grad = g.clone(), g.clone()
    oc.step()
    orf.step()


def assert_codes_close(got, want, what, slack=CODE_SLACK):
    """Lists of uint8 codes: equal, but for at most ``slack`` of them, which differ by one.
    Returns the number that differ."""
    differ = total = 0
    for i, (a, b) in enumerate(zip(got, want)):
        d = (a.int() - b.to(a.device).int()).abs()
        if d.numel():
            assert int(d.max()) <= 1, f"{what}: codes of tensor {i} differ by {int(d.max())}"
        differ += int((d != 0).sum())
        total += d.numel()
    assert differ <= slack * max(total, 1), f"{what}: {differ} of {total} codes differ"
    return differ


def assert_lowbit_states_match(oc, orf, pc, pr, what):
    """Two optimizers' states: scales within float32 rounding, other states within the float32
    tolerance, codes as :func:`assert_codes_close`."""
    got, want = [], []
    for a, b in zip(pc, pr):
        for key, v in oc.state[a].items():
            w = orf.state[b][key]
            if v.dtype == torch.uint8:
                got.append(v)
                want.append(w)
            elif key.endswith(lowbit.ABSMAX_SUFFIX):
                torch.testing.assert_close(v, w, rtol=1e-5, atol=0, equal_nan=True, msg=f"{what} {key}")
            else:
                torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-5, msg=f"{what} {key}")
    return assert_codes_close(got, want, what)  # (none for SGD without momentum)


# Direct backend calls with scales= and rounding= (docs/kernel-interface.md): every algorithm,
# and each option that changes its slots.
LOWBIT_VARIANTS = [
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("adagrad", {"lr_decay": 0.01}),
    ("adadelta", {}),
    ("rmsprop", {}),
    ("rmsprop", {"momentum": 0.9}),
    ("rmsprop", {"centered": True}),
    ("rmsprop", {"centered": True, "momentum": 0.9}),
    ("adam", {}),
    ("adam", {"amsgrad": True}),
    ("yogi", {}),
    ("radam", {}),
    ("adamax", {}),
    ("lion", {}),
    ("nadam", {}),
    ("lamb", {}),
]
LOWBIT_COUNTS = (3.0, 7.0, 1.0)  # per tensor in turn: SGD's first step, RAdam's both branches


def lowbit_variant_id(v):
    return v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()) or "default"


def _lowbit_state(slot, n, gen, init):
    """A valid random float32 state spanning a few decades (RMSprop's as random_state: its
    centered square average stays clear above grad_avg**2)."""
    s = random_state(slot, n, gen, init)
    return s if slot in ("square_avg", "grad_avg") else s * torch.exp(torch.randn(n, generator=gen))


def lowbit_call(algo, options, sizes, dtype=torch.float32, seed=5, quantized=True, rounding=None,
                counts=LOWBIT_COUNTS, device="cpu"):
    """One direct ``backend.step`` call on ``device``: two rows (the second: half the lr, weight
    decay, maximize flipped), the step counts ``counts`` in turn, random states quantized by
    ``lowbit.quantize_blockwise`` (``scales`` then given), ``rounding`` per tensor when given."""
    spec = algorithms.ALGORITHMS[algo]
    group = {**spec.defaults, **options}
    other = {**group, "lr": group["lr"] * 0.5, "weight_decay": 0.01, "maximize": not group["maximize"]}
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=gen).to(device, dtype) for n in sizes]
    grads = [torch.randn(n, generator=gen).to(device, dtype) for n in sizes]
    init = spec.slot_init(group)
    states, scales = [], []
    for slot in spec.SLOTS:
        values = [_lowbit_state(slot, n, gen, init[slot]) for n in sizes] if slot in init else []
        if quantized:
            pairs = [lowbit.quantize_blockwise(v, lowbit.state_map(slot)) for v in values]
            states.append([c.to(device) for c, _ in pairs])
            scales.append([a.to(device) for _, a in pairs])
        else:
            states.append([v.to(device) for v in values])
    call = dict(algo=algo, flags=spec.flags(group), params=params, grads=grads, states=states, master=None,
                index=torch.tensor([[0, i % 2] for i in range(len(sizes))], dtype=torch.int64).reshape(-1, 2),
                hyper=torch.tensor([spec.hyper_row(group), spec.hyper_row(other)], dtype=torch.float64,
                                   device=device))
    set_counters(spec, call, [counts[i % len(counts)] for i in range(len(sizes))])
    if quantized:
        call["scales"] = scales
    if rounding is not None:
        call["rounding"] = rounding
    return spec, call


def exact_sgd_call(dtype, rounding, quantized, sizes, device="cpu", counts=LOWBIT_COUNTS):
    """A direct SGD call whose float32 update every backend computes exactly alike: lr 2**-6
    (2**-7 in the second row), momentum 0.5, no dampening, no weight decay (every product exact,
    each sum one rounding, fused or not), so that stochastic rounding and quantization can be
    compared bit for bit."""
    spec, call = lowbit_call("sgd", {"momentum": 0.5, "lr": 2.0 ** -6}, sizes, dtype, quantized=quantized,
                             rounding=rounding, counts=counts, device=device)
    call["hyper"][:, spec.HYPER.index("weight_decay")] = 0.0
    return spec, call


def assert_lowbit_calls_match(got, want, what, exact=False, slack=CODE_SLACK):
    """Two direct calls' results: params (within their dtype's tolerance, or bit for bit), master
    weights, states: codes (:func:`assert_codes_close`, or equal) and scales (within float32
    rounding, or equal)."""
    def bits(t):
        return (t.view(torch.int16) if t.element_size() == 2 else t).cpu()

    for i, (a, b) in enumerate(zip(got["params"], want["params"])):
        if exact:
            assert torch.equal(bits(a), bits(b)), f"{what} param {i}"
        else:
            rtol, atol = TOL[a.dtype]
            torch.testing.assert_close(a, b.to(a.device), rtol=rtol, atol=atol, msg=lambda m: f"{what} param {i}: {m}")
    for i, (a, b) in enumerate(zip(got["master"] or [], want["master"] or [])):
        torch.testing.assert_close(a, b.to(a.device), rtol=1e-5, atol=1e-5, msg=lambda m: f"{what} master {i}: {m}")
    if want.get("scales") is None:
        for k, (sa, sb) in enumerate(zip(got["states"], want["states"])):
            for i, (a, b) in enumerate(zip(sa, sb)):
                torch.testing.assert_close(a, b.to(a.device), rtol=1e-5, atol=1e-5,
                                           msg=lambda m: f"{what} state {k}/{i}: {m}")
        return
    for k, (sa, sb, ca, cb) in enumerate(zip(got["states"], want["states"], got["scales"], want["scales"])):
        for i, (a, b) in enumerate(zip(ca, cb)):
            torch.testing.assert_close(a, b.to(a.device), rtol=0 if exact else 1e-5, atol=0, equal_nan=True,
                                       msg=lambda m: f"{what} scales of slot {k}, tensor {i}: {m}")
        if exact:
            assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(sa, sb)), f"{what} codes of slot {k}"
        else:
            assert_codes_close(sa, sb, f"{what} slot {k}", slack)


def quantizer_probes(signed: bool) -> torch.Tensor:
    """Blocks of 256 that probe the quantizer's rule: exact midpoints (absmax 1), their float32
    neighbours, the map's own values, a negative maximum, NaN, +-inf, zeros (and -0.0),
    subnormals, six decades of magnitudes, a partial last block."""
    qmap = lowbit.dynamic_map(signed)
    mid = lowbit.midpoints(qmap)
    one = torch.ones(1)
    blocks = [torch.cat([one, mid]), torch.cat([one, torch.nextafter(mid, torch.tensor(2.0))]),
              torch.cat([one, torch.nextafter(mid, torch.tensor(-2.0))]), torch.cat([one, qmap[:-1]]),
              qmap * 3.0]
    if signed:
        blocks.append(torch.cat([-one, -mid]))  # absmax from a negative element
    gen = torch.Generator().manual_seed(3)
    wide = torch.randn(256, generator=gen) * torch.logspace(-6, 0, 256)
    wide = wide if signed else wide.abs()
    nan, inf, ninf = wide.clone(), wide.clone(), wide.clone()
    nan[5] = float("nan")
    inf[7] = float("inf")
    ninf[0] = -float("inf") if signed else float("inf")
    zeros = torch.zeros(256)
    if signed:
        zeros[::2] = -0.0
    tiny = torch.full((256,), 1e-40) * torch.arange(256)  # subnormals
    blocks += [wide, nan, inf, ninf, zeros, tiny, torch.full((256,), 1e-45), wide[:100]]
    return torch.cat(blocks).float()


def assert_quantizer_is_the_rule(backend, signed, device="cpu"):
    """SGD's first momentum step stores the gradient itself as the buffer (signed map); Adamax's
    first exp_inf with eps 0 is |g| (unsigned map): ``backend``'s codes and scales of
    :func:`quantizer_probes` are those of lowbit.quantize_blockwise, exactly."""
    x = quantizer_probes(signed)
    p = torch.nn.Parameter(torch.zeros(x.numel(), device=device))
    if signed:
        opt = fusedopt.SGD([p], lr=0.0, momentum=0.5, state_dtype="8bit", min_8bit_size=1, backend=backend)
        slot = "momentum_buffer"
    else:
        opt = fusedopt.Adamax([p], lr=0.0, eps=0.0, state_dtype="8bit", min_8bit_size=1, backend=backend)
        slot = "exp_inf"
    p.grad = x.to(device)
    opt.step()
    codes, absmax = lowbit.quantize_blockwise(x.abs() if not signed else x, lowbit.state_map(slot))
    got_codes, got_absmax = opt.state[p][slot].cpu(), opt.state[p][slot + lowbit.ABSMAX_SUFFIX].cpu()
    assert torch.equal(got_codes, codes), (got_codes != codes).nonzero()[:10].flatten().tolist()
    assert torch.equal(got_absmax.isnan(), absmax.isnan()) and absmax.isnan().any()
    assert torch.equal(got_absmax.nan_to_num(), absmax.nan_to_num())
    # the exact midpoints (absmax 1) go up: codes 1..255 after the 1.0 (code 255)
    assert got_codes[1:256].long().tolist() == list(range(1, 256))


def assert_stochastic_rounding_is_the_rule(backend, dtype, scale, sizes=(1, 3, 257, 16384 + 300, 70000),
                                           device="cpu"):
    """Plain SGD with power-of-two learning rates (lr * g exact, so p - lr * g is one rounding in
    every backend, fused multiply-add or not) on params of two groups and odd sizes: the stored
    16-bit params are the reference's bit for bit over three steps (a seed above 2**63; offsets
    by param position), and some of them move."""
    gen = torch.Generator().manual_seed(4)
    pc = [torch.nn.Parameter((torch.randn(n, generator=gen) * scale).to(device, dtype)) for n in sizes]
    pr = [torch.nn.Parameter(p.detach().clone()) for p in pc]

    def make(params, name):
        groups = [{"params": params[:2], "lr": 2.0 ** -4 * scale}, {"params": params[2:], "lr": 2.0 ** -6 * scale}]
        return fusedopt.SGD(groups, lr=1.0, stochastic_rounding=True, rounding_seed=2 ** 63 + 5, backend=name)

    oc, orf = make(pc, backend), make(pr, "reference")
    moved = 0
    for step in range(3):
        g = [torch.randn(p.shape, generator=gen).to(device, dtype) for p in pc]
        for a, b, gi in zip(pc, pr, g):
            a.grad, b.grad = gi.clone(), gi.clone()
        before = [a.detach().clone() for a in pc]
        oc.step()
        orf.step()
        for a, b, c in zip(pc, pr, before):
            assert torch.equal(a.detach().view(torch.int16), b.detach().view(torch.int16)), (dtype, step)
            moved += int((a.detach() != c).sum())
    assert moved > 0
