"""fusedopt-bench: a tiny run through main(argv) and the files it writes; the bytes model; the
interleaved timing, the spread and the busy-machine warning, with fake implementations on a
fake clock."""
from __future__ import annotations

import csv
import importlib.util
import itertools
import os
import subprocess
import sys
import time

import pytest
import torch

import fusedopt
from fusedopt.bench import cli, main, report, timing
from fusedopt.bench.impls import CASES, Impl, triton_interpreted
from fusedopt.bench.report import COLUMNS
from fusedopt.bench.timing import CpuSnapshot, bytes_per_param, interleave, other_cpu_use, time_calls
from fusedopt.bench.workloads import build, describe, in_groups, workload_groups, workload_shapes

F32, BF16 = torch.float32, torch.bfloat16


def test_bytes_model_matches_design():
    assert bytes_per_param(F32, F32, []) == 12                        # SGD
    assert bytes_per_param(F32, F32, [F32]) == 20                     # SGD+momentum, Adagrad, RMSprop
    assert bytes_per_param(F32, F32, [F32, F32]) == 28                # Adadelta, Adam, AdamW, Yogi, RAdam
    assert bytes_per_param(F32, F32, [F32] * 3) == 36                 # amsgrad
    assert bytes_per_param(BF16, BF16, [F32, F32]) == 22              # bf16 params, fp32 states
    assert bytes_per_param(BF16, BF16, [F32, F32], master=True) == 28  # + fp32 master weights
    assert bytes_per_param(BF16, BF16, [BF16, BF16]) == 14            # torch's bf16 Adam


def test_workloads():
    assert describe(workload_shapes("gpt2-small")) == (124_439_808, 148)  # GPT-2 small: 124M
    assert describe(workload_shapes("1000x64K")) == (65_536_000, 1000)
    assert describe(workload_shapes("10000x1K")) == (10_240_000, 10000)
    with pytest.raises(ValueError):
        workload_shapes("gpt5")


def test_workloads_in_param_groups():
    """``<workload>/<G>g``: the same tensors over G groups with their own lr and weight decay,
    accepted by fusedopt and torch.optim alike."""
    assert workload_shapes("1000x4K/100g") == workload_shapes("1000x4K")
    assert workload_groups("1000x4K/100g") == 100 and workload_groups("1000x4K") == 1
    params = [torch.zeros(2, requires_grad=True) for _ in range(10)]
    groups = in_groups(params, 4, lr=0.1, weight_decay=0.01)
    assert [len(g["params"]) for g in groups] == [2, 3, 2, 3]
    assert [p for g in groups for p in g["params"]] == params
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 0.075, 0.05, 0.025])
    assert [g["weight_decay"] for g in groups] == [0.0, 0.01, 0.0, 0.01]
    assert in_groups(params, 1, lr=0.1, weight_decay=0.01) is params
    for cls in (fusedopt.AdamW, torch.optim.AdamW):
        assert len(cls(groups).param_groups) == 4


def test_time_calls_respects_the_budget():
    calls = []
    t = time_calls(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=7)
    assert len(t.samples_ms) == 7 and len(calls) == 9
    import time
    t = time_calls(lambda: time.sleep(0.02), torch.device("cpu"), warmup=2, repeats=100, max_seconds=0.05)
    assert 3 <= len(t.samples_ms) <= 5  # at least 3 samples, else about the budget


def test_unknown_names_exit():
    with pytest.raises(SystemExit):
        main(["--workloads", "nope", "--out", "unused"])
    with pytest.raises(SystemExit):
        main(["--algorithms", "lbfgs", "--out", "unused"])


def test_tiny_run_writes_csv_markdown_png(tmp_path):
    out = tmp_path / "out"
    argv = ["--workloads", "6x1K", "--algorithms", "adam,sgd-momentum,yogi", "--modes", "fp32,bf16-master",
            "--repeats", "3", "--warmup", "1", "--copy-mib", "32", "--include-reference", "--no-progress", "--out", str(out),
            "--name", "tiny"]
    rc = main(argv)
    rows = list(csv.DictReader(open(out / "tiny.csv")))
    assert rows and list(rows[0].keys()) == COLUMNS

    # every implementation available here has its rows: fusedopt's backends (the interpreted
    # Triton only when named) and torch's three paths
    device = torch.device("cpu")
    expected = {f"fusedopt-{b}" for b in fusedopt.available_backends(device)
                if not (b == "triton" and triton_interpreted(device))}
    expected |= {"torch-forloop", "torch-foreach", "torch-fused"}
    assert expected <= {r["implementation"] for r in rows}
    by = {(r["mode"], r["algorithm"], r["implementation"]): r for r in rows}

    # torch and the reference oracle always run; torch has no Yogi, no master weights, and
    # (torch 2.13) no fused CPU SGD-with-bf16-master: those rows are skipped with a reason
    for impl in ("torch-forloop", "torch-foreach", "fusedopt-reference"):
        r = by[("fp32", "adam", impl)]
        assert r["status"] == "ok", r
        assert float(r["ms_median"]) > 0 and float(r["gbps"]) > 0 and int(r["repeats"]) == 3
        assert float(r["ms_min"]) <= float(r["ms_q1"]) <= float(r["ms_median"]) <= float(r["ms_q3"])
        assert int(r["bytes_per_param"]) == 28
        assert 0 < float(r["pct_of_copy"]) and float(r["copy_gbps"]) > 0
        assert r["torch_best"] in ("torch-forloop", "torch-foreach", "torch-fused")
    assert int(by[("fp32", "sgd-momentum", "torch-foreach")]["bytes_per_param"]) == 20
    assert by[("fp32", "yogi", "torch-foreach")]["status"] == "skipped"
    assert by[("bf16-master", "adam", "torch-fused")]["status"] == "skipped"
    assert by[("fp32", "adam", "fusedopt-reference")]["kernel_ms"] != ""  # backend call timed alone
    assert rc == (1 if any(r["status"] == "error" for r in rows) else 0)

    # Markdown: the machine and versions in the header, a table row for each implementation
    md = (out / "tiny.md").read_text()
    assert torch.__version__ in md and "Copy bandwidth" in md
    table_rows = [line for line in md.splitlines() if line.startswith("| ")]
    for r in rows:
        if r["status"] == "ok":
            assert any(f"| {r['algorithm']} | {r['implementation']} |" in line for line in table_rows), r
        elif r["status"] == "error":
            assert f"{r['algorithm']} / {r['implementation']}" in md
    assert "torch.optim has no master-weights option" in md

    png = out / "tiny.png"
    if importlib.util.find_spec("matplotlib") is None:
        assert not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "![throughput chart](tiny.png)" in md


# -- interleaving, spread and load, on fake implementations and a fake clock -----------------
class FakeClock:
    """Stands in for the ``time`` module of fusedopt.bench.timing: time moves only when a fake
    step says so, so every sample is known in advance."""
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def monotonic(self):
        return self.now


@pytest.fixture
def fake_bench(monkeypatch, tmp_path):
    """Run main() over fake implementations (named in ``names``) whose steps log
    (algorithm, implementation) and take scripted milliseconds (warm-up first) on a fake
    clock; the copy bandwidth and other processes' CPU use are fixed. Returns the call log,
    the CSV rows by (algorithm, implementation), the Markdown and the console output."""
    clock = FakeClock()
    monkeypatch.setattr(timing, "time", clock)
    monkeypatch.setattr(cli, "copy_bandwidth", lambda device, nbytes: 10.0)
    monkeypatch.setattr(cli, "inplace_bandwidth", lambda device, nbytes: 12.0)
    monkeypatch.setattr(cli, "_empty_cache", lambda device: None)  # nothing to free; gc.collect is slow

    def bench(capsys, names, argv, durations_ms=None, other_cores=0.0):
        log = []
        monkeypatch.setattr(cli, "other_cpu_use", lambda start, end: other_cores)

        def maker(name):
            def make(params, case, master):
                scripted = iter((durations_ms or {}).get((case.name, name), itertools.repeat(1.0)))

                class FakeOptimizer:
                    state = {}

                    def step(self):
                        log.append((case.name, name))
                        clock.now += next(scripted) / 1e3
                return FakeOptimizer()
            return make
        impls = [Impl(n, "fake", maker(n)) for n in names]
        monkeypatch.setattr(cli, "implementations", lambda device, **kw: (impls, []))
        out = tmp_path / "out"
        assert main(argv + ["--workloads", "2x8", "--modes", "fp32", "--no-progress", "--no-png",
                            "--out", str(out), "--name", "fake"]) == 0
        rows = {(r["algorithm"], r["implementation"]): r for r in csv.DictReader(open(out / "fake.csv"))}
        return log, rows, (out / "fake.md").read_text(), capsys.readouterr().out
    return bench


def test_contenders_are_warmed_up_then_timed_round_robin(fake_bench, capsys):
    log, rows, md, _ = fake_bench(capsys, ["a", "b", "c"],
                                  ["--algorithms", "adam,sgd", "--warmup", "2", "--repeats", "4"])
    contenders = [(algo, impl) for algo in ("adam", "sgd") for impl in "abc"]
    # every contender of the workload and mode is warmed up, in turn, before any is timed ...
    assert log[:12] == [c for c in contenders for _ in range(2)]
    # ... then rounds of one step of each, every algorithm's implementations in the same rounds
    rounds = [log[12 + 6 * i:18 + 6 * i] for i in range(4)]
    assert len(log) == 12 + 4 * 6
    assert all(sorted(r) == sorted(contenders) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order changes from round to round
    assert all(int(rows[c]["repeats"]) == 4 and rows[c]["status"] == "ok" for c in contenders)
    assert "batches" not in md  # no memory fallback here


def test_contenders_over_the_memory_budget_are_timed_in_batches(fake_bench, capsys, monkeypatch):
    # the three Adam contenders (2x8 fp32: 16 params x (4 + 2 x 4) bytes each) fit, SGD's do not as well
    adam = cli.contender_bytes(CASES["adam"], 16, torch.float32, False)
    monkeypatch.setattr(cli, "memory_budget", lambda device: 3 * adam)
    log, rows, md, _ = fake_bench(capsys, ["a", "b", "c"],
                                  ["--algorithms", "adam,sgd", "--warmup", "1", "--repeats", "3"])
    assert [algo for algo, _ in log] == ["adam"] * (3 + 3 * 3) + ["sgd"] * (3 + 3 * 3)
    assert "2x8, fp32: the 6 contenders" in md and "timed in 2 batches" in md


def test_batches_keep_an_algorithm_together_and_split_it_only_when_it_alone_is_too_big():
    def contenders(algos):
        return [cli.Contender({}, Impl(i, "fake", None), CASES[a], 10) for a in algos for i in "xy"]
    names = lambda parts: [[(c.case.name, c.impl.name) for c in b] for b in parts]  # noqa: E731
    assert len(cli.batches(contenders(["adam", "sgd"]), float("inf"))) == 1
    assert names(cli.batches(contenders(["adam", "sgd", "yogi"]), 30)) == [
        [("adam", "x"), ("adam", "y")], [("sgd", "x"), ("sgd", "y")], [("yogi", "x"), ("yogi", "y")]]
    assert names(cli.batches(contenders(["adam"]), 15)) == [[("adam", "x")], [("adam", "y")]]


def test_interleave_stops_at_the_time_cap_with_equal_samples(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing, "time", clock)

    def step(ms):
        def fn():
            clock.now += ms / 1e3
        return fn
    t = interleave([step(10), step(30)], torch.device("cpu"), [10, 30], repeats=100, max_seconds=0.2)
    assert [len(x.samples_ms) for x in t] == [5, 5]  # 5 rounds of 40 ms fill the 200 ms cap
    assert t[1].median == pytest.approx(30)
    # a round over the cap on its own: still 3 rounds, the fewest that show a spread
    t = interleave([step(10), step(300)], torch.device("cpu"), [10, 300], repeats=100, max_seconds=0.2)
    assert [len(x.samples_ms) for x in t] == [3, 3]


def test_interleave_calls_each_hook_untimed_right_before_its_function(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing, "time", clock)
    log = []

    def step(name, ms):
        def fn():
            log.append(name)
            clock.now += ms / 1e3
        return fn

    def hook():
        log.append("before a")
        clock.now += 1.0  # a second: not part of a's samples
    t = interleave([step("a", 10), step("b", 20)], torch.device("cpu"), [10, 20], repeats=3, before=[hook, None])
    assert t[0].median == pytest.approx(10) and t[1].median == pytest.approx(20)
    assert log.count("a") == log.count("before a") == 3 == log.count("b")
    assert all(log[i - 1] == "before a" for i, x in enumerate(log) if x == "a")


@pytest.mark.parametrize("grads", ["new", "kept"])
def test_grads_new_gives_every_step_other_grad_tensors(grads):
    """--grads new: each step of a contender, warm-up included, reads other grad tensors than its
    step before (as after zero_grad(set_to_none=True)); --grads kept: always the same ones."""
    seen = []

    def make(groups, case, master):
        params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]

        class Recorder:
            state = {}

            def step(self):
                seen.append(tuple(id(p.grad) for p in params))
        return Recorder()
    base_params, base_grads = build(workload_shapes("3x8"), torch.float32, torch.device("cpu"))
    row = {"workload": "3x8"}
    contender = cli.Contender(row, Impl("x", "fake", make), CASES["adam"], 0)
    cli.measure_batch([contender], base_params, base_grads, False, torch.device("cpu"),
                      {"warmup": 2, "repeats": 4, "grads": grads}, False, None)
    assert row["status"] == "ok" and len(seen) == 2 + 4
    assert all((a != b) == (grads == "new") for a, b in zip(seen, seen[1:])), seen
    assert all(len(set(s)) == 3 for s in seen)


def test_spread_is_shown_beside_the_median(fake_bench, capsys):
    durations = {("adam", "a"): [5, 10, 13, 11, 12], ("adam", "b"): [5, 20, 20, 20, 20]}
    _, rows, md, out = fake_bench(capsys, ["a", "b"], ["--algorithms", "adam", "--warmup", "1", "--repeats", "4"],
                                  durations_ms=durations)
    r = rows[("adam", "a")]
    assert (float(r["ms_median"]), float(r["ms_min"]), float(r["ms_q1"]), float(r["ms_q3"]), float(r["ms_iqr"])) \
        == pytest.approx((11.5, 10, 10.25, 12.75, 2.5))
    assert "| ms/step (q1-q3) |" in md
    assert "| adam | a | 11.50 (10.25-12.75) |" in md and "| adam | b | 20.00 (20.00-20.00) |" in md
    assert "ms/step (q1-q3)" in out
    assert any(line.startswith("adam") and " a " in line and "11.50 (10.25-12.75)" in line for line in out.splitlines())


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="draws with matplotlib")
def test_chart_draws_quartile_whiskers(tmp_path, monkeypatch):
    import matplotlib.axes
    drawn = []
    bar = matplotlib.axes.Axes.bar

    def recording_bar(self, *args, **kwargs):
        drawn.append(kwargs["yerr"])
        return bar(self, *args, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", recording_bar)
    row = dict(status="ok", workload="2x8", mode="fp32", algorithm="adam", n_params=16, n_tensors=2)
    rows = [dict(row, implementation="a", gbps=0.1, ms_median=3.0, ms_q1=2.0, ms_q3=3.0),  # median at q3
            dict(row, implementation="b", gbps=0.2, ms_median=4.0, ms_q1=2.0, ms_q3=8.0)]
    assert report.write_png(rows, tmp_path / "c.png", 1.0, "title")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    # whiskers from the GB/s at the third quartile's time to that at the first's
    assert drawn == [[pytest.approx([0.0]), pytest.approx([0.05])], [pytest.approx([0.1]), pytest.approx([0.2])]]


@pytest.mark.parametrize("other_cores, warned", [(0.05, False), (0.9, True)])
def test_busy_machine_warning(fake_bench, capsys, other_cores, warned):
    _, _, md, out = fake_bench(capsys, ["a"], ["--algorithms", "sgd", "--warmup", "1", "--repeats", "3"],
                               other_cores=other_cores)
    assert f"other processes kept {other_cores:.2f} of the {os.cpu_count()} logical cores busy" in md
    assert f"machine load: other processes kept {other_cores:.2f}" in out
    assert ("> **Warning**: the machine was busy: other processes used 0.90 cores" in md) == warned
    assert ("WARNING: the machine was busy" in out) == warned


def test_other_cpu_use_leaves_out_this_process():
    start = CpuSnapshot(wall=100.0, machine=50.0, own=10.0, load=None)
    # 2 s of wall time: the machine used 3 CPU seconds, 1 of them ours -> others kept 1 core busy
    assert other_cpu_use(start, CpuSnapshot(102.0, 53.0, 11.0, None)) == pytest.approx(1.0)
    # this process busy on both cores and nothing else: no other load
    assert other_cpu_use(start, CpuSnapshot(102.0, 54.0, 14.0, None)) == pytest.approx(0.0)
    assert other_cpu_use(CpuSnapshot(100.0, None, 10.0, None), CpuSnapshot(102.0, None, 11.0, None)) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_other_cpu_use_sees_a_busy_process():
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass"])
    try:
        time.sleep(0.3)  # the child has started spinning
        start = CpuSnapshot.take()
        time.sleep(0.6)
        end = CpuSnapshot.take()
    finally:
        child.wait()
    assert other_cpu_use(start, end) > 0.3  # the spinning child: close to 1 core
