"""8-bit block-wise states (state_dtype="8bit", Note [8-bit states]): the memory they take, the
step as dequantize -> the float32 update -> quantize (against the float32 reference given the
same dequantized states), training that tracks float32 states, and checkpoints both ways with
float32 optimizers and torch.optim."""
from __future__ import annotations

import copy

import pytest
import torch

import fusedopt
from fusedopt import lowbit
from parity import REPRESENTATIVE

NAMES = [name for name, _ in REPRESENTATIVE]
BIG, SMALL = 4096 + 300, 300  # one param quantized (two blocks' worth past the threshold), one not


def _params(seed=0, sizes=(BIG, SMALL)):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in sizes]


def _grads(params, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(steps)]


def _run(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()


def _kw(name):
    return dict(dict(REPRESENTATIVE)[name])


def test_every_state_slot_has_a_map():
    for algo in fusedopt.ALGORITHMS.values():
        for slot in algo.SLOTS:
            assert (slot in lowbit.SIGNED_STATES) != (slot in lowbit.UNSIGNED_STATES), (algo.name, slot)


@pytest.mark.parametrize("name", NAMES)
def test_states_are_codes_and_scales_and_small_params_keep_float32(name):
    params = _params()
    opt = getattr(fusedopt, name)(params, **_kw(name), state_dtype="8bit")
    _run(opt, params, _grads(params, 2))
    big, small = (opt.state[p] for p in params)
    slots = [s for s in opt.algorithm.SLOTS if s in big]
    assert slots, name
    for s in slots:
        assert big[s].dtype == torch.uint8 and big[s].shape == params[0].shape
        assert big[s + "_absmax"].dtype == torch.float32 and big[s + "_absmax"].shape == (-(-BIG // 256),)
        assert small[s].dtype == torch.float32 and s + "_absmax" not in small


def test_scales_of_whole_block_rows_are_kept_per_row_and_load_from_either_shape():
    """A param whose rows are whole blocks keeps its scales as [rows, blocks per row] (a sharded
    param holds its rows' scales, Note [8-bit DTensor states]): the same blocks, codes and
    scales as the same values flattened; a flat-scaled state dict loads into it, and one of a
    param of the same size with another shape is refused."""
    gen = torch.Generator().manual_seed(12)
    w0, v0 = torch.randn(7, 512, generator=gen), torch.randn(512, 7, generator=gen)
    rows = torch.nn.Parameter(w0.clone())    # rows of 2 blocks
    odd = torch.nn.Parameter(v0.clone())     # rows of 7 elements: flat blocks
    flat = torch.nn.Parameter(w0.reshape(-1).clone())
    grads = _grads([rows, odd], 2, seed=12)
    opt = fusedopt.Adam([rows, odd], state_dtype="8bit", min_8bit_size=256)
    _run(opt, [rows, odd], grads)
    flat_opt = fusedopt.Adam([flat], state_dtype="8bit", min_8bit_size=256)
    _run(flat_opt, [flat], [[g[0].reshape(-1)] for g in grads])
    for s in ("exp_avg", "exp_avg_sq"):
        assert lowbit.scale_shape(rows.shape) == (7, 2) and opt.state[rows][s + "_absmax"].shape == (7, 2)
        assert lowbit.scale_shape(odd.shape) == (14,) and opt.state[odd][s + "_absmax"].shape == (14,)
        assert torch.equal(opt.state[rows][s].reshape(-1), flat_opt.state[flat][s])
        assert torch.equal(opt.state[rows][s + "_absmax"].reshape(-1), flat_opt.state[flat][s + "_absmax"])
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["exp_avg_absmax"] = sd["state"][0]["exp_avg_absmax"].reshape(-1)
    again = fusedopt.Adam([torch.nn.Parameter(w0.clone()), torch.nn.Parameter(v0.clone())], state_dtype="8bit",
                          min_8bit_size=256)
    again.load_state_dict(sd)
    got = again.state[again.param_groups[0]["params"][0]]["exp_avg_absmax"]
    assert got.shape == (7, 2) and torch.equal(got, opt.state[rows]["exp_avg_absmax"])
    other = fusedopt.Adam([torch.nn.Parameter(torch.zeros(14, 256)), torch.nn.Parameter(v0.clone())],
                          state_dtype="8bit", min_8bit_size=256)
    with pytest.raises(ValueError, match="the parameter has"):
        other.load_state_dict(opt.state_dict())


def test_adamw_8bit_state_bytes_per_parameter():
    """The issue's target: AdamW at most 2.1 bytes of state per parameter (uint8 codes of both
    moments, 2 x 4 / 256 bytes of scales; the step count is 4 bytes per tensor)."""
    p = torch.nn.Parameter(torch.randn(1 << 20))
    opt = fusedopt.AdamW([p], state_dtype="8bit")
    _run(opt, [p], _grads([p], 1))
    state_bytes = sum(v.numel() * v.element_size() for k, v in opt.state[p].items() if k != "step")
    assert state_bytes / p.numel() <= 2.1, state_bytes / p.numel()
    assert state_bytes == 2 * p.numel() + 2 * 4 * (p.numel() // 256)


def test_min_8bit_size_is_the_threshold():
    params = _params(sizes=(600, 599))
    opt = fusedopt.Adam(params, state_dtype="8bit", min_8bit_size=600)
    _run(opt, params, _grads(params, 1))
    assert opt.state[params[0]]["exp_avg"].dtype == torch.uint8
    assert opt.state[params[1]]["exp_avg"].dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_step_is_dequantize_update_quantize(name):
    """From the same 8-bit states: one 8-bit step gives the param of the float32 reference step
    from the dequantized states, and the codes and scales that quantizing its states gives. (A
    reducing algorithm's second traversal reads the moments as the first stored them, quantized:
    its param is within the quantization error of the float32 one.)"""
    kw = _kw(name)
    cls = getattr(fusedopt, name)
    p8 = _params(2)
    o8 = cls(p8, **kw, state_dtype="8bit", backend="reference")  # its float32-state param too
    grads = _grads(p8, 4, seed=3)
    _run(o8, p8, grads[:3])
    pf = [torch.nn.Parameter(p.detach().clone()) for p in p8]
    of = cls(pf, **kw, backend="reference")
    of.load_state_dict(lowbit.dequantize_state_dict(o8.state_dict()))
    _run(o8, p8, grads[3:])
    _run(of, pf, grads[3:])
    for i, (a, b) in enumerate(zip(p8, pf)):
        if o8.algorithm.REDUCES and i == 0:
            diff = (a - b).abs()
            lr = kw.get("lr", o8.defaults["lr"])  # 8-bit moments: u within about 1%
            assert float(diff.max()) < 0.5 * lr and float(diff.mean()) < 0.03 * lr, (name, float(diff.max()))
            assert not torch.equal(a, b)  # it did read the quantized moments
        else:
            assert torch.equal(a, b), name
    for s in [s for s in o8.algorithm.SLOTS if s + "_absmax" in o8.state[p8[0]]]:
        codes, absmax = lowbit.quantize_blockwise(of.state[pf[0]][s], lowbit.state_map(s))
        assert torch.equal(o8.state[p8[0]][s], codes), (name, s)
        assert torch.equal(o8.state[p8[0]][s + "_absmax"], absmax), (name, s)
        torch.testing.assert_close(o8.state[p8[1]][s], of.state[pf[1]][s], rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_training_with_8bit_states_tracks_float32_states(name):
    """Least squares on 8,192 weights, 60 steps: the 8-bit states make at least 95% of the loss
    decrease that float32 states make."""
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(64, 8192, generator=gen) / 90.0
    target = torch.randn(64, generator=gen)
    kw = _kw(name)
    losses = {}
    for sdt in (None, "8bit"):
        w = torch.nn.Parameter(torch.zeros(8192))
        opt = getattr(fusedopt, name)([w], **kw, state_dtype=sdt)
        for _ in range(60):
            loss = ((a @ w - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[sdt] = float(((a @ w.detach() - target) ** 2).mean())
    start = float((target ** 2).mean())
    assert losses[None] < start, (name, losses)
    assert start - losses["8bit"] >= 0.95 * (start - losses[None]), (name, start, losses)


# -- checkpoints -------------------------------------------------------------------------------

def test_8bit_checkpoint_round_trip_continues_identically():
    params = _params(4)
    opt = fusedopt.AdamW(params, state_dtype="8bit")
    grads = _grads(params, 6, seed=4)
    _run(opt, params, grads[:3])
    sd = copy.deepcopy(opt.state_dict())
    assert sd["state"][0]["exp_avg"].dtype == torch.uint8 and "exp_avg_absmax" in sd["state"][0]
    clone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = fusedopt.AdamW(clone, state_dtype="8bit")
    opt2.load_state_dict(sd)
    _run(opt, params, grads[3:])
    _run(opt2, clone, grads[3:])
    for a, b in zip(params, clone):
        assert torch.equal(a, b)
        for k, v in opt.state[a].items():
            assert torch.equal(v, opt2.state[b][k]), k


def test_dequantized_state_dict_loads_into_torch_optim_and_torch_state_dict_quantizes():
    params = _params(6)
    opt = fusedopt.AdamW(params, state_dtype="8bit")
    _run(opt, params, _grads(params, 3, seed=6))
    plain = lowbit.dequantize_state_dict(opt.state_dict())
    assert all(not k.endswith("_absmax") for st in plain["state"].values() for k in st)
    tp = [torch.nn.Parameter(p.detach().clone()) for p in params]
    topt = torch.optim.AdamW(tp)
    topt.load_state_dict(plain)
    st8 = opt.state[params[0]]
    want = lowbit.dequantize_blockwise(st8["exp_avg_sq"], st8["exp_avg_sq_absmax"], lowbit.state_map("exp_avg_sq"))
    assert torch.equal(topt.state[tp[0]]["exp_avg_sq"], want)
    # and back: torch.optim's float32 state dict into an 8-bit optimizer is quantized
    _run(topt, tp, _grads(tp, 1, seed=7))
    back = [torch.nn.Parameter(p.detach().clone()) for p in tp]
    opt3 = fusedopt.AdamW(back, state_dtype="8bit")
    opt3.load_state_dict(topt.state_dict())
    for s in ("exp_avg", "exp_avg_sq"):
        codes, absmax = lowbit.quantize_blockwise(topt.state[tp[0]][s], lowbit.state_map(s))
        assert torch.equal(opt3.state[back[0]][s], codes) and torch.equal(opt3.state[back[0]][s + "_absmax"], absmax)
        assert opt3.state[back[1]][s].dtype == torch.float32  # the small one stays float32
    assert opt3.param_groups[0]["state_dtype"] == "8bit"


def test_8bit_state_dict_into_a_float32_optimizer_is_dequantized():
    params = _params(8)
    opt = fusedopt.Adam(params, state_dtype="8bit")
    _run(opt, params, _grads(params, 2, seed=8))
    other = fusedopt.Adam([torch.nn.Parameter(p.detach().clone()) for p in params])
    other.load_state_dict(opt.state_dict())
    st, st8 = other.state[other.param_groups[0]["params"][0]], opt.state[params[0]]
    assert "exp_avg_absmax" not in st and st["exp_avg"].dtype == torch.float32
    assert torch.equal(st["exp_avg"], lowbit.dequantize_blockwise(st8["exp_avg"], st8["exp_avg_absmax"],
                                                                  lowbit.state_map("exp_avg")))
    assert other.param_groups[0]["state_dtype"] is None


def test_bad_scales_are_refused_and_nothing_changes():
    params = _params(9)
    opt = fusedopt.Adam(params, state_dtype="8bit")
    _run(opt, params, _grads(params, 1, seed=9))
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["exp_avg_absmax"] = sd["state"][0]["exp_avg_absmax"][:-1]
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    for k, v in before["state"][0].items():
        assert torch.equal(v, after["state"][0][k])


# -- features and errors -----------------------------------------------------------------------

def test_overflow_step_changes_no_code_and_no_scale():
    params = _params(10)
    opt = fusedopt.AdamW(params, state_dtype="8bit")
    _run(opt, params, _grads(params, 2, seed=10))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # creates the scale tensor, as scaling the first loss does
    before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    p_before = params[0].detach().clone()
    for p, g in zip(params, _grads(params, 1, seed=11)[0]):
        p.grad = g * 1024.0
    params[0].grad[0] = float("inf")
    scaler.step(opt)
    assert torch.equal(params[0].detach(), p_before)
    for k, v in opt.state[params[0]].items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kw,match", [({"state_dtype": "4bit"}, "state_dtype"),
                                      ({"min_8bit_size": 0}, "min_8bit_size"),
                                      ({"min_8bit_size": 1.5}, "min_8bit_size")])
def test_invalid_8bit_options_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        fusedopt.Adam(_params(), **kw)
