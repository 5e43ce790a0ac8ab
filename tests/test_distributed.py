"""fusedopt under torch.distributed: FSDP2 (DTensor params), DDP, ZeRO, distributed checkpoints.

One spawn of two processes over gloo on 127.0.0.1 runs every check: each algorithm trains a
small MLP for 20 steps under FSDP2, DDP and ZeroRedundancyOptimizer and must match
single-process training on the same global batch; gradient clipping gives torch's global norm
with one all-reduce; a torch.distributed.checkpoint round trip into fresh modules continues
identically. 8-bit states and stochastic rounding under FSDP2 give bit for bit what one process
gives on the same gradients, and their checkpoints reshard exactly: one process -> two ranks ->
one process. Failures are collected per case in the workers and reported together; collectives
and the whole spawn have timeouts, so a hang fails instead of blocking.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from parity import REPRESENTATIVE, case_id

WORLD = 2
STEPS = 20
GLOBAL_BATCH = 16
SPAWN_TIMEOUT_S = float(os.environ.get("FUSEDOPT_DIST_TIMEOUT", "240"))
COLLECTIVE_TIMEOUT_S = 60
# float32: the sharded and the single-process runs differ only in how gradients are summed
# (reduce-scatter / all-reduce of per-rank means vs one mean over the global batch).
RTOL, ATOL = 1e-5, 1e-6
# Centered RMSprop divides by sqrt(square_avg - grad_avg^2), which cancels when the gradients
# barely vary: its momentum buffer magnifies that summation-order rounding to ~5e-5 relative
# after 20 steps, with the reference backend as with the fused one (the params stay within
# RTOL/ATOL).
STATE_TOL = {"RMSprop": (2e-4, 1e-4)}

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the worker (runs in each spawned process) --------------------------------------------
def _tanh_mlp(seed: int, widths: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Linear layers of ``widths`` with tanh between them, N(0, 0.25) weights drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [torch.nn.Tanh()] if i else []
        layers.append(torch.nn.Linear(a, b))
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.to(dtype)


def _mlp(seed: int) -> torch.nn.Module:
    # odd widths: FSDP2 shards unevenly and a bias shard is empty on one rank
    return _tanh_mlp(seed, (6, 13, 9, 1))


def _batches():
    gen = torch.Generator().manual_seed(1234)
    return [(torch.randn(GLOBAL_BATCH, 6, generator=gen), torch.randn(GLOBAL_BATCH, 1, generator=gen))
            for _ in range(STEPS)]


def _local(batch, rank):
    n = GLOBAL_BATCH // WORLD
    return tuple(t[rank * n:(rank + 1) * n] for t in batch)


def _train(model, opt, batches, rank=None, clip=None):
    for batch in batches:
        x, y = batch if rank is None else _local(batch, rank)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if clip is not None:
            clip(model)
        opt.step()
        opt.zero_grad(set_to_none=True)


def _wide(seed: int, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A model for 8-bit states (``LOWBIT``): weights whose rows are whole 256-element blocks, one
    sharded 7/6 rows, one with a single row (one rank holds none of it), and params that keep
    float32 states under FSDP2 (rows of 13 elements, a 512-element bias; 8-bit in one process)."""
    return _tanh_mlp(seed, (256, 13, 512, 1), dtype)


def _fsdp(seed: int, build=_mlp, *args):
    from torch.distributed.fsdp import fully_shard
    model = build(seed, *args)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def _full(t):
    from torch.distributed.tensor import DTensor
    return t.full_tensor() if isinstance(t, DTensor) else t


def _local_t(t):
    from torch.distributed.tensor import DTensor
    return t._local_tensor if isinstance(t, DTensor) else t


def _assert_params(model, ref, what, rtol=RTOL, atol=ATOL):
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(_full(p.detach()), q.detach(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"{what}: {name}: {m}")


def _assert_states(opt, model, ref_opt, ref, what, tol=(RTOL, ATOL)):
    rtol, atol = tol
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        sa, sb = opt.state[p], ref_opt.state[q]
        assert set(sa) == set(sb), f"{what}: {name}: state keys {sorted(sa)} != {sorted(sb)}"
        for key in sorted(sa):
            torch.testing.assert_close(_full(sa[key]), sb[key], rtol=rtol, atol=atol,
                                       msg=lambda m: f"{what}: {name} state {key!r}: {m}")


class _DTensorOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every op that reaches the dispatcher with a DTensor argument."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.distributed.tensor import DTensor
        leaves = torch.utils._pytree.tree_leaves((args, kwargs or {}))
        if any(isinstance(x, DTensor) for x in leaves):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _check_fsdp(rank, name, kw, backend, batches, clip_norm=None):
    import fusedopt
    cls = getattr(fusedopt, name)
    options = dict(kw, backend=backend)
    if clip_norm is not None:
        options["max_grad_norm"] = clip_norm
    ref = _mlp(0)
    ref_opt = cls(ref.parameters(), **options)
    _train(ref, ref_opt, batches)
    model = _fsdp(0)
    opt = cls(model.parameters(), **options)
    _train(model, opt, batches[:1], rank)
    # after the first step (state created), a step runs on local tensors only
    loss = torch.nn.functional.mse_loss(model(_local(batches[1], rank)[0]), _local(batches[1], rank)[1])
    loss.backward()
    with _DTensorOps() as mode:
        opt.step()
    opt.zero_grad(set_to_none=True)
    assert not mode.ops, f"step() dispatched DTensor ops: {sorted(set(mode.ops))}"
    _train(model, opt, batches[2:], rank)
    what = f"FSDP2 {name}{options}"
    _assert_params(model, ref, what)
    _assert_states(opt, model, ref_opt, ref, what, STATE_TOL.get(name, (RTOL, ATOL)))
    for p in model.parameters():
        for key, v in opt.state[p].items():
            if key not in opt.algorithm.COUNTERS:  # the step count and NAdam's mu_product are 0-dim
                assert type(v) is type(p), f"{what}: state {key!r} is a {type(v).__name__}, not a DTensor"


def _check_ddp(rank, name, kw, backend, batches):
    import fusedopt
    from torch.nn.parallel import DistributedDataParallel as DDP
    cls = getattr(fusedopt, name)
    ref = _mlp(0)
    ref_opt = cls(ref.parameters(), **kw, backend=backend)
    _train(ref, ref_opt, batches)
    model = DDP(_mlp(0))
    opt = cls(model.parameters(), **kw, backend=backend)
    _train(model, opt, batches, rank)
    _assert_params(model.module, ref, f"DDP {name}{kw}")


def _check_zero(rank, name, kw, backend, batches):
    import fusedopt
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP
    cls = getattr(fusedopt, name)
    ref = _mlp(0)
    ref_opt = cls(ref.parameters(), **kw, backend=backend)
    _train(ref, ref_opt, batches)
    model = DDP(_mlp(0))
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, **kw, backend=backend)
    assert isinstance(opt.optim, cls)
    _train(model, opt, batches, rank)
    _assert_params(model.module, ref, f"ZeRO {name}{kw}")


def _check_checkpoint(rank, name, kw, backend, batches, folder):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    import fusedopt
    cls = getattr(fusedopt, name)
    half = len(batches) // 2
    model = _fsdp(0)
    opt = cls(model.parameters(), **kw, backend=backend)
    _train(model, opt, batches[:half], rank)
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=folder)
    _train(model, opt, batches[half:], rank)
    # a fresh job: other initial values, a new optimizer, the checkpoint loaded, then continue
    fresh = _fsdp(7)
    fresh_opt = cls(fresh.parameters(), **kw, backend=backend)
    sd = {"model": get_model_state_dict(fresh), "optim": get_optimizer_state_dict(fresh, fresh_opt)}
    dcp.load(sd, checkpoint_id=folder)
    set_model_state_dict(fresh, sd["model"])
    set_optimizer_state_dict(fresh, fresh_opt, sd["optim"])
    _train(fresh, fresh_opt, batches[half:], rank)
    what = f"checkpoint {name}{kw}"
    for (pname, p), q in zip(model.named_parameters(), fresh.parameters()):
        torch.testing.assert_close(_local_t(q.detach()), _local_t(p.detach()), rtol=0, atol=0,
                                   msg=lambda m: f"{what}: {pname}: {m}")
        sa, sb = opt.state[p], fresh_opt.state[q]
        assert set(sa) == set(sb), f"{what}: {pname}: state keys {sorted(sa)} != {sorted(sb)}"
        for key in sa:
            torch.testing.assert_close(_local_t(sb[key]).cpu(), _local_t(sa[key]).cpu(), rtol=0, atol=0,
                                       msg=lambda m: f"{what}: {pname} state {key!r}: {m}")


def _check_clip(rank, batches):
    """fusedopt.clip_grad_norm_ under FSDP2: torch's value and type, one all-reduce."""
    import fusedopt
    model = _fsdp(0)
    x, y = _local(batches[0], rank)
    torch.nn.functional.mse_loss(model(x), y).backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    expected = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
    clipped = [p.grad.detach().clone() for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    calls = []
    all_reduce = dist.all_reduce

    def counting(*args, **kwargs):
        calls.append(1)
        return all_reduce(*args, **kwargs)

    dist.all_reduce = counting
    try:
        got = fusedopt.clip_grad_norm_(model.parameters(), 0.05)
    finally:
        dist.all_reduce = all_reduce
    assert type(got) is type(expected), f"clip_grad_norm_ returned {type(got).__name__}, torch {type(expected).__name__}"
    assert got.placements == expected.placements, f"placements {got.placements} != torch's {expected.placements}"
    torch.testing.assert_close(got.full_tensor(), expected.full_tensor(), rtol=RTOL, atol=ATOL)
    assert len(calls) == 1, f"{len(calls)} all-reduces for the global norm, expected one"
    for p, want in zip(model.parameters(), clipped):
        torch.testing.assert_close(_full(p.grad), _full(want), rtol=RTOL, atol=ATOL)
    # the single-process norm of the global batch
    ref = _mlp(0)
    torch.nn.functional.mse_loss(ref(batches[0][0]), batches[0][1]).backward()
    ref_norm = fusedopt.clip_grad_norm_(ref.parameters(), 0.05)
    torch.testing.assert_close(got.full_tensor(), ref_norm, rtol=RTOL, atol=ATOL)
    assert float(ref_norm) > 0.05, "the clipping tests need a gradient norm above max_norm"


# -- 8-bit states and stochastic rounding (Note [8-bit DTensor states]) ---------------------
LOWBIT = {"state_dtype": "8bit", "min_8bit_size": 256}
LOWBIT_STEPS = 4
# (algorithm, options, param dtype): every algorithm with 8-bit states; stochastic rounding of
# bf16 params with 8-bit states and without states
LOWBIT_CASES = ([(name, {**kw, **LOWBIT}, torch.float32) for name, kw in REPRESENTATIVE]
                + [("AdamW", {"stochastic_rounding": True, "rounding_seed": 5, **LOWBIT}, torch.bfloat16),
                   ("SGD", {"lr": 0.05, "stochastic_rounding": True, "rounding_seed": 3}, torch.bfloat16)])
# LAMB all-reduces its per-tensor sums of squares between ranks: another summation order than
# one process's, so its trust ratios differ in the last bits (its codes have stayed equal)
LOWBIT_TOL = {"LAMB": (1e-5, 1e-6)}
# The chain: CHAIN_STEPS[0] steps in one process, saved with torch.distributed.checkpoint, loaded
# by two ranks under FSDP2, CHAIN_STEPS[1] more steps, saved, loaded by one process again: the
# states of CHAIN_STEPS[0] + CHAIN_STEPS[1] steps in one process, bit for bit.
CHAIN = ("AdamW", {"weight_decay": 0.01, **LOWBIT})
CHAIN_STEPS = (3, 2)


def _rows_whole(p) -> bool:
    """Whether ``p``'s rows are whole 256-element blocks: 8-bit states under FSDP2 too."""
    return p.dim() >= 2 and (p.numel() // p.shape[0]) % 256 == 0


def _lowbit_groups(params) -> list[dict]:
    """One group per param, in order (stochastic rounding keys each param's bits by its place),
    with float32 states for those whose rows are not whole blocks: in one process, the states
    FSDP2 gives the same params in one group."""
    return [{"params": [p]} if _rows_whole(p) else {"params": [p], "state_dtype": None} for p in params]


def _give_grads(model, step: int) -> None:
    """The same gradients in every process (a sharded param gets its shard of them)."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    gen = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        g = (torch.randn(p.shape, generator=gen) * 0.1).to(p.dtype)
        p.grad = distribute_tensor(g, p.device_mesh, p.placements) if isinstance(p, DTensor) else g


def _steps(model, opt, steps) -> None:
    for s in steps:
        _give_grads(model, s)
        opt.step()
        opt.zero_grad(set_to_none=True)


def _check_fsdp_lowbit(rank, name, kw, dtype, backend):
    """FSDP2 with 8-bit states / stochastic rounding: what one process computes from the same
    gradients, bit for bit, the params whose rows are not whole blocks with float32 states;
    the states are DTensors; a step dispatches no DTensor op."""
    import fusedopt
    cls = getattr(fusedopt, name)
    ref = _wide(0, dtype)
    ref_opt = cls(_lowbit_groups(ref.parameters()), **kw, backend=backend)
    _steps(ref, ref_opt, range(LOWBIT_STEPS))
    model = _fsdp(0, _wide, dtype)
    opt = cls(model.parameters(), **kw, backend=backend)
    _steps(model, opt, range(1))
    _give_grads(model, 1)
    with _DTensorOps() as mode:
        opt.step()
    opt.zero_grad(set_to_none=True)
    assert not mode.ops, f"step() dispatched DTensor ops: {sorted(set(mode.ops))}"
    _steps(model, opt, range(2, LOWBIT_STEPS))
    what = f"FSDP2 {name}{kw} {dtype}"
    rtol, atol = LOWBIT_TOL.get(name, (0, 0))
    _assert_params(model, ref, what, rtol, atol)
    _assert_states(opt, model, ref_opt, ref, what, (rtol, atol))
    for p in model.parameters():
        for key, v in opt.state[p].items():
            if key not in opt.algorithm.COUNTERS:
                assert type(v) is type(p), f"{what}: state {key!r} is a {type(v).__name__}, not a DTensor"
                want = torch.uint8 if kw.get("state_dtype") == "8bit" and _rows_whole(p) and key in opt.algorithm.SLOTS \
                    else torch.float32
                assert v.dtype == want, f"{what}: state {key!r} of a {tuple(p.shape)} param is {v.dtype}, not {want}"


def _full_states(opt, model) -> dict:
    """Every param and state tensor of ``opt`` as a whole tensor, by parameter name (a collective)."""
    return {n: {"(param)": _full(p.detach()).clone(), **{k: _full(v).clone() for k, v in opt.state[p].items()}}
            for n, p in model.named_parameters()}


def _assert_full_states(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), f"{what}: params {sorted(got)} != {sorted(want)}"
    for n in got:
        assert got[n].keys() == want[n].keys(), f"{what}: {n}: state keys {sorted(got[n])} != {sorted(want[n])}"
        for k in got[n]:
            torch.testing.assert_close(got[n][k], want[n][k], rtol=0, atol=0, msg=lambda m: f"{what}: {n} {k!r}: {m}")


def _chain_model(build_sharded: bool):
    import fusedopt
    name, kw = CHAIN
    model = _fsdp(7, _wide) if build_sharded else _wide(7)
    return model, getattr(fusedopt, name)(_lowbit_groups(model.parameters()), **kw, backend=_backend())


def _chain_load(model, opt, folder) -> None:
    """Load the chain's checkpoint in ``folder`` into ``model`` and ``opt``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    sd = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(sd, checkpoint_id=folder)
    set_model_state_dict(model, sd["model"])
    set_optimizer_state_dict(model, opt, sd["optim"])


def _chain_save(model, opt, folder) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=folder)


def _check_chain(rank, folder):
    """The middle of the chain: one process's 8-bit checkpoint loaded by two ranks under FSDP2
    (exactly its states, resharded), CHAIN_STEPS[1] more steps, saved for the parent."""
    model, opt = _chain_model(build_sharded=True)
    _chain_load(model, opt, os.path.join(folder, "chain-1"))
    _assert_full_states(_full_states(opt, model), torch.load(os.path.join(folder, "chain-1.pt")),
                        "one process -> FSDP2")
    _steps(model, opt, range(CHAIN_STEPS[0], sum(CHAIN_STEPS)))
    _chain_save(model, opt, os.path.join(folder, "chain-2"))


def _worker(rank: int, port: int, folder: str, backend: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    batches = _batches()
    failures, timings = [], {}

    def case(label, fn, *args):
        t0 = time.perf_counter()
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - every failure is reported by the parent
            failures.append(f"[rank {rank}] {label}:\n{traceback.format_exc()}")
        timings[label] = round(time.perf_counter() - t0, 2)

    try:
        import fusedopt
        for name, kw in REPRESENTATIVE:
            case(f"fsdp2-{name}", _check_fsdp, rank, name, kw, backend, batches)
            case(f"checkpoint-{name}", _check_checkpoint, rank, name, kw, backend, batches,
                 os.path.join(folder, f"ckpt-{name}"))
            case(f"ddp-{name}", _check_ddp, rank, name, kw, backend, batches)
            case(f"zero-{name}", _check_zero, rank, name, kw, backend, batches)
        case("fsdp2-Adam-max_grad_norm", _check_fsdp, rank, "Adam", {"weight_decay": 0.01}, backend, batches, 0.05)
        case("fsdp2-SGD-max_grad_norm", _check_fsdp, rank, "SGD", {"lr": 0.05, "momentum": 0.9}, backend,
             batches, 0.05)
        case("clip_grad_norm_", _check_clip, rank, batches)
        for name, kw, dtype in LOWBIT_CASES:
            case(f"fsdp2-lowbit-{case_id((name, kw))}-{dtype}", _check_fsdp_lowbit, rank, name, kw, dtype, backend)
        case("chain-8bit", _check_chain, rank, folder)
        # DDP leaves the optimizer alone: 8-bit states (of the 13 x 9 weight) as in one process
        case("ddp-AdamW-8bit", _check_ddp, rank, "AdamW", {"state_dtype": "8bit", "min_8bit_size": 100}, backend,
             batches)
    finally:
        with open(os.path.join(folder, f"result-{rank}.json"), "w") as f:
            json.dump({"failures": failures, "timings": timings}, f)
        dist.destroy_process_group()
    # The results are written (the parent fails on any failure in them, and on a worker that
    # wrote none). Skip the interpreter's teardown: two runs of the whole suite this day saw a
    # worker abort there ("terminate called without an active exception") after every check
    # had passed and its results were written; not reproduced alone (noted for follow-up).
    os._exit(0)


# -- the test ------------------------------------------------------------------------------
def _backend() -> str:
    import fusedopt
    forced = os.environ.get("FUSEDOPT_DIST_BACKEND")  # e.g. "reference"
    if forced:
        return forced
    return "cpu" if "cpu" in fusedopt.available_backends("cpu") else "reference"


def test_distributed(tmp_path):
    """FSDP2, DDP and ZeRO training, clipping and checkpoints, every algorithm, two processes;
    8-bit states and stochastic rounding under FSDP2, and 8-bit checkpoints resharded from one
    process to two ranks and back."""
    folder = str(tmp_path)
    backend = _backend()
    # the chain's first link (see CHAIN): one process, no process group
    model, opt = _chain_model(build_sharded=False)
    _steps(model, opt, range(CHAIN_STEPS[0]))
    _chain_save(model, opt, os.path.join(folder, "chain-1"))
    torch.save(_full_states(opt, model), os.path.join(folder, "chain-1.pt"))
    _steps(model, opt, range(CHAIN_STEPS[0], sum(CHAIN_STEPS)))
    want = _full_states(opt, model)
    ctx = mp.start_processes(_worker, args=(_free_port(), folder, backend), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    try:
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"the distributed workers did not finish within {SPAWN_TIMEOUT_S:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    results = []
    for rank in range(WORLD):
        with open(os.path.join(folder, f"result-{rank}.json")) as f:
            results.append(json.load(f))
    print(f"backend {backend}; seconds per case (rank 0):", results[0]["timings"])
    failures = [msg for r in results for msg in r["failures"]]
    assert not failures, f"{len(failures)} distributed checks failed (backend {backend}):\n\n" + "\n".join(failures)
    # the chain's last link: the two ranks' checkpoint loaded by one process
    model, opt = _chain_model(build_sharded=False)
    _chain_load(model, opt, os.path.join(folder, "chain-2"))
    _assert_full_states(_full_states(opt, model), want, "FSDP2 -> one process")
