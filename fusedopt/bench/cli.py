"""``fusedopt-bench``: the command line and the measurement loop."""
from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import fusedopt

from . import report
from .impls import CASES, Case, Impl, Skip, implementations, select
from .timing import (CpuSnapshot, bytes_per_param, copy_bandwidth, inplace_bandwidth, interleave,
                     observed_state_dtypes, other_cpu_use, warm_up)
from .workloads import GPT2_CONFIGS, MODES, build, describe, in_groups, workload_groups, workload_shapes

# Defaults per device type; max_seconds caps the timed rounds of one workload and mode. The CPU
# set is sized so that a run with no arguments finishes in about 3 minutes on a 2-core machine
# (most of it the warm-up: first steps allocate every contender's states); the GPU set is the
# full one.
DEFAULTS = {
    "cpu": dict(workloads=["gpt2-mini", "1000x4K"], modes=["fp32", "bf16", "bf16-master"],
                repeats=10, warmup=2, max_seconds=10.0, copy_mib=256),
    "cuda": dict(workloads=["gpt2-1b", "1000x64K", "10000x1K"], modes=["fp32", "bf16", "bf16-master"],
                 repeats=50, warmup=5, max_seconds=30.0, copy_mib=1024),
}
QUICK = {
    "cpu": dict(workloads=["gpt2-mini"], modes=["fp32", "bf16"], repeats=5, warmup=2, max_seconds=3.0,
                copy_mib=128),
    "cuda": dict(workloads=["gpt2-small", "10000x1K"], modes=["fp32", "bf16"], repeats=10, warmup=3,
                 max_seconds=10.0, copy_mib=512),
}


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="fusedopt-bench",
        description="Time optimizer.step() of every fusedopt backend available on a device against "
                    "torch.optim's for-loop, foreach and fused implementations (and apex/DeepSpeed fused "
                    "Adam when importable); report ms/step, GB/s from the bytes model, the share of the "
                    "measured copy bandwidth and the speedup over torch's fastest. Writes CSV, Markdown "
                    "and a PNG chart.")
    ap.add_argument("--algorithms", type=_csv, default=None, metavar="A,B",
                    help=f"algorithm cases (default: all): {', '.join(CASES)}")
    ap.add_argument("--backends", type=_csv, default=None, metavar="X,Y",
                    help="implementations to time (default: every fusedopt backend available on the device "
                         "except 'reference', and torch's three): fusedopt backend names (cpu, cuda, triton, "
                         "reference) or fusedopt-<name>, torch, torch-forloop, torch-foreach, torch-fused, "
                         "apex, deepspeed")
    ap.add_argument("--include-reference", action="store_true",
                    help="also time fusedopt's 'reference' backend (the slow eager oracle)")
    ap.add_argument("--workloads", type=_csv, default=None, metavar="W,V",
                    help=f"workloads: {', '.join(GPT2_CONFIGS)} or <count>x<size> such as 1000x64K, 10000x1K "
                         f"(default cpu: {','.join(DEFAULTS['cpu']['workloads'])}; "
                         f"cuda: {','.join(DEFAULTS['cuda']['workloads'])})")
    ap.add_argument("--modes", type=_csv, default=None, metavar="M,N",
                    help=f"dtype modes: {', '.join(MODES)} (default: all)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed steps per implementation, at most: the rounds that time every implementation "
                         "of a workload and mode interleaved, one step each (default cpu 10, cuda 50); see "
                         "--max-seconds")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps of each implementation before the rounds (default cpu 2, cuda 5)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="cap the timed rounds of a workload and mode at about this many seconds in all, but "
                         "never fewer than 3 rounds (default cpu "
                         f"{DEFAULTS['cpu']['max_seconds']:g}, cuda {DEFAULTS['cuda']['max_seconds']:g}; "
                         "0 = no cap, always --repeats)")
    ap.add_argument("--grads", choices=("kept", "new"), default="kept",
                    help="kept (default): every step reads the same grad tensors, as after "
                         "zero_grad(set_to_none=False) or with grads that are views of a flat buffer; new: "
                         "every timed step gets other grad tensors than the step before (two sets taking turns, "
                         "assigned before the timer starts), as after zero_grad(set_to_none=True), torch's "
                         "default")
    ap.add_argument("--copy-mib", type=int, default=None,
                    help="size of the copy-bandwidth tensors in MiB (default cpu 256, cuda 1024)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for the run (default: torch's default)")
    ap.add_argument("--out", default="bench-out", metavar="DIR", help="output folder (default ./bench-out)")
    ap.add_argument("--name", default="bench", help="file stem of the outputs (default: bench -> bench.csv, "
                                                    "bench.md, bench.png)")
    ap.add_argument("--quick", action="store_true",
                    help="a short run: one or two small workloads, fp32 and bf16, few repeats")
    ap.add_argument("--no-kernel", action="store_true",
                    help="skip timing fusedopt's backend call alone (the 'backend call ms' column)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--no-png", action="store_true", help="do not draw the chart")
    ap.add_argument("--list", action="store_true", help="list algorithms, workloads, modes and the "
                                                        "implementations available on --device, then exit")
    return ap


# -- one row ---------------------------------------------------------------------------------
def backend_call(opt) -> "callable | None":
    """fusedopt only: a function that makes exactly the backend calls ``opt.step()`` makes (same
    tensors and tables), without the optimizer's planning and bookkeeping; None for others."""
    if getattr(opt, "max_grad_norm", None) is not None:
        return None  # the clip coefficient is part of the step, not of its kernels
    replay = getattr(opt, "launch_replay", None)
    return replay() if replay is not None else None


@dataclass
class Contender:
    """One row to time: an implementation of an algorithm on the current workload and mode,
    and the memory it will hold (see :func:`contender_bytes`)."""
    row: dict
    impl: Impl
    case: Case
    nbytes: int


def contender_bytes(case: Case, n_params: int, dtype: torch.dtype, master: bool) -> int:
    """Memory a contender keeps alive, estimated: its copy of the params, float32 states
    (torch keeps bf16 ones for bf16 params: an upper bound) and float32 master weights."""
    return n_params * (dtype.itemsize + 4 * case.n_states + (4 if master else 0))


def memory_budget(device: torch.device) -> float:
    """Bytes the contenders timed together may hold: half the memory free now (the workload's
    params and grads are allocated by then; the other half is left for temporaries and the
    other users of a shared machine); unlimited where the free memory is unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 2
    except OSError:
        pass
    return float("inf")


def batches(contenders: list[Contender], budget: float) -> list[list[Contender]]:
    """Split a workload and mode's contenders into batches, timed one after another, whose
    memory fits ``budget``: all in one batch where they fit; else whole algorithms per batch,
    so that the implementations compared with each other are interleaved; an algorithm over
    the budget on its own is split too, down to one contender per batch."""
    out: list[list[Contender]] = [[]]
    used = 0
    for _, group in itertools.groupby(contenders, key=lambda c: c.case.name):
        group = list(group)
        if used + sum(c.nbytes for c in group) > budget and out[-1]:
            out.append([])
            used = 0
        for c in group:
            if used + c.nbytes > budget and out[-1]:
                out.append([])
                used = 0
            out[-1].append(c)
            used += c.nbytes
    return [b for b in out if b]


def _make(c: Contender, base_params, base_grads, master: bool, storage: dict):
    """The contender's own copy of the params (sharing the read-only grads) and its optimizer,
    over the workload's param groups."""
    params = [torch.nn.Parameter(p.clone()) for p in base_params]
    for p, g in zip(params, base_grads):
        p.grad = g  # read-only for every implementation timed here; shared to save memory
    groups = in_groups(params, workload_groups(c.row["workload"]), c.case.kwargs.get("lr", 1e-3),
                       c.case.kwargs.get("weight_decay", 0.0) or 1e-2)
    try:
        return params, c.impl.make(groups, c.case, master, **storage)
    except Skip:
        raise
    except Exception as e:  # noqa: BLE001
        if c.impl.kind in ("apex", "deepspeed"):  # e.g. an op that fails to build: not our bug
            raise Skip(f"could not be created: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
        raise


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _grad_turns(params, grad_sets):
    """A function that gives ``params`` the next of ``grad_sets`` as their grads (``--grads new``)."""
    turn = [0]

    def next_grads():
        turn[0] = (turn[0] + 1) % len(grad_sets)
        for p, g in zip(params, grad_sets[turn[0]]):
            p.grad = g
    return next_grads


def measure_batch(batch: list[Contender], base_params, base_grads, master: bool, device, cfg,
                  kernel: bool, max_seconds: float | None, storage: dict | None = None) -> None:
    """Time a batch of contenders interleaved and fill in their rows.

    Each contender gets its own params and optimizer, kept alive until the batch is done, and
    its warm-up; fusedopt's also its backend call alone (the 'backend call ms' column), a
    contender of its own in the rounds. Then :func:`interleave` takes every contender's samples
    in the same rounds. A contender that cannot be created or fails its warm-up gets its
    status and reason, the others go on. With ``cfg["grads"] == "new"`` every step, warm-up
    included, gets the other of two grad sets, assigned untimed.
    """
    fns, ests, owners, befores = [], [], [], []  # the bound opt.step keeps the optimizer and its params alive
    share = max_seconds * 1e3 / len(batch) if max_seconds else None  # a contender's warm-up cap
    grad_sets = [base_grads, [g.clone() for g in base_grads]] if cfg.get("grads") == "new" else None
    for c in batch:
        try:
            params, opt = _make(c, base_params, base_grads, master, storage or {})
            turn = None if grad_sets is None else _grad_turns(params, grad_sets)
            step = opt.step if turn is None else (lambda turn=turn, step=opt.step: (turn(), step()))
            ests.append(warm_up(step, device, cfg["warmup"], share))
        except Skip as e:
            c.row.update(status="skipped", note=str(e))
            continue
        except Exception as e:  # noqa: BLE001 - report it and go on with the other rows
            c.row.update(status="error", note=_error(e))
            continue
        fns.append(opt.step)
        befores.append(turn)
        owners.append((c, "ms"))
        sdts = observed_state_dtypes(opt, params[0])
        if sdts is None:  # keeps its state elsewhere: assume the nominal states in the param dtype
            sdts = [params[0].dtype] * c.case.n_states
        c.row.update(state_dtype=",".join(sorted({str(s).removeprefix("torch.") for s in sdts})) or "-",
                     bytes_per_param=bytes_per_param(params[0].dtype, params[0].dtype, sdts, master))
        if kernel and c.impl.kind == "fusedopt":
            try:
                fn = backend_call(opt)
                if fn is not None:
                    ests.append(warm_up(fn, device, 1, share))
                    fns.append(fn)
                    befores.append(turn)
                    owners.append((c, "kernel"))
            except Exception:  # noqa: BLE001 - the optimizer's internals moved on: no column
                pass
    if not fns:
        return
    try:
        timings = interleave(fns, device, ests, repeats=cfg["repeats"], max_seconds=max_seconds, before=befores)
    except Exception as e:  # noqa: BLE001
        for c, _ in owners:
            c.row.update(status="error", note=f"in the interleaved rounds: {_error(e)}")
        return
    for (c, what), t in zip(owners, timings):
        if what == "kernel":
            c.row["kernel_ms"] = t.median
            continue
        q1, q3 = t.quartiles
        c.row.update(status="ok", ms_median=t.median, ms_min=t.min, ms_q1=q1, ms_q3=q3, ms_iqr=t.iqr,
                     repeats=len(t.samples_ms))


def _empty_cache(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- the run ---------------------------------------------------------------------------------
def resolve(args) -> tuple[torch.device, dict]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("fusedopt-bench: --device cuda but CUDA is not available")
    if device.type not in DEFAULTS:
        raise SystemExit(f"fusedopt-bench: unsupported device {args.device!r} (cpu or cuda)")
    cfg = dict((QUICK if args.quick else DEFAULTS)[device.type])
    for key in ("workloads", "modes", "repeats", "warmup", "max_seconds", "copy_mib"):
        v = getattr(args, key)
        if v is not None:
            cfg[key] = v
    cfg["grads"] = args.grads
    cfg["algorithms"] = args.algorithms or list(CASES)
    for a in cfg["algorithms"]:
        if a not in CASES:
            raise SystemExit(f"fusedopt-bench: unknown algorithm {a!r}; choose from {', '.join(CASES)}")
    for m in cfg["modes"]:
        if m not in MODES:
            raise SystemExit(f"fusedopt-bench: unknown mode {m!r}; choose from {', '.join(MODES)}")
    for w in cfg["workloads"]:
        try:
            workload_shapes(w)
        except ValueError as e:
            raise SystemExit(f"fusedopt-bench: {e}") from None
    if cfg["repeats"] < 1 or cfg["warmup"] < 1:
        raise SystemExit("fusedopt-bench: --repeats and --warmup must be >= 1")
    return device, cfg


def run(args) -> tuple[list[dict], dict]:
    """Measure; return the rows and the run's context (copy bandwidth, load, notes, settings).

    Per workload and mode, every implementation of every algorithm is a contender; they are
    created and warmed up, then timed interleaved (see :func:`measure_batch`), in batches
    where they would not all fit in memory at once.
    """
    device, cfg = resolve(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    named = set(args.backends or [])
    impls, notes = implementations(device, include_reference=args.include_reference,
                                   include_interpreted=bool(named & {"triton", "fusedopt-triton"}))
    impls = select(impls, args.backends, device)
    cpu0 = CpuSnapshot.take()
    copy_start = copy_bandwidth(device, cfg["copy_mib"] * 2**20)

    n_rows = len(cfg["workloads"]) * len(cfg["modes"]) * len(cfg["algorithms"]) * len(impls)
    try:
        from tqdm.auto import tqdm
        bar = tqdm(total=n_rows, unit="row", disable=True if args.no_progress else None,
                   dynamic_ncols=True, file=sys.stderr)
    except ImportError:
        bar = None
    rows = []
    base_key = None
    base = None
    t0 = time.perf_counter()
    for workload in cfg["workloads"]:
        shapes = workload_shapes(workload)
        n_params, n_tensors = describe(shapes)
        for mode in cfg["modes"]:
            dtype, master, storage = MODES[mode]
            contenders = []
            for algo in cfg["algorithms"]:
                case = CASES[algo]
                for impl in impls:
                    row = dict(device=str(device), workload=workload, mode=mode, algorithm=algo,
                               implementation=impl.name, kind=impl.kind, n_params=n_params, n_tensors=n_tensors,
                               param_dtype=str(dtype).removeprefix("torch."), master_weights=master, note="")
                    rows.append(row)
                    if storage and impl.kind != "fusedopt":
                        row.update(status="skipped", note="fusedopt's own storage options (" + ", ".join(storage) + ")")
                    elif master and impl.kind == "torch":
                        row.update(status="skipped", note="torch.optim has no master-weights option")
                    elif case.torch_cls is None and impl.kind == "torch":
                        row.update(status="skipped", note=f"torch.optim has no {case.fusedopt_cls}")
                    else:
                        contenders.append(Contender(row, impl, case, contender_bytes(case, n_params, dtype, master)))
            if bar is not None:
                bar.update(len(cfg["algorithms"]) * len(impls) - len(contenders))  # skipped already
            if not contenders:
                continue
            try:
                if (workload, dtype) != base_key:
                    base = None
                    _empty_cache(device)
                    base = build(shapes, dtype, device)
                    base_key = (workload, dtype)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory: report it and go on
                for c in contenders:
                    c.row.update(status="error", note=_error(e))
                continue
            parts = batches(contenders, memory_budget(device))
            if len(parts) > 1:
                need = sum(c.nbytes for c in contenders) / 2**30
                notes.append(f"{workload}, {mode}: the {len(contenders)} contenders would hold about {need:.1f} GiB, "
                             f"over half the free memory; timed in {len(parts)} batches one after another, "
                             f"interleaved within each batch")
            for part in parts:
                if bar is not None:
                    bar.set_postfix_str(f"{workload} {mode} {part[0].case.name}..{part[-1].case.name}", refresh=False)
                cap = cfg["max_seconds"] * len(part) / len(contenders) if cfg["max_seconds"] else None
                measure_batch(part, base[0], base[1], master, device, cfg, not args.no_kernel, cap, storage)
                _empty_cache(device)
                if bar is not None:
                    bar.update(len(part))
    if bar is not None:
        bar.close()
    base = None
    _empty_cache(device)
    copy_end = copy_bandwidth(device, cfg["copy_mib"] * 2**20)
    inplace = inplace_bandwidth(device, cfg["copy_mib"] * 2**20)
    cpu1 = CpuSnapshot.take()
    copy_gbps = max(copy_start, copy_end)

    # derived columns
    torch_best = {}
    for r in rows:
        if r["status"] == "ok" and r["kind"] == "torch":
            key = (r["workload"], r["mode"], r["algorithm"])
            if key not in torch_best or r["ms_median"] < torch_best[key][0]:
                torch_best[key] = (r["ms_median"], r["implementation"])
    for r in rows:
        for k in ("ms_median", "ms_min", "ms_q1", "ms_q3", "ms_iqr", "repeats", "kernel_ms", "gbps",
                  "pct_of_copy", "speedup_vs_torch_best", "torch_best", "state_dtype", "bytes_per_param"):
            r.setdefault(k, None)
        r["copy_gbps"] = round(copy_gbps, 2)
        if r["status"] != "ok":
            continue
        r["gbps"] = r["bytes_per_param"] * r["n_params"] / (r["ms_median"] * 1e-3) / 1e9
        r["pct_of_copy"] = r["gbps"] / copy_gbps
        best = torch_best.get((r["workload"], r["mode"], r["algorithm"]))
        if best is not None:
            r["speedup_vs_torch_best"] = best[0] / r["ms_median"]
            r["torch_best"] = best[1]
    for r in rows:  # round for the CSV
        for k in ("ms_median", "ms_min", "ms_q1", "ms_q3", "ms_iqr", "kernel_ms", "gbps", "pct_of_copy",
                  "speedup_vs_torch_best"):
            if r[k] is not None:
                r[k] = round(r[k], 4)

    threads = torch.get_num_threads()
    settings = (f"device {device}; workloads {', '.join(cfg['workloads'])}; modes {', '.join(cfg['modes'])}; "
                f"per workload and mode {cfg['warmup']} warm-up steps of every implementation, then all timed "
                f"interleaved: up to {cfg['repeats']} rounds of one step each in a shuffled order (at least 3"
                + (f", capped at about {cfg['max_seconds']:g} s per workload and mode" if cfg["max_seconds"] else "")
                + ")"
                + ("; every step with other grad tensors than the step before (--grads new: two sets taking "
                   "turns, assigned before the timer starts)" if cfg["grads"] == "new" else
                   "; every step with the same grad tensors (--grads kept)")
                + (f"; torch threads {threads}" if device.type == "cpu" else "")
                + f"; wall time {time.perf_counter() - t0:.0f} s")
    ctx = dict(device=device, cfg=cfg, notes=notes, settings=settings,
               copy=dict(start=copy_start, end=copy_end, used=copy_gbps, mib=cfg["copy_mib"], inplace=inplace),
               load=dict(other_cores=other_cpu_use(cpu0, cpu1), cores=os.cpu_count(),
                         before=cpu0.load, after=cpu1.load))
    return rows, ctx


def list_things(device: torch.device) -> str:
    impls, notes = implementations(device)
    lines = ["algorithms: " + ", ".join(CASES),
             "workloads:  " + ", ".join(f"{w} ({describe(workload_shapes(w))[0] / 1e6:.1f}M params, "
                                        f"{describe(workload_shapes(w))[1]} tensors)"
                                        for w in list(GPT2_CONFIGS) + ["1000x64K", "10000x1K"]),
             "modes:      " + ", ".join(MODES),
             f"fusedopt backends available on {device}: " + ", ".join(fusedopt.available_backends(device)),
             f"implementations timed by default on {device}: " + ", ".join(i.name for i in impls)]
    lines += [f"  note: {n}" for n in notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark with command-line arguments ``argv`` (default ``sys.argv[1:]``);
    returns the exit status (1 if a fusedopt or torch row failed)."""
    args = build_parser().parse_args(argv)
    if args.list:
        print(list_things(torch.device(args.device)))
        return 0
    rows, ctx = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = report.machine_info(ctx["device"])
    csv_path, md_path, png_path = (out / f"{args.name}.{ext}" for ext in ("csv", "md", "png"))
    report.write_csv(rows, csv_path)
    drew = False
    if not args.no_png:
        drew = report.write_png(rows, png_path, ctx["copy"]["used"],
                                f"fusedopt-bench on {info['device']} - torch {info['torch']} - {info['date']}")
    report.write_markdown(rows, md_path, info=info, settings=ctx["settings"], copy=ctx["copy"], load=ctx["load"],
                          notes=ctx["notes"], png_name=png_path.name if drew else None)
    print(f"fusedopt-bench on {info['device']}; torch {info['torch']}, triton {info['triton']}; {info['date']}")
    print(f"machine load: {report.load_summary(ctx['load'])}")
    warning = report.busy_warning(ctx["load"])
    if warning:
        print(f"WARNING: {warning}")
    print(f"copy bandwidth {ctx['copy']['used']:.1f} GB/s; whole step() times: medians and, in parentheses, "
          f"first and third quartiles of the samples, the implementations timed interleaved")
    print(report.terminal_table(rows, ctx["copy"]["used"]))
    for n in ctx["notes"]:
        print(f"note: {n}")
    n_skip = sum(r["status"] == "skipped" for r in rows)
    if n_skip:
        print(f"{n_skip} rows not run (reasons in {md_path.name})")
    print("wrote " + ", ".join(str(p) for p in (csv_path, md_path, png_path if drew else None) if p))
    failed = [r for r in rows if r["status"] == "error"]
    return 1 if failed else 0
