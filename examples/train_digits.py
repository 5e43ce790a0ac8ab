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

Examples::

    python examples/train_digits.py                        # the default run, results/ beside this file
    python examples/train_digits.py --lr-sweep             # also the Adam-vs-RAdam lr sweep
    python examples/train_digits.py --only Adam RAdam --accumulate 4 --clip 1.0 --warmup 50

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
=================  ==========================================  =====================

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
import math
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
    fused: Callable[..., torch.optim.Optimizer]  # (params, backend) -> optimizer
    torch: OptFactory | None


def _lookahead_radam(params, backend="auto", lr=5e-3):
    return fusedopt.Lookahead(fusedopt.RAdam(params, lr=lr, backend=backend), k=5, alpha=0.5)


# Learning rates per optimizer: see the table in the module docstring.
OPTIMIZERS: dict[str, OptSpec] = {s.name: s for s in [
    OptSpec("SGD", "lr=0.05, momentum=0.9",
            lambda p, backend="auto": fusedopt.SGD(p, lr=0.05, momentum=0.9, backend=backend),
            lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    OptSpec("Adagrad", "lr=0.03",
            lambda p, backend="auto": fusedopt.Adagrad(p, lr=0.03, backend=backend),
            lambda p: torch.optim.Adagrad(p, lr=0.03)),
    OptSpec("Adadelta", "lr=1.0",
            lambda p, backend="auto": fusedopt.Adadelta(p, lr=1.0, backend=backend),
            lambda p: torch.optim.Adadelta(p, lr=1.0)),
    OptSpec("RMSprop", "lr=1e-3",
            lambda p, backend="auto": fusedopt.RMSprop(p, lr=1e-3, backend=backend),
            lambda p: torch.optim.RMSprop(p, lr=1e-3)),
    OptSpec("Adam", "lr=2e-3",
            lambda p, backend="auto": fusedopt.Adam(p, lr=2e-3, backend=backend),
            lambda p: torch.optim.Adam(p, lr=2e-3)),
    OptSpec("AdamW", "lr=2e-3, weight_decay=1e-2",
            lambda p, backend="auto": fusedopt.AdamW(p, lr=2e-3, weight_decay=1e-2, backend=backend),
            lambda p: torch.optim.AdamW(p, lr=2e-3, weight_decay=1e-2)),
    OptSpec("Yogi", "lr=1e-2, eps=1e-3",
            lambda p, backend="auto": fusedopt.Yogi(p, lr=1e-2, eps=1e-3, backend=backend),
            None),
    OptSpec("RAdam", "lr=5e-3",
            lambda p, backend="auto": fusedopt.RAdam(p, lr=5e-3, backend=backend),
            lambda p: torch.optim.RAdam(p, lr=5e-3)),
    OptSpec("Lookahead(RAdam)", "RAdam lr=5e-3, k=5, alpha=0.5", _lookahead_radam, None),
]}


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

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1]

    @property
    def time_per_epoch(self) -> float:
        # the first epoch also pays for lazy state creation and first-call costs: report the median
        ts = sorted(self.epoch_time)
        return ts[len(ts) // 2]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on ``x, y``."""
    model.eval()
    logits = model(x)
    model.train()
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train(opt_factory: OptFactory, data: Digits, *, epochs: int = 12, batch_size: int = 32,
          seed: int = 0, accumulate: int = 1, clip: float | None = None, warmup: int = 0,
          model_kwargs: dict | None = None, progress: bool = True, desc: str = "") -> History:
    """Train a fresh :func:`build_model` (initial weights from ``seed``) with the optimizer that
    ``opt_factory(params)`` returns, and return its :class:`History`.

    The batch order is drawn from a generator seeded with ``seed``, so two runs with the same
    seed see the same batches in the same order whatever the optimizer.
    """
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1, got {accumulate}")
    model = build_model(seed, **(model_kwargs or {}))
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
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
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
    return hist


# ----------------------------------------------------------------------------- figures and table
def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    backend = fusedopt.backends.get_backend("auto", torch.device("cpu"))
    backend_name = type(backend).__module__.rsplit(".", 1)[-1]
    return (f"{os.cpu_count()}-core CPU ({cpu}), torch threads: {torch.get_num_threads()}, "
            f"torch {torch.__version__}, Python {platform.python_version()}, fusedopt {fusedopt.__version__} "
            f"(backend=\"auto\" -> {backend_name}), {datetime.date.today().isoformat()}")


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
                   help="optimizers to run (default: all): " + ", ".join(OPTIMIZERS))
    p.add_argument("--no-torch", action="store_true", help="skip the torch.optim runs")
    p.add_argument("--backend", default="auto", help='fusedopt backend (default "auto")')
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: this model is too small to gain from more, "
                        "and one thread keeps runs reproducible and steady on a busy machine)")
    p.add_argument("--lr-sweep", action="store_true", help="also run the Adam-vs-RAdam lr sweep (lr_sweep.png)")
    p.add_argument("--sweep-epochs", type=int, default=6)
    p.add_argument("--sweep-seeds", type=int, default=3)
    p.add_argument("--sweep-only", action="store_true", help="run only the lr sweep")
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

    if not args.sweep_only:
        results: dict[str, dict[str, History]] = {}
        for name in args.only or list(OPTIMIZERS):
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
