"""Train a small CNN on scikit-learn's 8x8 handwritten digits with every fusedopt optimizer.

The digits set (1,797 images, 10 classes) ships inside scikit-learn, so nothing is downloaded;
it stands in for MNIST. The train/test split, the initial weights and the batch order are all
fixed by ``--seed``, so each fusedopt run can be repeated with the torch.optim optimizer of the
same algorithm and the two loss curves compared step by step.

Default run: every fusedopt optimizer plus ``Lookahead(RAdam)``, each repeated with torch.optim
where torch has the algorithm (all but Yogi and Lookahead). It writes

* ``<out>/curves.png``      training loss and test accuracy per epoch, one line per optimizer;
* ``<out>/summary.md``      final test accuracy and time per epoch, fusedopt and torch.optim;
* ``<out>/lr_sweep.png``, ``lr_sweep.md`` (with ``--lr-sweep`` or ``--sweep-only``) Adam vs
  RAdam without warmup across learning rates, to test the claim of the RAdam paper (Liu et al.,
  ICLR 2020) that RAdam is robust to the choice of lr.

With ``--storage`` it runs, instead of the default run, every optimizer of the table below (the
default run's nine plus NAdam, Adamax, Lion and LAMB) in four storage variants from the same seed
(``VARIANTS``), and writes ``<out>/storage.png`` and ``<out>/storage.md``:

* ``float32``  float32 params and states: the baseline;
* ``8bit``     ``state_dtype="8bit"``: the states of params with at least ``min_8bit_size`` (4,096)
  elements (here conv2, 4,608, and fc1, 32,768: 37,376 of the 38,282 parameters) are block-wise
  quantized, one float32 absmax per 256 elements and one byte per element through the dynamic
  tree map, dequantized, updated in float32 and quantized again every step (Dettmers, Lewis,
  Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization", ICLR 2022);
* ``bf16+SR``  the model in bfloat16 (params, inputs and activations; the loss from float32
  logits), float32 states, ``stochastic_rounding=True``: each step's float32 result ``x`` is
  stored as the bf16 neighbour above with probability ``(x - x_lo) / (x_hi - x_lo)``, else the one
  below, so that ``E[round(x)] = x`` and updates smaller than half an ulp survive in expectation
  (Gupta, Agrawal, Gopalakrishnan & Narayanan, "Deep Learning with Limited Numerical Precision",
  ICML 2015);
* ``bf16 RN``  the same bf16 model with round-to-nearest, the contrast: an update smaller than
  half a bf16 ulp of its weight (2^-9 relative) is lost.

The hyperparameters are the same in all four; the library's claim is that 8bit and bf16+SR
reach the float32-state accuracy within 1 point. ``--storage-seeds K`` repeats every training
with K seeds (initial weights, batch order, rounding bits; the split stays that of ``--seed``).

Examples::

    python examples/train_digits.py                        # the default run, results/ beside this file
    python examples/train_digits.py --lr-sweep             # also the Adam-vs-RAdam lr sweep
    python examples/train_digits.py --only Adam RAdam --accumulate 4 --clip 1.0 --warmup 50
    python examples/train_digits.py --storage --storage-seeds 3   # storage.png, storage.md (results/)

Learning rates per optimizer (tuned by hand on this problem, 12 epochs, batch 32):

=================  ==========================================  =====================
optimizer          hyperparameters                             why
=================  ==========================================  =====================
SGD                lr=0.05, momentum=0.9                        plain SGD needs momentum here
Adagrad            lr=0.03                                      the accumulator shrinks steps fast
Adadelta           lr=1.0                                       the paper's (unit-free) default
RMSprop            lr=1e-3                                      1e-2 (torch default) oscillates
Adam               lr=2e-3                                      slightly above the 1e-3 default
AdamW              lr=2e-3, weight_decay=1e-2                   as Adam, decoupled decay
Yogi               lr=1e-2, eps=1e-3                             the paper's defaults
RAdam              lr=5e-3                                      its first steps are damped (README)
Lookahead(RAdam)   RAdam lr=5e-3, k=5, alpha=0.5                the Lookahead paper's k, alpha
NAdam              lr=2e-3                                      Adam's; torch's default
Adamax             lr=1e-2                                      the inf-norm step is smaller (a)
Lion               lr=3e-4                                      sign steps: ~Adam's / 7 (b)
LAMB               lr=5e-3, weight_decay=0.01 (its default)     trust ratio; 3e-2 collapses (c)
=================  ==========================================  =====================

The last four are not in the default run (whose committed results predate them); ``--storage``
runs them, and ``--only`` names them. Their lrs were picked on float32 states, 12 epochs, seeds
0 and 1, from a few values each (final test accuracy, seed 0 / seed 1):

(a) Adamax divides by the running max of |g| rather than its RMS, a larger denominator, so it
    takes a larger lr than Adam: 2e-3 (the paper's default) 97.8 / 97.6%, 5e-3 98.7 / 98.7%,
    1e-2 99.1 / 98.7%, 2e-2 99.1 / 98.9%; 1e-2 is in the middle of the plateau.
(b) Lion's update is sign(.) * lr, every element moving by the full lr, so Chen et al. (2023)
    recommend an lr 3-10x below AdamW's: 1e-4 93.3 / 94.7%, 3e-4 97.6 / 96.7%, 1e-3 97.3 / 97.1%.
(c) LAMB scales each layer's step to lr * ||w||: 3e-3 96.9 / 97.6%, 5e-3 98.0 / 97.3%, 1e-2
    98.4 / 99.1%, 1.5e-2 95.8 / 91.8%, 3e-2 10.0 / 10.0% (collapsed to chance). 5e-3 stays a factor
    3 below where it starts to degrade, so that the storage variants are not compared at an edge
    of stability.

Gradient accumulation (``--accumulate K``) sums the gradients of K micro-batches of
``--batch-size`` samples before each step, each micro-batch loss divided by K (by its share of
the samples when the epoch's last group is short, so the step always sees the mean over the
samples it used). Clipping (``--clip C``) rescales the accumulated gradient to global L2 norm
at most C. Warmup (``--warmup N``) ramps the lr linearly from lr/N to lr over the first N
optimizer steps.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import fusedopt
except ImportError:  # running from a source checkout without installing: use the checkout's package
    sys.path.insert(0, os.path.dirname(HERE))
    import fusedopt
DEFAULT_OUT = os.path.join(HERE, "results")


# ----------------------------------------------------------------------------- data and model
@dataclass
class Digits:
    """Train and test tensors: images ``(N, 1, 8, 8)`` float32, standardised with the training
    set's mean and std; labels ``(N,)`` int64."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_data(seed: int = 0, test_size: float = 0.25) -> Digits:
    """scikit-learn's digits, split into train and test (stratified) by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8), values 0..16
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx = torch.arange(len(y)).numpy()
    train_idx, test_idx = train_test_split(idx, test_size=test_size, random_state=seed,
                                           stratify=digits.target)
    x_train, x_test = x[train_idx], x[test_idx]
    mean, std = x_train.mean(), x_train.std()
    return Digits((x_train - mean) / std, y[train_idx], (x_test - mean) / std, y[test_idx])


def subset(data: Digits, n_train: int, n_test: int | None = None) -> Digits:
    """The first ``n_train`` training and ``n_test`` test examples (for quick runs and tests)."""
    n_test = len(data.y_test) if n_test is None else n_test
    return Digits(data.x_train[:n_train], data.y_train[:n_train], data.x_test[:n_test], data.y_test[:n_test])


class DigitsCNN(nn.Module):
    """conv3x3(1->16) - ReLU - conv3x3(16->32) - ReLU - maxpool2 - fc(512->64) - ReLU - fc(64->10).
    About 40k parameters in 8 tensors."""

    def __init__(self, width: int = 16, hidden: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def build_model(seed: int = 0, width: int = 16, hidden: int = 64) -> nn.Module:
    """The CNN, its initial weights fixed by ``seed`` (the same for every optimizer)."""
    torch.manual_seed(seed)
    return DigitsCNN(width, hidden)


# ----------------------------------------------------------------------------- optimizers
OptFactory = Callable[[list], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptSpec:
    """One optimizer of the default run: its fusedopt factory and, where torch has the
    algorithm, the torch.optim factory with the same hyperparameters."""
    name: str
    hparams: str
    fused: Callable[..., torch.optim.Optimizer]  # (params, backend="auto", **storage) -> optimizer
    torch: OptFactory | None


def _lookahead_radam(params, backend="auto", lr=5e-3, **storage):
    return fusedopt.Lookahead(fusedopt.RAdam(params, lr=lr, backend=backend, **storage), k=5, alpha=0.5)


def _fused(cls_name: str, **hparams) -> Callable[..., torch.optim.Optimizer]:
    """``(params, backend="auto", **storage) -> fusedopt.<cls_name>(params, **hparams, ...)``; ``storage``
    are the storage options (``state_dtype``, ``stochastic_rounding``, ...) of :data:`VARIANTS`."""
    def make(params, backend="auto", **storage):
        return getattr(fusedopt, cls_name)(params, **hparams, backend=backend, **storage)
    return make


# Learning rates per optimizer: see the table in the module docstring.
OPTIMIZERS: dict[str, OptSpec] = {s.name: s for s in [
    OptSpec("SGD", "lr=0.05, momentum=0.9", _fused("SGD", lr=0.05, momentum=0.9),
            lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    OptSpec("Adagrad", "lr=0.03", _fused("Adagrad", lr=0.03),
            lambda p: torch.optim.Adagrad(p, lr=0.03)),
    OptSpec("Adadelta", "lr=1.0", _fused("Adadelta", lr=1.0),
            lambda p: torch.optim.Adadelta(p, lr=1.0)),
    OptSpec("RMSprop", "lr=1e-3", _fused("RMSprop", lr=1e-3),
            lambda p: torch.optim.RMSprop(p, lr=1e-3)),
    OptSpec("Adam", "lr=2e-3", _fused("Adam", lr=2e-3),
            lambda p: torch.optim.Adam(p, lr=2e-3)),
    OptSpec("AdamW", "lr=2e-3, weight_decay=1e-2", _fused("AdamW", lr=2e-3, weight_decay=1e-2),
            lambda p: torch.optim.AdamW(p, lr=2e-3, weight_decay=1e-2)),
    OptSpec("Yogi", "lr=1e-2, eps=1e-3", _fused("Yogi", lr=1e-2, eps=1e-3), None),
    OptSpec("RAdam", "lr=5e-3", _fused("RAdam", lr=5e-3),
            lambda p: torch.optim.RAdam(p, lr=5e-3)),
    OptSpec("Lookahead(RAdam)", "RAdam lr=5e-3, k=5, alpha=0.5", _lookahead_radam, None),
    # Not in the default run (whose committed results predate them); in --storage, and in --only.
    OptSpec("NAdam", "lr=2e-3", _fused("NAdam", lr=2e-3),
            lambda p: torch.optim.NAdam(p, lr=2e-3)),
    OptSpec("Adamax", "lr=1e-2", _fused("Adamax", lr=1e-2),
            lambda p: torch.optim.Adamax(p, lr=1e-2)),
    OptSpec("Lion", "lr=3e-4", _fused("Lion", lr=3e-4), None),
    OptSpec("LAMB", "lr=5e-3 (weight_decay=0.01)", _fused("LAMB", lr=5e-3), None),
]}
# The default run: the optimizers of the committed results/summary.md.
DEFAULT_RUN = ["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW", "Yogi", "RAdam", "Lookahead(RAdam)"]


# ----------------------------------------------------------------------------- clipping, warmup
def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """Global-norm clipping: fusedopt's fused version when the installed fusedopt has one,
    else torch's. Returns the norm before clipping."""
    clip = getattr(fusedopt, "clip_grad_norm_", None) or torch.nn.utils.clip_grad_norm_
    return clip(params, max_norm)


def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int):
    """A scheduler that scales the lr by ``min(1, (step + 1) / warmup_steps)``: lr/N on the
    first step, the full lr from step N on. fusedopt's own schedule when it has one (it also
    drives a tensor lr in place), else torch's LambdaLR with the same factor."""
    schedules = getattr(fusedopt, "schedules", None)
    if schedules is not None and hasattr(schedules, "LinearWarmupLR"):
        return schedules.LinearWarmupLR(optimizer, warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps))


# ----------------------------------------------------------------------------- training
@dataclass
class History:
    """What one training run measured."""
    step_loss: list[float] = field(default_factory=list)   # loss of every optimizer step (mean over its samples)
    epoch_loss: list[float] = field(default_factory=list)  # mean training loss per epoch
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)    # after each epoch, in [0, 1]
    lr: list[float] = field(default_factory=list)          # lr used by each step (first group)
    epoch_time: list[float] = field(default_factory=list)  # seconds of training per epoch (evaluation excluded)
    param_dtype: str = "float32"  # the model's parameter dtype
    # 8-bit states at the end of training (storage_counts): slots stored as codes + scales, the
    # params that have them, and those params' elements; and all params' elements
    eight_bit_slots: int = 0
    eight_bit_params: int = 0
    eight_bit_elements: int = 0
    n_elements: int = 0
    wall: float = 0.0  # seconds from start to end of train() (evaluation included)

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1]

    @property
    def time_per_epoch(self) -> float:
        # the first epoch also pays for lazy state creation and first-call costs: report the median
        ts = sorted(self.epoch_time)
        return ts[len(ts) // 2]


def _param_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on ``x, y``; the inputs in the model's dtype, the loss from
    float32 logits."""
    model.eval()
    logits = model(x.to(_param_dtype(model))).float()
    model.train()
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train(opt_factory: OptFactory, data: Digits, *, epochs: int = 12, batch_size: int = 32,
          seed: int = 0, accumulate: int = 1, clip: float | None = None, warmup: int = 0,
          model_kwargs: dict | None = None, dtype: torch.dtype = torch.float32, progress: bool = True,
          desc: str = "") -> History:
    """Train a fresh :func:`build_model` (initial weights from ``seed``) with the optimizer that
    ``opt_factory(params)`` returns, and return its :class:`History`.

    The batch order is drawn from a generator seeded with ``seed``, so two runs with the same
    seed see the same batches in the same order whatever the optimizer. ``dtype`` is the dtype
    of the params (the float32 initial weights rounded to it) and of the activations; the loss
    is always computed from float32 logits (a bf16 log-softmax loses the small probabilities).
    """
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1, got {accumulate}")
    t_start = time.perf_counter()
    model = build_model(seed, **(model_kwargs or {})).to(dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = opt_factory(params)
    scheduler = linear_warmup(optimizer, warmup) if warmup > 0 else None
    gen = torch.Generator().manual_seed(seed)
    n = len(data.y_train)
    hist = History()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs, desc=desc or "train", unit="epoch", leave=False, dynamic_ncols=True)
    for _ in range(epochs):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        micro = list(order.split(batch_size))
        total, seen = 0.0, 0
        for start in range(0, len(micro), accumulate):
            group = micro[start:start + accumulate]
            n_group = sum(len(b) for b in group)
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for idx in group:
                loss = F.cross_entropy(model(data.x_train[idx].to(dtype)).float(), data.y_train[idx])
                # Weight each micro-batch by its share of the step's samples: 1/K when all K are
                # full, and the step's gradient is then the mean over every sample it used.
                (loss * (len(idx) / n_group)).backward()
                step_loss += loss.item() * len(idx)
            if clip is not None:
                clip_grad_norm(params, clip)
            hist.lr.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            hist.step_loss.append(step_loss / n_group)
            total += step_loss
            seen += n_group
        hist.epoch_time.append(time.perf_counter() - t0)
        hist.epoch_loss.append(total / seen)
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
        hist.test_loss.append(test_loss)
        hist.test_acc.append(test_acc)
        if bar is not None:
            bar.set_postfix(loss=f"{hist.epoch_loss[-1]:.4f}", acc=f"{test_acc:.4f}")
            bar.update()
    if bar is not None:
        bar.close()
    hist.param_dtype = str(dtype).replace("torch.", "")
    hist.eight_bit_slots, hist.eight_bit_params, hist.eight_bit_elements = storage_counts(optimizer)
    hist.n_elements = sum(p.numel() for p in params)
    hist.wall = time.perf_counter() - t_start
    return hist


def storage_counts(optimizer: torch.optim.Optimizer) -> tuple[int, int, int]:
    """What of ``optimizer``'s state is 8-bit, read from its ``state_dict()``: (state slots stored
    as codes + scales, i.e. entries ending in ``_absmax``; params with at least one such slot;
    the elements of those params). A Lookahead's inner optimizer is looked into; a torch.optim
    optimizer has none."""
    sd = optimizer.state_dict()
    if "inner" in sd:  # fusedopt.Lookahead
        sd, optimizer = sd["inner"], optimizer.optimizer
    numel = {}
    for saved, group in zip(sd["param_groups"], optimizer.param_groups):
        numel.update({key: p.numel() for key, p in zip(saved["params"], group["params"])})
    slots = params = elements = 0
    for key, st in sd["state"].items():
        n = sum(1 for name in st if isinstance(name, str) and name.endswith(fusedopt.lowbit.ABSMAX_SUFFIX))
        if n:
            slots, params, elements = slots + n, params + 1, elements + numel[key]
    return slots, params, elements


# ----------------------------------------------------------------------------- figures and table
def _cpu_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    return cpu


def machine_line() -> str:
    backend = fusedopt.backends.get_backend("auto", torch.device("cpu"))
    backend_name = type(backend).__module__.rsplit(".", 1)[-1]
    return (f"{os.cpu_count()}-core CPU ({_cpu_name()}), torch threads: {torch.get_num_threads()}, "
            f"torch {torch.__version__}, Python {platform.python_version()}, fusedopt {fusedopt.__version__} "
            f"(backend=\"auto\" -> {backend_name}), {datetime.date.today().isoformat()}")


def fusedopt_commit(search: int = 50) -> str:
    """Which fusedopt is imported, as a commit of the checkout this script lives in: its short
    HEAD, and whether fusedopt/ or csrc/ have uncommitted changes; for a copy installed elsewhere
    (a wheel), the newest of the last ``search`` commits whose fusedopt/*.py equal the copy's.
    "unknown" without git."""
    import hashlib
    import subprocess
    repo = os.path.dirname(HERE)
    pkg = os.path.dirname(os.path.abspath(fusedopt.__file__))
    git = lambda *a: subprocess.run(["git", "-C", repo, *a], capture_output=True, text=True,  # noqa: E731
                                     check=True, timeout=30).stdout
    try:
        rev = git("rev-parse", "--short", "HEAD").strip()
        if os.path.realpath(pkg) == os.path.realpath(os.path.join(repo, "fusedopt")):
            dirty = git("status", "--porcelain", "--", "fusedopt", "csrc").strip()
            return rev + (" (with uncommitted changes in fusedopt/ or csrc/)" if dirty else "")
        ours = {}
        for root, _, files in os.walk(pkg):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(root, name), "rb") as f:
                        data = f.read()
                    ours[os.path.relpath(os.path.join(root, name), pkg)] = hashlib.sha1(
                        b"blob %d\0" % len(data) + data).hexdigest()
        for commit in git("rev-list", f"--max-count={search}", "HEAD").split():
            tree = {}
            for line in git("ls-tree", "-r", commit, "--", "fusedopt").splitlines():
                meta, path = line.split("\t", 1)
                if path.endswith(".py"):
                    tree[os.path.relpath(path, "fusedopt")] = meta.split()[2]
            if tree == ours:
                short = git("rev-parse", "--short", commit).strip()
                return (short + (f" (HEAD is {rev})" if short != rev else "")
                        + f" (an installed copy: its Python sources are those of {short})")
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return "unknown"
    return f"unknown (an installed copy: its Python sources match none of the last {search} commits; HEAD is {rev})"


def storage_machine_line() -> str:
    """As :func:`machine_line`, but naming only the backend that was asked for (``"auto"``, which
    may pick a different backend for 8-bit states and stochastic rounding than for plain float32
    states) and the fusedopt commit."""
    return (f"{os.cpu_count()}-core CPU ({_cpu_name()}), torch threads: {torch.get_num_threads()}, "
            f"torch {torch.__version__}, Python {platform.python_version()}, fusedopt {fusedopt.__version__} "
            f"commit {fusedopt_commit()}, backend=\"auto\", {datetime.date.today().isoformat()}")


def plot_curves(results: dict[str, dict[str, History]], path: str) -> None:
    """Training loss and test accuracy per epoch; fusedopt solid, torch.optim dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.get_cmap("tab10")
    for i, (name, runs) in enumerate(results.items()):
        for impl, style in (("fusedopt", "-"), ("torch.optim", "--")):
            h = runs.get(impl)
            if h is None:
                continue
            epochs = range(1, len(h.epoch_loss) + 1)
            label = name if impl == "fusedopt" else None
            ax_loss.plot(epochs, h.epoch_loss, style, color=colors(i), label=label, lw=1.6 if style == "-" else 1.0)
            ax_acc.plot(epochs, [100 * a for a in h.test_acc], style, color=colors(i), label=label,
                        lw=1.6 if style == "-" else 1.0)
    ax_loss.set(yscale="log", xlabel="epoch", ylabel="training loss (mean cross-entropy)",
                title="Training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy (axis from 85%; dotted: 97%)",
               ylim=(85, 100))
    ax_acc.axhline(97, color="grey", lw=0.8, ls=":")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(loc="lower right", fontsize=9, title="solid: fusedopt, dashed: torch.optim", title_fontsize=8)
    fig.suptitle("scikit-learn digits (8x8), small CNN — " + machine_line(), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LOSS_RTOL, LOSS_ATOL = 1e-4, 1e-5


def curve_agreement(a: list[float], b: list[float]) -> tuple[int, float]:
    """(number of leading steps where the two loss curves agree to float32 tolerance,
    largest absolute difference over all steps)."""
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    bad = ((x - y).abs() > LOSS_ATOL + LOSS_RTOL * y.abs()).nonzero()
    same = int(bad[0]) if len(bad) else len(x)
    return same, (x - y).abs().max().item()


def summary_table(results: dict[str, dict[str, History]], args) -> str:
    lines = [
        "# Digits classifier: every fusedopt optimizer",
        "",
        f"Machine: {machine_line()}.",
        "",
        f"Command: `python examples/train_digits.py {' '.join(args.argv)}`".rstrip() + " "
        f"({args.epochs} epochs, batch {args.batch_size}, accumulate {args.accumulate}, "
        f"clip {args.clip}, warmup {args.warmup}, seed {args.seed}; "
        f"{args.n_train} training and {args.n_test} test images).",
        "",
        "Time per epoch is the median over epochs of the training loop (forward, backward, step; "
        "evaluation excluded). The model is small, so it is mostly forward and backward, not the "
        "optimizer step. *same loss for* counts the optimizer steps, from the first, over which the "
        "fusedopt and torch.optim per-step training losses of the same seed agree to float32 "
        f"tolerance (rtol {LOSS_RTOL:g}, atol {LOSS_ATOL:g}); rounding differences of one ulp grow "
        "over hundreds of steps until the two trajectories part, as two float32 runs of any "
        "optimizer that round differently do. *max |loss diff|* is over the whole run.",
        "",
        "| optimizer | hyperparameters | fusedopt test acc | fusedopt s/epoch | torch.optim test acc "
        "| torch.optim s/epoch | same loss for | max \\|loss diff\\| |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        f, t = runs["fusedopt"], runs.get("torch.optim")
        if t is not None:
            same, diff = curve_agreement(f.step_loss, t.step_loss)
            tcols = (f"{100 * t.final_acc:.2f}% | {t.time_per_epoch:.3f} | "
                     f"{same} of {len(f.step_loss)} steps | {diff:.1e}")
        else:
            tcols = "— | — | — | —"
        lines.append(f"| {name} | {OPTIMIZERS[name].hparams} | {100 * f.final_acc:.2f}% | "
                     f"{f.time_per_epoch:.3f} | {tcols} |")
    lines.append("")
    return "\n".join(lines)


def lr_sweep(data: Digits, lrs: list[float], seeds: list[int], epochs: int, batch_size: int,
             progress: bool = True, backend: str = "auto") -> dict[str, dict[float, list[History]]]:
    """Adam and RAdam (fusedopt, no warmup) at each lr and seed."""
    out: dict[str, dict[float, list[History]]] = {"Adam": {}, "RAdam": {}}
    for name in out:
        cls = getattr(fusedopt, name)
        for lr in lrs:
            out[name][lr] = [train(lambda p, lr=lr: cls(p, lr=lr, backend=backend), data, epochs=epochs, batch_size=batch_size,
                                   seed=s, progress=progress, desc=f"{name} lr={lr:g} seed={s}")
                             for s in seeds]
    return out


def plot_lr_sweep(sweep: dict[str, dict[float, list[History]]], path: str, epochs: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.6))
    for name, color in (("Adam", "tab:blue"), ("RAdam", "tab:red")):
        lrs = sorted(sweep[name])
        for ax, get, scale in ((ax_acc, lambda h: h.final_acc, 100), (ax_loss, lambda h: h.epoch_loss[-1], 1)):
            vals = [[scale * get(h) for h in sweep[name][lr]] for lr in lrs]
            mean = [sum(v) / len(v) for v in vals]
            ax.plot(lrs, mean, "o-", color=color, label=f"{name} (mean)")
            for lr, v in zip(lrs, vals):
                ax.scatter([lr] * len(v), v, color=color, s=10, alpha=0.45)
    n_seeds = len(next(iter(sweep["Adam"].values())))
    ax_acc.set(xscale="log", xlabel="learning rate", ylabel="final test accuracy (%)",
               title=f"Test accuracy after {epochs} epochs")
    ax_loss.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final-epoch training loss",
                title="Training loss, last epoch")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(f"Adam vs RAdam without warmup, {n_seeds} seeds per point (dots) — " + machine_line(),
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_table(sweep: dict[str, dict[float, list[History]]]) -> str:
    lrs = sorted(sweep["Adam"])
    lines = ["| lr | " + " | ".join(f"{lr:g}" for lr in lrs) + " |", "|---|" + "---:|" * len(lrs)]
    for name in sweep:
        cells = []
        for lr in lrs:
            accs = [100 * h.final_acc for h in sweep[name][lr]]
            cells.append(f"{sum(accs) / len(accs):.1f}% ({min(accs):.1f}–{max(accs):.1f})")
        lines.append(f"| {name} test acc, mean (min–max) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- storage options
@dataclass(frozen=True)
class Variant:
    """One way of storing params and optimizer states (``--storage``)."""
    name: str
    dtype: torch.dtype  # the params' (and activations') dtype
    storage: dict       # optimizer options; stochastic rounding also gets rounding_seed=seed
    about: str


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("float32", torch.float32, {}, "float32 params and float32 states (the baseline)"),
    Variant("8bit", torch.float32, {"state_dtype": "8bit"},
            "float32 params; states of params with >= 4096 elements block-wise 8-bit (min_8bit_size default)"),
    Variant("bf16+SR", torch.bfloat16, {"stochastic_rounding": True},
            "bfloat16 params, float32 states, each step's float32 result stochastically rounded to bf16"),
    Variant("bf16 RN", torch.bfloat16, {},
            "bfloat16 params, float32 states, each step's result rounded to nearest (no master "
            "weights): the contrast"),
]}


def storage_options(variant: Variant, seed: int) -> dict:
    opts = dict(variant.storage)
    if opts.get("stochastic_rounding"):
        opts["rounding_seed"] = seed  # fixed, rather than drawn from torch's generator
    return opts


def run_storage(data: Digits, names: list[str], seeds: list[int], *, epochs: int = 12, batch_size: int = 32,
                variants: list[str] | None = None, backend: str = "auto",
                progress: bool = True) -> dict[str, dict[str, list[History]]]:
    """Every optimizer of ``names`` under every storage variant, one training per seed (the seed
    fixes the initial weights, the batch order and the rounding bits; the same for all variants):
    ``runs[name][variant][i]`` is the History of ``seeds[i]``."""
    runs: dict[str, dict[str, list[History]]] = {}
    for name in names:
        spec = OPTIMIZERS[name]
        runs[name] = {}
        for vname in variants or list(VARIANTS):
            v = VARIANTS[vname]
            runs[name][vname] = [
                train(lambda p, v=v, s=s: spec.fused(p, backend=backend, **storage_options(v, s)), data,
                      epochs=epochs, batch_size=batch_size, seed=s, dtype=v.dtype, progress=progress,
                      desc=f"{name} {vname} seed={s}")
                for s in seeds]
        base = runs[name].get("float32")
        cols = []
        for vname, hs in runs[name].items():
            acc = _mean([100 * h.final_acc for h in hs])
            delta = "" if base is None or vname == "float32" else f" ({_delta(hs, base):+.2f})"
            cols.append(f"{vname} {acc:6.2f}%{delta}")
        print(f"{name:<17} " + "  ".join(cols) + f"  [{sum(h.wall for hs in runs[name].values() for h in hs):.0f} s]",
              flush=True)
    return runs


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def _delta(hs: list[History], base: list[History]) -> float:
    """Mean over seeds of (accuracy - float32 accuracy of the same seed), in points."""
    return _mean(100 * (h.final_acc - b.final_acc) for h, b in zip(hs, base))


STORAGE_TARGET = 1.0  # points: the claim, 8-bit and bf16+SR within 1 point of float32 states


def storage_table(runs: dict[str, dict[str, list[History]]], seeds: list[int]) -> str:
    """The markdown table: final test accuracy per optimizer and variant, the difference to the
    float32 states of the same seeds, and what was 8-bit."""
    variants = list(next(iter(runs.values())))
    multi = len(seeds) > 1
    head = "| optimizer | hyperparameters |"
    rule = "|---|---|"
    for v in variants:
        head += f" {v} |" + ("" if v == "float32" else " Δ |")
        rule += "---:|" + ("" if v == "float32" else "---:|")
    head += " 8-bit states (8bit run) |"
    rule += "---|"
    lines = [head, rule]
    for name, by_variant in runs.items():
        base = by_variant.get("float32")
        row = f"| {name} | {OPTIMIZERS[name].hparams} |"
        for v, hs in by_variant.items():
            accs = [100 * h.final_acc for h in hs]
            cell = f"{_mean(accs):.2f}%" + (" (" + " / ".join(f"{a:.2f}" for a in accs) + ")" if multi else "")
            row += f" {cell} |"
            if v != "float32":
                if base is None:
                    row += " — |"
                else:
                    d = _delta(hs, base)
                    miss = d < -STORAGE_TARGET and v in ("8bit", "bf16+SR")
                    worst = min(100 * (h.final_acc - b.final_acc) for h, b in zip(hs, base))
                    row += f" {'**' if miss else ''}{d:+.2f}{'**' if miss else ''}" + (
                        f" [{worst:+.2f}]" if multi else "") + " |"
        h8 = by_variant.get("8bit", [None])[0]
        row += (f" {h8.eight_bit_slots} slots of {h8.eight_bit_params} params, "
                f"{h8.eight_bit_elements:,} of {h8.n_elements:,} elements |" if h8 is not None else " — |")
        lines.append(row)
    return "\n".join(lines)


def storage_times(runs: dict[str, dict[str, list[History]]]) -> str:
    """Median seconds per epoch of each variant, over optimizers and seeds."""
    variants = list(next(iter(runs.values())))
    cells = []
    for v in variants:
        ts = sorted(h.time_per_epoch for r in runs.values() for h in r[v])
        cells.append(f"{v} {ts[len(ts) // 2]:.2f}")
    return "median s/epoch (training loop only): " + ", ".join(cells)


def plot_storage(runs: dict[str, dict[str, list[History]]], path: str, seeds: list[int]) -> None:
    """One panel per optimizer: test accuracy per epoch of each variant (first seed); a last
    panel with the final accuracy differences to float32 states."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    variants = list(next(iter(runs.values())))
    ncols = 4
    nrows = -(-(len(names) + 1) // ncols)
    fig = plt.figure(figsize=(4.2 * ncols, 3.1 * nrows + 0.4))
    grid = fig.add_gridspec(nrows, ncols)
    colors = {"float32": "black", "8bit": "tab:blue", "bf16+SR": "tab:green", "bf16 RN": "tab:red"}
    styles = {"float32": "-", "8bit": "--", "bf16+SR": "-", "bf16 RN": ":"}
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[i // ncols, i % ncols])
        for v in variants:
            h = runs[name][v][0]
            ax.plot(range(1, len(h.test_acc) + 1), [100 * a for a in h.test_acc], styles.get(v, "-"),
                    color=colors.get(v), lw=1.4, label=f"{v} {100 * h.final_acc:.2f}%")
        ax.set_ylim(85, 100)
        ax.axhline(97, color="grey", lw=0.6, ls=":")
        ax.set_title(f"{name} ({OPTIMIZERS[name].hparams})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        if i % ncols == 0:
            ax.set_ylabel("test accuracy (%)")
        if i // ncols == nrows - 1 or i + ncols >= len(names):
            ax.set_xlabel("epoch")
    # the summary panel takes the rest of the last row
    i = len(names)
    ax = fig.add_subplot(grid[i // ncols, i % ncols:])
    others = [v for v in variants if v != "float32"]
    width = 0.8 / max(1, len(others))
    for j, v in enumerate(others):
        ds = [_delta(runs[n][v], runs[n]["float32"]) for n in names]
        ax.bar([k + (j - (len(others) - 1) / 2) * width for k in range(len(names))], ds, width,
               color=colors.get(v), label=v)
    ax.axhline(-STORAGE_TARGET, color="grey", lw=0.8, ls="--")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(names)), [n.replace("Lookahead(RAdam)", "LA(RAdam)") for n in names], rotation=45,
                  ha="right", fontsize=8)
    ax.set_ylabel("Δ test acc vs float32 (points)")
    ax.set_title(f"final accuracy minus that of float32 states, mean over {len(seeds)} seed(s); dashed: -1 point",
                 fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.suptitle("Digits CNN: float32 states vs 8-bit states vs bf16 params with stochastic rounding (SR) or "
                 f"round-to-nearest (RN); curves of seed {seeds[0]}\n" + storage_machine_line(), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_storage_report(runs: dict[str, dict[str, list[History]]], seeds: list[int], args, elapsed: float,
                         path: str) -> str:
    table = storage_table(runs, seeds)
    seed_note = (f"seed {seeds[0]}" if len(seeds) == 1 else
                 f"seeds {seeds[0]}..{seeds[-1]}, mean (per seed) and mean of the per-seed differences")
    text = "\n".join([
        "# Digits classifier: 8-bit optimizer states and bf16 params with stochastic rounding",
        "",
        f"Machine: {storage_machine_line()}.",
        "",
        f"Command: `python examples/train_digits.py {' '.join(args.argv)}`".rstrip()
        + f" ({args.epochs} epochs, batch {args.batch_size}, {seed_note}; the seed fixes the initial weights, "
          f"the batch order and the rounding bits, the same for every variant; the split is that of seed "
          f"{args.seed}: {args.n_train} training and {args.n_test} test images, so one image is "
          f"{100 / args.n_test:.2f} points).",
        "",
        "Variants (the same learning rate and hyperparameters in all four):",
        "",
        *[f"- **{v.name}**: {v.about}." for v in VARIANTS.values() if v.name in next(iter(runs.values()))],
        "",
        "Final test accuracy; Δ is the difference to the float32 states in points"
        + (" (mean over the seeds [the worst seed's])" if len(seeds) > 1 else "")
        + f". The target is 8bit and bf16+SR within {STORAGE_TARGET:g} point of float32; misses of the "
          "mean are **bold**.",
        "",
        table,
        "",
        f"{storage_times(runs)}. Whole run: {elapsed:.0f} s.",
        "",
    ])
    with open(path, "w") as f:
        f.write(text)
    import json
    with open(os.path.splitext(path)[0] + ".json", "w") as f:  # every curve, to redraw or re-tabulate
        json.dump({name: {v: [dict(seed=s, **h.__dict__) for s, h in zip(seeds, hs)] for v, hs in r.items()}
                   for name, r in runs.items()}, f)
    return text


# ----------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32, help="micro-batch size (default 32)")
    p.add_argument("--accumulate", type=int, default=1, metavar="K",
                   help="sum the gradients of K micro-batches per optimizer step (loss divided by K)")
    p.add_argument("--clip", type=float, default=None, metavar="C", help="clip the global gradient norm to C")
    p.add_argument("--warmup", type=int, default=0, metavar="N", help="linear lr warmup over N optimizer steps")
    p.add_argument("--seed", type=int, default=0, help="data split, initial weights and batch order")
    p.add_argument("--n-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--only", nargs="+", choices=list(OPTIMIZERS), default=None, metavar="NAME",
                   help="optimizers to run (default run: " + ", ".join(DEFAULT_RUN) + "; --storage: all of "
                        + ", ".join(OPTIMIZERS) + ")")
    p.add_argument("--no-torch", action="store_true", help="skip the torch.optim runs")
    p.add_argument("--backend", default="auto", help='fusedopt backend (default "auto")')
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: this model is too small to gain from more, "
                        "and one thread keeps runs reproducible and steady on a busy machine)")
    p.add_argument("--lr-sweep", action="store_true", help="also run the Adam-vs-RAdam lr sweep (lr_sweep.png)")
    p.add_argument("--sweep-epochs", type=int, default=6)
    p.add_argument("--sweep-seeds", type=int, default=3)
    p.add_argument("--sweep-only", action="store_true", help="run only the lr sweep")
    p.add_argument("--storage", action="store_true",
                   help="instead of the default run: every optimizer with float32 states, 8-bit states, and bf16 "
                        "params with stochastic rounding and with round-to-nearest (storage.png, storage.md)")
    p.add_argument("--storage-seeds", type=int, default=1, metavar="K",
                   help="--storage: seeds SEED..SEED+K-1 for the initial weights, batch order and rounding bits "
                        "(the split stays that of --seed; default 1)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None, metavar="VARIANT",
                   help="--storage: the variants to run (default: all): " + ", ".join(VARIANTS))
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the figures and summary (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


SWEEP_LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    data = load_data(args.seed)
    if args.n_train is not None:
        data = subset(data, args.n_train)
    args.n_train, args.n_test = len(data.y_train), len(data.y_test)
    progress = not args.no_progress
    kw = dict(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, accumulate=args.accumulate,
              clip=args.clip, warmup=args.warmup, progress=progress)
    out: dict = {}
    t_start = time.perf_counter()

    if args.storage:
        seeds = list(range(args.seed, args.seed + args.storage_seeds))
        variants = args.variants or list(VARIANTS)
        if "float32" not in variants:
            variants = ["float32"] + variants  # the differences need the baseline
        names = args.only or list(OPTIMIZERS)
        print(f"storage comparison: {len(names)} optimizers x {len(variants)} variants x {len(seeds)} seed(s); "
              f"fusedopt commit {fusedopt_commit()}", flush=True)
        runs = run_storage(data, names, seeds, epochs=args.epochs, batch_size=args.batch_size, variants=variants,
                           backend=args.backend, progress=progress)
        elapsed = time.perf_counter() - t_start
        plot_storage(runs, os.path.join(args.out, "storage.png"), seeds)
        text = write_storage_report(runs, seeds, args, elapsed, os.path.join(args.out, "storage.md"))
        print(text)
        print(f"wrote {args.out}/storage.png, storage.md and storage.json; took {elapsed:.1f} s")
        out["storage"] = runs
        out["elapsed"] = elapsed
    elif not args.sweep_only:
        results: dict[str, dict[str, History]] = {}
        for name in args.only or DEFAULT_RUN:
            spec = OPTIMIZERS[name]
            runs = {"fusedopt": train(lambda p: spec.fused(p, backend=args.backend), data,
                                      desc=f"fusedopt {name}", **kw)}
            if spec.torch is not None and not args.no_torch:
                runs["torch.optim"] = train(spec.torch, data, desc=f"torch.optim {name}", **kw)
            results[name] = runs
            cols = "  ".join(f"{impl} {100 * h.final_acc:6.2f}% {h.time_per_epoch:.3f} s/epoch"
                             for impl, h in runs.items())
            print(f"{name:<17} {cols}", flush=True)
        elapsed = time.perf_counter() - t_start
        plot_curves(results, os.path.join(args.out, "curves.png"))
        table = summary_table(results, args)
        table += f"\nWhole run (all trainings above, evaluation included): {elapsed:.1f} s.\n"
        with open(os.path.join(args.out, "summary.md"), "w") as f:
            f.write(table)
        print(f"wrote {args.out}/curves.png and summary.md; training took {elapsed:.1f} s")
        out["results"] = results
        out["elapsed"] = elapsed

    if args.lr_sweep or args.sweep_only:
        t0 = time.perf_counter()
        sweep = lr_sweep(data, SWEEP_LRS, list(range(args.seed, args.seed + args.sweep_seeds)),
                         args.sweep_epochs, args.batch_size, progress, args.backend)
        sweep_elapsed = time.perf_counter() - t0
        plot_lr_sweep(sweep, os.path.join(args.out, "lr_sweep.png"), args.sweep_epochs)
        table = sweep_table(sweep)
        print(table)
        with open(os.path.join(args.out, "lr_sweep.md"), "w") as f:
            f.write(f"# Adam vs RAdam without warmup across learning rates\n\n"
                    f"Machine: {machine_line()}.\n\n"
                    f"fusedopt, backend \"{args.backend}\", {args.sweep_epochs} epochs, batch {args.batch_size}, "
                    f"constant lr, seeds {args.seed}..{args.seed + args.sweep_seeds - 1} (the seed sets the "
                    f"initial weights and batch order; the split is that of seed {args.seed}); "
                    f"{args.n_train} training and {args.n_test} test images. "
                    f"Final test accuracy. Sweep took {sweep_elapsed:.1f} s.\n\n{table}\n")
        print(f"wrote {args.out}/lr_sweep.png and lr_sweep.md; sweep took {sweep_elapsed:.1f} s")
        out["sweep"] = sweep
    return out


if __name__ == "__main__":
    main()
