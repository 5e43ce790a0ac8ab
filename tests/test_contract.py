"""Every language reads one declaration of each algorithm (Note [one declaration] in
fusedopt/algorithms/contract.py): the generated C++ contract is up to date, the compiled ops
take exactly the declared row width and flags, and the Triton kernels' ids and columns are the
declaration's."""
from __future__ import annotations

import os

import pytest
import torch

from fusedopt import _ext
from fusedopt.algorithms import ALGORITHMS, COMMON_HYPER
from fusedopt.algorithms import contract

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = list(ALGORITHMS)


@pytest.mark.parametrize("rel", list(contract.generated()))
def test_generated_header_is_up_to_date(rel):
    path = os.path.join(ROOT, rel)
    if not os.path.exists(path):
        pytest.skip("not a source tree (the header is not installed)")
    with open(path) as f:
        assert f.read() == contract.generated()[rel], f"stale {rel}: run `python -m fusedopt.algorithms.contract`"


def test_every_algorithm_has_its_header():
    root = os.path.join(ROOT, "csrc", "include", "fusedopt", "algos")
    if not os.path.isdir(root):
        pytest.skip("not a source tree")
    for name in NAMES:
        assert os.path.exists(os.path.join(root, f"{name}.h")), name


def test_header_lists_every_algorithm_in_order():
    text = contract.header()
    names = " ".join(f"X({contract.cxx_name(n)})" for n in NAMES)
    assert f"#define FUSEDOPT_FOR_EACH_ALGORITHM(X) {names}\n" in text
    for algo in ALGORITHMS.values():
        assert f'kName = "{algo.name}"' in text


def _one_tensor_call(algo):
    p, g = torch.zeros(3), torch.zeros(3)
    states = [[torch.zeros(3)] if s in algo.slot_init({**algo.defaults, **_all_flags_on(algo)}) else []
              for s in algo.SLOTS]
    table = torch.ops.fusedopt.state_table([p], *(states + [[]] * (3 - len(states))), None)
    steps = torch.tensor([1.0] + [0.5] * len(algo.SCALAR_STATES))  # the count, the scalar states
    index = torch.zeros(1, 2, dtype=torch.int64)
    return p, g, table, steps, index, states  # the caller keeps the states the table points to


def _all_flags_on(algo):
    return {f: True for f in algo.FLAGS}


@pytest.mark.skipif(not _ext.cpu_status()[0], reason=_ext.cpu_status()[1] or "no compiled CPU kernels")
@pytest.mark.parametrize("name", NAMES)
def test_compiled_ops_take_the_declared_row_and_flags(name):
    """The C++ descriptor's row width, flag count and counters per tensor are the
    declaration's: a row one column wider, one flag more, or a steps buffer one counter short is
    refused, and the declared ones are taken."""
    algo = ALGORITHMS[name]
    op = getattr(torch.ops.fusedopt, name)
    flags = [True] * len(algo.FLAGS)  # as the states of _one_tensor_call
    p, g, table, steps, index, states = _one_tensor_call(algo)
    row = torch.tensor(algo.hyper_row({**algo.defaults, "weight_decay": 0.0, **_all_flags_on(algo)}),
                       dtype=torch.float64)
    with pytest.raises(RuntimeError, match=rf"\[rows, {len(algo.HYPER)}\]"):
        op([p], [g], table, steps, index, torch.zeros(1, len(algo.HYPER) + 1, dtype=torch.float64), flags)
    with pytest.raises(RuntimeError, match=rf"expected {len(algo.FLAGS)} flags"):
        op([p], [g], table, steps, index, row[None], flags + [False])
    if algo.SCALAR_STATES:  # the counters of a tensor must fit in steps
        with pytest.raises(RuntimeError, match=rf"\({len(steps)} counters per tensor\)"):
            op([p], [g], table, steps[:-1], index, row[None], flags)
    op([p], [g], table, steps, index, row[None], flags)  # the declared ones: taken
    assert torch.isfinite(p).all()
    torch.ops.fusedopt.release_table(table)


def test_triton_functions_and_columns_are_the_declaration():
    """Every declared algorithm has its Triton scalars and math functions (and its reduced
    scalars exactly when it REDUCES), found by name; the columns they read are the declaration's."""
    pytest.importorskip("triton")
    from fusedopt.triton import kernels
    for name in NAMES:
        scalars, math, reduced = kernels.rule(name)
        assert scalars is not None and math is not None, name
        assert (reduced is not None) == ALGORITHMS[name].REDUCES, name
    for name in NAMES:
        for c, col in enumerate(ALGORITHMS[name].HYPER):
            assert getattr(kernels, f"{name.upper()}_{col.upper()}").value == c
    for c, col in enumerate(COMMON_HYPER):
        assert getattr(kernels, f"COL_{col.upper()}").value == c
