"""fusedopt-bench: a tiny run through main(argv) and the files it writes; the bytes model."""
from __future__ import annotations

import csv
import importlib.util

import pytest
import torch

import fusedopt
from fusedopt.bench import main
from fusedopt.bench.impls import triton_interpreted
from fusedopt.bench.report import COLUMNS
from fusedopt.bench.timing import bytes_per_param, time_calls
from fusedopt.bench.workloads import describe, workload_shapes

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
