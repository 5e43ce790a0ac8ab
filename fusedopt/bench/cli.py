"""``fusedopt-bench``: the command line and the measurement loop."""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import torch

import fusedopt

from . import report
from .impls import CASES, Impl, Skip, implementations, select
from .timing import bytes_per_param, copy_bandwidth, inplace_bandwidth, observed_state_dtypes, synchronize, time_calls
from .workloads import GPT2_CONFIGS, MODES, build, describe, workload_shapes

# Defaults per device type. The CPU set is sized so that a run with no arguments finishes in
# well under 3 minutes on a 2-core machine; the GPU set is the full one.
DEFAULTS = {
    "cpu": dict(workloads=["gpt2-mini", "1000x4K"], modes=["fp32", "bf16", "bf16-master"],
                repeats=10, warmup=2, max_seconds=0.3, copy_mib=256),
    "cuda": dict(workloads=["gpt2-1b", "1000x64K", "10000x1K"], modes=["fp32", "bf16", "bf16-master"],
                 repeats=50, warmup=5, max_seconds=2.0, copy_mib=1024),
}
QUICK = {
    "cpu": dict(workloads=["gpt2-mini"], modes=["fp32", "bf16"], repeats=5, warmup=2, max_seconds=0.2,
                copy_mib=128),
    "cuda": dict(workloads=["gpt2-small", "10000x1K"], modes=["fp32", "bf16"], repeats=10, warmup=3,
                 max_seconds=0.5, copy_mib=512),
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
                    help="timed steps per row, at most (default cpu 10, cuda 50); see --max-seconds")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default cpu 2, cuda 5)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="cap the timed steps of a row at about this many seconds, never fewer than 3 steps "
                         "(default cpu 0.3, cuda 2; 0 = no cap, always --repeats)")
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
    """fusedopt only: a function that makes exactly the backend calls ``opt.step()`` makes
    (same tensors, the current step's scalars), without the optimizer's bookkeeping; None where
    the optimizer is not a plain host-scalar fusedopt optimizer."""
    algo = getattr(opt, "algorithm", None)
    if algo is None:
        return None
    calls = []
    for group in opt.param_groups:
        if group.get("capturable") or getattr(opt, "max_grad_norm", None) is not None:
            return None
        ps = [p for p in group["params"] if p.grad is not None]
        if not ps:
            continue
        if len({(p.device, p.dtype) for p in ps}) != 1:
            return None
        states = [opt.state[p] for p in ps]
        step = float(states[0]["step"]) if algo.has_step else 0.0
        scalars, flags = algo.step_args(group, step, False)
        backend = fusedopt.backends.get_backend(group["backend"], ps[0].device)
        slots = [[st[s] for st in states] if states[0].get(s) is not None else [] for s in algo.SLOTS]
        kw = {"master": [st["master_param"] for st in states]} if "master_param" in states[0] else {}
        calls.append((backend.step, (algo.name, ps, [p.grad for p in ps], slots, tuple(scalars), tuple(flags)), kw))

    def run():
        for fn, a, kw in calls:
            fn(*a, **kw)
    return run


def run_row(impl: Impl, case, base_params, base_grads, master: bool, device, cfg, kernel: bool) -> dict:
    params = [torch.nn.Parameter(p.clone()) for p in base_params]
    for p, g in zip(params, base_grads):
        p.grad = g  # read-only for every implementation timed here; shared to save memory
    try:
        try:
            opt = impl.make(params, case, master)
        except Skip:
            raise
        except Exception as e:  # noqa: BLE001
            if impl.kind in ("apex", "deepspeed"):  # e.g. an op that fails to build: not our bug
                raise Skip(f"could not be created: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
            raise
        t = time_calls(opt.step, device, warmup=cfg["warmup"], repeats=cfg["repeats"],
                       max_seconds=cfg["max_seconds"] or None)
        sdts = observed_state_dtypes(opt, params[0])
        if sdts is None:  # keeps its state elsewhere: assume the nominal states in the param dtype
            sdts = [params[0].dtype] * case.n_states
        row = dict(ms_median=t.median, ms_min=t.min, ms_iqr=t.iqr, repeats=len(t.samples_ms),
                   state_dtype=",".join(sorted({str(s).removeprefix("torch.") for s in sdts})) or "-",
                   bytes_per_param=bytes_per_param(params[0].dtype, params[0].dtype, sdts, master))
        if kernel and impl.kind == "fusedopt":
            try:
                fn = backend_call(opt)
            except Exception:  # noqa: BLE001 - the optimizer's internals moved on: no column
                fn = None
            if fn is not None:
                k = time_calls(fn, device, warmup=1, repeats=cfg["repeats"],
                               max_seconds=cfg["max_seconds"] or None)
                row["kernel_ms"] = k.median
        return row
    finally:
        del params
        synchronize(device)


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
    """Measure; return the rows and the run's context (copy bandwidth, notes, settings)."""
    device, cfg = resolve(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    named = set(args.backends or [])
    impls, notes = implementations(device, include_reference=args.include_reference,
                                   include_interpreted=bool(named & {"triton", "fusedopt-triton"}))
    impls = select(impls, args.backends, device)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    copy_start = copy_bandwidth(device, cfg["copy_mib"] * 2**20)

    plan = [(w, m, a, impl) for w in cfg["workloads"] for m in cfg["modes"] for a in cfg["algorithms"]
            for impl in impls]
    try:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(plan), unit="row", disable=True if args.no_progress else None,
                   dynamic_ncols=True, file=sys.stderr)
    except ImportError:
        bar = None
    rows = []
    base_key = None
    base = None
    t0 = time.perf_counter()
    for workload, mode, algo, impl in plan:
        shapes = workload_shapes(workload)
        n_params, n_tensors = describe(shapes)
        dtype, master = MODES[mode]
        case = CASES[algo]
        row = dict(device=str(device), workload=workload, mode=mode, algorithm=algo,
                   implementation=impl.name, kind=impl.kind, n_params=n_params, n_tensors=n_tensors,
                   param_dtype=str(dtype).removeprefix("torch."), master_weights=master, note="")
        if bar is not None:
            bar.set_postfix_str(f"{workload} {mode} {algo} {impl.name}", refresh=False)
        try:
            if master and impl.kind == "torch":
                raise Skip("torch.optim has no master-weights option")
            if case.torch_cls is None and impl.kind == "torch":
                raise Skip(f"torch.optim has no {case.fusedopt_cls}")
            if (workload, dtype) != base_key:
                base = None
                _empty_cache(device)
                base = build(shapes, dtype, device)
                base_key = (workload, dtype)
            row.update(run_row(impl, case, base[0], base[1], master, device, cfg, not args.no_kernel))
            row["status"] = "ok"
        except Skip as e:
            row.update(status="skipped", note=str(e))
        except Exception as e:  # noqa: BLE001 - report it and go on with the other rows
            row.update(status="error", note=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        _empty_cache(device)
        rows.append(row)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    base = None
    _empty_cache(device)
    copy_end = copy_bandwidth(device, cfg["copy_mib"] * 2**20)
    inplace = inplace_bandwidth(device, cfg["copy_mib"] * 2**20)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    copy_gbps = max(copy_start, copy_end)

    # derived columns
    torch_best = {}
    for r in rows:
        if r["status"] == "ok" and r["kind"] == "torch":
            key = (r["workload"], r["mode"], r["algorithm"])
            if key not in torch_best or r["ms_median"] < torch_best[key][0]:
                torch_best[key] = (r["ms_median"], r["implementation"])
    for r in rows:
        for k in ("ms_median", "ms_min", "ms_iqr", "repeats", "kernel_ms", "gbps", "pct_of_copy",
                  "speedup_vs_torch_best", "torch_best", "state_dtype", "bytes_per_param"):
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
        for k in ("ms_median", "ms_min", "ms_iqr", "kernel_ms"):
            if r[k] is not None:
                r[k] = round(r[k], 4)
        for k in ("gbps", "pct_of_copy", "speedup_vs_torch_best"):
            if r[k] is not None:
                r[k] = round(r[k], 4)

    threads = torch.get_num_threads()
    settings = (f"device {device}; workloads {', '.join(cfg['workloads'])}; modes {', '.join(cfg['modes'])}; "
                f"up to {cfg['repeats']} timed steps per row (at least 3"
                + (f", capped at about {cfg['max_seconds']:g} s" if cfg["max_seconds"] else "")
                + f") after {cfg['warmup']} warm-up steps"
                + (f"; torch threads {threads}" if device.type == "cpu" else "")
                + f"; wall time {time.perf_counter() - t0:.0f} s")
    ctx = dict(device=device, cfg=cfg, notes=notes, settings=settings,
               copy=dict(start=copy_start, end=copy_end, used=copy_gbps, mib=cfg["copy_mib"], inplace=inplace,
                         load=(f"{load0:.2f} / {load1:.2f}" if load0 is not None else "")))
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
    report.write_markdown(rows, md_path, info=info, settings=ctx["settings"], copy=ctx["copy"],
                          notes=ctx["notes"], png_name=png_path.name if drew else None)
    print(f"fusedopt-bench on {info['device']}; torch {info['torch']}, triton {info['triton']}; {info['date']}")
    print(f"copy bandwidth {ctx['copy']['used']:.1f} GB/s; whole step() times, medians")
    print(report.terminal_table(rows, ctx["copy"]["used"]))
    for n in ctx["notes"]:
        print(f"note: {n}")
    n_skip = sum(r["status"] == "skipped" for r in rows)
    if n_skip:
        print(f"{n_skip} rows not run (reasons in {md_path.name})")
    print("wrote " + ", ".join(str(p) for p in (csv_path, md_path, png_path if drew else None) if p))
    failed = [r for r in rows if r["status"] == "error"]
    return 1 if failed else 0
