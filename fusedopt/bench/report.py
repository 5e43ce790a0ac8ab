"""Reporting: the terminal table, CSV, Markdown and a PNG chart, the machine description and its
load during the run."""
from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess
from collections import OrderedDict, defaultdict
from pathlib import Path

import torch

import fusedopt

COLUMNS = ["device", "workload", "mode", "algorithm", "implementation", "kind", "status",
           "n_params", "n_tensors", "param_dtype", "state_dtype", "master_weights", "bytes_per_param",
           "ms_median", "ms_min", "ms_iqr", "ms_q1", "ms_q3", "repeats", "kernel_ms", "gbps", "copy_gbps",
           "pct_of_copy", "speedup_vs_torch_best", "torch_best", "note"]


# -- the machine -------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _git_commit() -> str:
    """The commit of a source checkout fusedopt runs from; empty for an installed package (a
    site-packages folder may sit inside some other repository)."""
    root = Path(fusedopt.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return ""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(device: torch.device) -> dict:
    """What the Markdown header names: the device, versions, the date."""
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - triton missing or broken: say so
        triton_version = "not installed"
    cores = os.cpu_count()
    cpu = f"{cpu_model()} ({cores} logical cores, torch uses {torch.get_num_threads()} threads)"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        dev = cpu
    return OrderedDict(
        device=dev, cpu=cpu, torch=torch.__version__, triton=triton_version,
        fusedopt=fusedopt.__version__ + (f" (git {_git_commit()})" if _git_commit() else ""),
        python=platform.python_version(),
        date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    )


# Other processes' average CPU use, in cores, above which the report warns that the machine
# was busy: a quiet machine's daemons stay well below it.
BUSY_CORES = 0.2


def load_summary(load: dict) -> str:
    """The machine's load during the run in words: the cores other processes kept busy on
    average (see :func:`fusedopt.bench.timing.other_cpu_use`) and the load average."""
    if load["other_cores"] is None:
        text = "other processes' CPU use not measured (no /proc/stat)"
    else:
        text = (f"other processes kept {load['other_cores']:.2f} of the {load['cores']} logical cores busy "
                f"on average during the run (the machine's busy time less this run's CPU time)")
    if load["before"] is not None:
        text += f"; 1-minute load average {load['before']:.2f} before, {load['after']:.2f} after (this run included)"
    return text


def busy_warning(load: dict) -> str | None:
    """A warning when other processes used more than :data:`BUSY_CORES` on average, else None."""
    other = load["other_cores"]
    if other is None or other <= BUSY_CORES:
        return None
    return (f"the machine was busy: other processes used {other:.2f} cores on average during the run "
            f"(more than {BUSY_CORES:g}). The implementations were timed interleaved, so the load fell on "
            f"all of them alike, but the times are longer and the spreads wider than on an idle machine, "
            f"and a step using every core loses more than one using a single core: rerun on a quiet "
            f"machine before drawing fine conclusions.")


# -- formatting ----------------------------------------------------------------------------------
def _fmt(v, digits=2):
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:.0f}" if digits <= 2 else f"{v:.1f}"
        return f"{v:.{digits}f}"
    return str(v)


def _pct(v):
    return "" if v is None else f"{100 * v:.0f}%"


def _speedup(v):
    return "" if v is None else f"{v:.2f}x"


def _sections(rows):
    out = OrderedDict()
    for r in rows:
        out.setdefault((r["workload"], r["mode"]), []).append(r)
    return out


TABLE_HEAD = ["algorithm", "implementation", "ms/step (q1-q3)", "backend call ms", "GB/s", "% of copy",
              "vs torch best", "bytes/param"]


def _ms_cell(r):
    """The median step time and, in parentheses, its first and third quartiles: the middle
    half of the samples."""
    d = 3 if r["ms_median"] < 1 else 2
    return f"{_fmt(r['ms_median'], d)} ({_fmt(r['ms_q1'], d)}-{_fmt(r['ms_q3'], d)})"


def _table_cells(r):
    return [r["algorithm"], r["implementation"], _ms_cell(r),
            _fmt(r["kernel_ms"], 3 if (r["kernel_ms"] or 0) < 1 else 2), _fmt(r["gbps"]),
            _pct(r["pct_of_copy"]), _speedup(r["speedup_vs_torch_best"]), str(r["bytes_per_param"])]


def terminal_table(rows, copy_gbps: float) -> str:
    lines = []
    for (workload, mode), rs in _sections(rows).items():
        ok = [r for r in rs if r["status"] == "ok"]
        if not ok:
            continue
        head = f"{workload} ({ok[0]['n_params']:,} params in {ok[0]['n_tensors']:,} tensors), {mode}" \
               f" - copy bandwidth {copy_gbps:.1f} GB/s"
        cells = [TABLE_HEAD] + [_table_cells(r) for r in ok]
        widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE_HEAD))]
        lines += ["", head]
        for j, c in enumerate(cells):
            lines.append("  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths))))
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
        errors = [r for r in rs if r["status"] == "error"]
        for r in errors:
            lines.append(f"  ERROR {r['algorithm']} {r['implementation']}: {r['note']}")
    return "\n".join(lines)


# -- files ---------------------------------------------------------------------------------------
def write_csv(rows, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})


def _skip_summary(rows):
    """Skipped rows grouped by reason: reason -> (implementations, algorithms, modes)."""
    by = OrderedDict()
    for r in rows:
        if r["status"] != "skipped":
            continue
        e = by.setdefault(r["note"], (set(), [], set()))
        e[0].add(r["implementation"])
        if r["algorithm"] not in e[1]:
            e[1].append(r["algorithm"])
        e[2].add(r["mode"])
    return by


def write_markdown(rows, path: Path, *, info: dict, settings: dict, copy: dict, load: dict,
                   notes: list[str], png_name: str | None) -> None:
    out = [f"# fusedopt-bench: optimizer step throughput on {info['device']}", ""]
    out += [f"- **Device**: {info['device']}"]
    if info["device"] != info["cpu"]:
        out += [f"- **Host CPU**: {info['cpu']}"]
    out += [f"- **Software**: torch {info['torch']}, triton {info['triton']}, fusedopt {info['fusedopt']}, "
            f"Python {info['python']}",
            f"- **Date**: {info['date']}",
            f"- **Copy bandwidth** (`dst.copy_(src)`, {copy['mib']} MiB float32, read + write counted): "
            f"{copy['start']:.1f} GB/s before the run, {copy['end']:.1f} GB/s after; "
            f"the roofline below uses {copy['used']:.1f} GB/s",
            f"- **In-place bandwidth** (`a.add_(b)`, read a and b, write a: 3 x {copy['mib']} MiB counted): "
            f"{copy['inplace']:.1f} GB/s, for context (see below)",
            f"- **Settings**: {settings}"]
    out += [f"- **Machine load**: {load_summary(load)}"]
    warning = busy_warning(load)
    if warning:
        out += ["", f"> **Warning**: {warning}"]
    out += ["", "## How to read this", "",
            "- `ms/step` is the median wall time of a whole `optimizer.step()` call (Python "
            "bookkeeping and every kernel launch included), warm-up excluded; on a GPU it is "
            "timed with CUDA events, on the CPU with `time.perf_counter`. In parentheses the "
            "first and third quartiles of the samples: half the steps took a time in that range "
            "(with fewer than 4 samples, the minimum and maximum). "
            "The implementations of a workload and mode were timed interleaved: rounds of one "
            "step of each, in a shuffled order, so that a change in the machine's load fell on "
            "all of them alike; a wide range still means a noisy measurement.",
            "- `backend call ms` (fusedopt rows only, median) times the backend's multi-tensor call "
            "alone, with the arguments the step would pass (the kernel and its launch, no optimizer "
            "bookkeeping), in the same rounds as the steps; the difference to `ms/step` is the "
            "Python side of the step.",
            "- `GB/s` = bytes moved / `ms/step`, with bytes per parameter from the bytes model: "
            "param read + written, gradient read, each state read + written (fp32: "
            "SGD 12, SGD+momentum/Adagrad/RMSprop/Lion 20, Adadelta/Adam/AdamW/Yogi/RAdam/Adamax/NAdam 28, amsgrad 36; "
            "bf16 params with fp32 states Adam 22, with fp32 master weights 28). The states "
            "counted are the ones each implementation actually keeps: torch keeps bf16 states for "
            "bf16 params (Adam 14 bytes/param), fusedopt float32 ones.",
            "- `% of copy` = GB/s over the copy bandwidth measured in the same run: the share of "
            "the memory roofline reached. On a CPU a fused in-place update can exceed 100%: the "
            "copy's destination costs a write-allocate read that the model does not count, and an "
            "in-place update does not pay it (the in-place `add_` bandwidth above shows the "
            "ceiling for that access pattern).",
            "- `vs torch best` = time of torch's fastest implementation of that algorithm "
            "(for-loop, foreach or fused) in the same workload and mode / this row's time: above "
            "1 is faster than torch; blank where torch has no counterpart."]
    out += [f"- {n}" for n in notes]
    for (workload, mode), rs in _sections(rows).items():
        ok = [r for r in rs if r["status"] == "ok"]
        errs = [r for r in rs if r["status"] == "error"]
        if not ok and not errs:
            continue
        first = (ok or errs)[0]
        out += ["", f"## {workload}, {mode} ({first['n_params']:,} parameters in {first['n_tensors']:,} tensors)", ""]
        if ok:
            out += ["| " + " | ".join(TABLE_HEAD) + " |",
                    "|" + "|".join(["---", "---"] + ["---:"] * (len(TABLE_HEAD) - 2)) + "|"]
            out += ["| " + " | ".join(_table_cells(r)) + " |" for r in ok]
        for r in errs:
            out += ["", f"- error: {r['algorithm']} / {r['implementation']}: {r['note']}"]
    skips = _skip_summary(rows)
    if skips:
        out += ["", "## Rows not run", ""]
        for why, (impls, algos, modes) in skips.items():
            out += [f"- {', '.join(sorted(impls))} ({', '.join(sorted(modes))}; {', '.join(algos)}): {why}"]
    if png_name:
        out += ["", f"![throughput chart]({png_name})"]
    path.write_text("\n".join(out) + "\n")


def write_png(rows, path: Path, copy_gbps: float, title: str) -> bool:
    """Grouped bars: for each workload and mode a panel, algorithms on the x axis, one bar per
    implementation, GB/s on the y axis with whiskers at the GB/s of the step time's first and
    third quartiles, the copy bandwidth as a dashed line. False when matplotlib is missing or
    nothing ran."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sections = [(k, [r for r in rs if r["status"] == "ok"]) for k, rs in _sections(rows).items()]
    sections = [(k, rs) for k, rs in sections if rs]
    if not sections:
        return False
    impls = list(OrderedDict.fromkeys(r["implementation"] for _, rs in sections for r in rs))
    cmap = plt.get_cmap("tab10")
    colors = {name: cmap(i % 10) for i, name in enumerate(impls)}
    ncols = 2 if len(sections) > 1 else 1
    nrows = (len(sections) + ncols - 1) // ncols
    head = 0.9  # inches above the panels for the title and the legend
    height = 3.6 * nrows + head
    fig, axes = plt.subplots(nrows, ncols, figsize=(8 * ncols, height), squeeze=False)
    for ax, ((workload, mode), rs) in zip(axes.flat, sections):
        algos = list(OrderedDict.fromkeys(r["algorithm"] for r in rs))
        here = [i for i in impls if any(r["implementation"] == i for r in rs)]
        width = 0.8 / max(len(here), 1)
        # GB/s at the median time, and the whiskers' lengths down to the GB/s at the third
        # quartile's time and up to that at the first's: from ratios of the times, so never
        # negative (q1 <= median <= q3)
        val = defaultdict(dict)
        for r in rs:
            g = r["gbps"]
            val[r["algorithm"]][r["implementation"]] = (g, g * (1 - r["ms_median"] / r["ms_q3"]),
                                                        g * (r["ms_median"] / r["ms_q1"] - 1))
        for j, name in enumerate(here):
            xs = [a + (j - (len(here) - 1) / 2) * width for a in range(len(algos))]
            nan = float("nan")  # no bar and no whisker where this implementation did not run
            mid, below, above = zip(*(val[al].get(name, (nan, nan, nan)) for al in algos))
            ax.bar(xs, mid, width, color=colors[name], label=name, yerr=[below, above],
                   capsize=2, error_kw=dict(elinewidth=0.8, ecolor="black"))
        ax.axhline(copy_gbps, color="black", linestyle="--", linewidth=1)
        ax.text(len(algos) - 0.5, copy_gbps, f" copy {copy_gbps:.0f} GB/s", va="bottom", ha="right", fontsize=8)
        ax.set_xticks(range(len(algos)))
        ax.set_xticklabels(algos, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("GB/s (bytes model; whiskers: quartiles)")
        ax.set_title(f"{workload}, {mode} ({rs[0]['n_params'] / 1e6:.1f}M params, {rs[0]['n_tensors']} tensors)",
                     fontsize=10)
        ax.set_ylim(0, max(copy_gbps, max(v[0] + v[2] for d in val.values() for v in d.values())) * 1.15)
    for ax in list(axes.flat)[len(sections):]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[n]) for n in impls]
    fig.suptitle(title, y=1 - 0.1 / height, va="top", fontsize=11)
    fig.legend(handles, impls, loc="upper center", ncol=min(len(impls), 6), fontsize=9,
               bbox_to_anchor=(0.5, 1 - 0.4 / height), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - head / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
