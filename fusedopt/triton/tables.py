"""Device-resident multi-tensor tables, cached across steps.

A table describes one call's tensors to the traversal kernel in one int64 device tensor with
three sections (each starting on a 16-byte boundary, so the kernel's pointer arguments keep
one alignment and the kernel one specialisation):

- ``addrs`` ``[n, ncol]``: the data pointer of every tensor of the call, one row per
  parameter: param, grad, then each state slot (0 for an absent slot), then master (0 if none),
  then the call's ``extra`` columns, integers taken as they are (the addresses of 8-bit states'
  scales and maps, stochastic rounding's seeds and offsets: ``fusedopt/triton/launcher.py``);
- ``meta`` ``[n, 3]``: per parameter, its elements, its slot in ``steps`` and its row in
  ``hyper`` (the call's ``index``; 0, 0 for Lookahead, which has neither);
- ``work`` ``[w, 2]``: one row per program: (tensor index, chunk start), chunks of ``block``.

Tables are cached, keyed on the addresses, the sizes, the extra columns and the contents of
``index`` (a new ``index`` tensor with the same entries finds the same table): an optimizer's
tensors keep their storage from step to step, so after the first step a call costs one lookup
and one launch. A table is rebuilt when an address, an extra value or an index entry changes (a
grad set to None and reallocated, a param group added, a new rounding seed), and that is the
only time tensors are inspected (dtype, layout, index range). Building happens on the host
(``index`` lives there); on CUDA the table is uploaded from pinned memory with a non-blocking
copy, so neither building nor using a table synchronises with the device.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

# Tables kept per process. Each optimizer param group and (device, dtype) group uses one; an
# evicted table is only rebuilt, so the cap only bounds memory.
MAX_CACHED = 128


@dataclass
class Table:
    data: torch.Tensor      # int64, on the tensors' device
    addrs: torch.Tensor     # views into ``data``
    meta: torch.Tensor      # (elements, slot in steps, row in hyper) per tensor
    work: torch.Tensor
    n_programs: int
    aligned: bool           # every address is a multiple of 16 bytes (vector loads)
    host: torch.Tensor      # the (pinned) host copy; kept alive until the upload has completed


def _align2(n: int) -> int:
    return (n + 1) & ~1


def _dense_like(t: torch.Tensor, ref: torch.Tensor) -> bool:
    """Whether ``t`` can be walked as a flat span alongside ``ref`` (element i of one is
    element i of the other): both contiguous, or same sizes and strides and ``t`` covers its
    span with no gaps or overlaps (e.g. channels-last, or a transposed parameter)."""
    if t.is_contiguous() and ref.is_contiguous():
        return True
    if t.shape != ref.shape or t.stride() != ref.stride():
        return False
    dims = sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


def _check(columns: list[list[torch.Tensor]], params: list[torch.Tensor]) -> None:
    for c, col in enumerate(columns):
        for i, t in enumerate(col):
            p = params[i]
            if t.device != p.device:
                raise ValueError(f"triton backend: tensor {i} of column {c} is on {t.device}, its param on {p.device}")
            if t.numel() != p.numel():
                raise ValueError(f"triton backend: tensor {i} of column {c} has {t.numel()} elements, "
                                 f"its param {p.numel()}")
            if not _dense_like(t, p):
                raise ValueError(f"triton backend: tensor {i} of column {c} (shape {tuple(t.shape)}, "
                                 f"strides {t.stride()}) is not laid out like its param (strides {p.stride()}); "
                                 "the fused kernels need dense tensors with matching layouts")


def _check_index(index: torch.Tensor, n_steps: int, n_rows: int) -> None:
    """Every entry in range: the kernel would read past ``steps`` or ``hyper`` otherwise."""
    for col, what, limit, unit in ((0, "steps", n_steps, "entries"), (1, "hyper", n_rows, "rows")):
        bad = ((index[:, col] < 0) | (index[:, col] >= limit)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"triton backend: index[{i}, {col}] = {int(index[i, col])} is out of range "
                             f"for {what} ({limit} {unit})")


def _build(columns: list[list[torch.Tensor]], ncol: int, block: int, device: torch.device,
           index: torch.Tensor | None, limits: tuple[int, int], extra: list[list[int]]) -> Table:
    params = columns[0]
    _check(columns, params)
    n = len(params)
    if index is not None:
        _check_index(index, *limits)
    if len(columns) + len(extra) != ncol:
        raise ValueError(f"triton backend: {len(columns)} tensor and {len(extra)} extra columns, "
                         f"the kernel's rows have {ncol}")
    addr = torch.zeros(ncol, n, dtype=torch.int64)
    for c, col in enumerate(columns):
        if len(col):
            addr[c] = torch.tensor([t.data_ptr() for t in col], dtype=torch.int64)
    aligned = bool((addr[:len(columns)] % 16 == 0).all())  # the vector accesses' tensors
    for c, col in enumerate(extra, start=len(columns)):
        addr[c] = torch.tensor(col, dtype=torch.int64)
    sizes = torch.tensor([t.numel() for t in params], dtype=torch.int64)
    chunks = (sizes + (block - 1)) // block
    n_programs = int(chunks.sum())
    tensor_index = torch.repeat_interleave(torch.arange(n, dtype=torch.int64), chunks)
    first = torch.cumsum(chunks, 0) - chunks
    chunk_in_tensor = torch.arange(n_programs, dtype=torch.int64) - torch.repeat_interleave(first, chunks)
    work = torch.stack([tensor_index, chunk_in_tensor * block], 1)

    meta = torch.zeros(n, 3, dtype=torch.int64)
    meta[:, 0] = sizes
    if index is not None:
        meta[:, 1:] = index

    a_len, m_len, w_len = _align2(n * ncol), _align2(3 * n), 2 * n_programs
    host = torch.zeros(a_len + m_len + max(w_len, 2), dtype=torch.int64,
                       pin_memory=device.type == "cuda")
    host[: n * ncol] = addr.t().reshape(-1)
    host[a_len: a_len + 3 * n] = meta.reshape(-1)
    host[a_len + m_len: a_len + m_len + w_len] = work.reshape(-1)
    data = host.to(device, non_blocking=True) if device.type != "cpu" else host
    return Table(data, data[:a_len], data[a_len: a_len + m_len], data[a_len + m_len:], n_programs, aligned, host)


class TableCache:
    """LRU cache of :class:`Table` keyed on the tensors' addresses and sizes and the index."""

    def __init__(self, max_entries: int = MAX_CACHED):
        self.max_entries = max_entries
        self._tables: OrderedDict = OrderedDict()
        self.builds = 0  # tables built so far (tests check that steady steps build none)

    def get(self, columns: list[list[torch.Tensor]], ncol: int, block: int, index: torch.Tensor | None = None,
            limits: tuple[int, int] = (0, 0), check=None, extra: list[list[int]] = ()) -> Table:
        """The table for ``columns`` (param column first; an empty column is an absent slot) and
        the ``extra`` columns after them (one int64 value per param each, taken as given).

        ``index`` is the call's CPU int64 ``[n, 2]`` (slot in ``steps``, row in ``hyper``) per
        param, or None (Lookahead); ``limits`` is (entries of ``steps``, rows of ``hyper``),
        which its entries are checked against when a table is built. ``check()`` runs before a
        new table is built (dtype checks): a call it rejects leaves nothing cached, so it is
        rejected again next time."""
        params = columns[0]
        device = params[0].device
        # The key: every address (an absent column contributes nothing, and its position is
        # fixed by the column lengths), every size, the index's entries and the bounds they
        # were checked against. Comparing these is O(n) in C-level tuple and bytes
        # operations; the Python-level cost is one data_ptr() per tensor.
        key = (device, block, ncol, tuple(len(col) for col in columns),
               tuple([t.data_ptr() for col in columns for t in col]),
               tuple([t.numel() for t in params]),
               b"" if index is None else index.numpy().tobytes(), limits,
               tuple([v for col in extra for v in col]))
        table = self._tables.get(key)
        if table is not None:
            self._tables.move_to_end(key)
            return table
        if check is not None:
            check()
        table = _build(columns, ncol, block, device, index, limits, list(extra))
        self.builds += 1
        self._tables[key] = table
        if len(self._tables) > self.max_entries:
            self._tables.popitem(last=False)
        return table

    def clear(self) -> None:
        self._tables.clear()
