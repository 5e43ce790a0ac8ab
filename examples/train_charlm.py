"""A small character-level transformer language model, trained with fusedopt under four ways of
storing params and optimizer states: float32 states, 8-bit states, and bfloat16 params with
stochastic rounding or with round-to-nearest.

The corpus ships with Python, so nothing is downloaded: the source files of the standard-library
modules ``argparse``, ``difflib``, ``inspect``, ``textwrap``, ``typing`` and ``functools``
(``CORPUS_MODULES``), read as UTF-8 from the running interpreter's stdlib and joined in that
order, each preceded by a ``# ===== <module>.py =====`` line: 485,580 characters (97 distinct)
for CPython 3.11.7. The exact text depends on the Python version, so the report records its size
and SHA-256. The vocabulary is every character of the corpus (sorted); the first 90% of the
characters are the training text, the last 10% the validation text.

The model (``CharTransformer``): token and learned position embeddings, ``n_layers`` pre-LayerNorm
blocks (causal multi-head self-attention with ``torch.nn.functional.scaled_dot_product_attention``,
then a GELU MLP of width 4·d_model), a final LayerNorm and an untied output layer. Defaults
d_model 128, 4 heads, 2 layers, context 64: 0.43 M parameters, every matrix at least 4,096
elements, so under ``state_dtype="8bit"`` all but the LayerNorm and bias states are 8-bit (11 of
30 params, 99.1% of the elements). The bf16 variants compute in float32 by default (the params
are cast in the forward pass; ``--bf16-compute`` computes in bf16): this CPU has no bf16
arithmetic, and what is compared is how params and states are stored and updated.
Weights are initialised N(0, 0.02) as GPT-2, biases zero.

Training: AdamW (lr 2e-3, betas (0.9, 0.99), weight decay 0.1 on the matrices, none on
embeddings, biases and LayerNorms), or Lion (lr 6e-4, betas (0.9, 0.99), weight decay 0.3 on the
matrices: Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023, recommend an lr
3-10x smaller and a weight decay 3-10x larger than AdamW's, keeping lr x wd about the same);
linear warmup over the first 5% of the steps, then cosine decay to 10% of the peak; gradients
clipped to global norm 1; batch 16 windows of ``context`` (64) characters. The lrs were picked
on float32 states over 300-600 steps (validation loss after 300 steps for AdamW at lr 1e-3 /
2e-3 / 4e-3: 2.01 / 1.87 / 1.91 with batch 32; after 600 steps for Lion at 1.5e-4 / 3e-4 / 6e-4 /
1.2e-3: 2.31 / 2.03 / 1.94 / 2.09, AdamW 1.83). The seed fixes the initial weights, every batch
(random window offsets drawn up front from their own generator) and the rounding bits, so all
variants see exactly the same batches.

Variants (``VARIANTS``), all with the same hyperparameters:

* ``float32``  float32 params and states (the baseline);
* ``8bit``     float32 params, ``state_dtype="8bit"``: states of params with at least
  ``min_8bit_size`` (4,096) elements are block-wise quantized, one float32 absmax per 256
  elements and one byte per element through the dynamic tree map (Dettmers, Lewis, Shleifer &
  Zettlemoyer, "8-bit Optimizers via Block-wise Quantization", ICLR 2022);
* ``bf16+SR``  the params in bfloat16 (initial weights: the float32 ones rounded; activations
  float32 unless ``--bf16-compute``; the loss from float32 logits either way), float32 states,
  no master weights, each step's float32 result stored by stochastic rounding,
  ``round(x) = x_hi`` with probability ``(x - x_lo) / (x_hi - x_lo)``, else ``x_lo``, so that
  ``E[round(x)] = x`` (Gupta, Agrawal, Gopalakrishnan & Narayanan, "Deep Learning with Limited
  Numerical Precision", ICML 2015);
* ``bf16 RN``  the same with round-to-nearest: an update smaller than half a bf16 ulp of the
  weight (2^-9 relative) is lost entirely, which is what stochastic rounding prevents.

Examples::

    python examples/train_charlm.py                        # AdamW, all four variants, 300 steps (a quick look)
    python examples/train_charlm.py --steps 2000 --optimizer adamw lion   # results/charlm.md, charlm.png
    python examples/train_charlm.py --optimizer lion --only float32 bf16+SR --out /tmp/charlm

The functions ``load_corpus``, ``make_data``, ``build_model``, ``train`` and ``main`` are
importable (``tests/test_example_charlm.py`` uses them).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import sys
import sysconfig
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import fusedopt
except ImportError:  # running from a source checkout without installing: use the checkout's package
    sys.path.insert(0, os.path.dirname(HERE))
    import fusedopt
# The storage variants, and the helpers that report them, are the digits example's.
sys.path.insert(0, HERE)
try:
    from train_digits import VARIANTS, Variant, _cpu_name, fusedopt_commit, storage_counts, storage_options
finally:
    sys.path.remove(HERE)
DEFAULT_OUT = os.path.join(HERE, "results")

CORPUS_MODULES = ("argparse", "difflib", "inspect", "textwrap", "typing", "functools")


# ----------------------------------------------------------------------------- data
def load_corpus(modules: tuple[str, ...] = CORPUS_MODULES) -> str:
    """The source of the stdlib modules ``modules`` (top-level ``<name>.py`` files), joined in
    order, each after a ``# ===== <name>.py =====`` line."""
    stdlib = sysconfig.get_paths()["stdlib"]
    parts = []
    for name in modules:
        with open(os.path.join(stdlib, name + ".py"), encoding="utf-8") as f:
            parts.append(f"# ===== {name}.py =====\n" + f.read())
    return "\n".join(parts)


@dataclass
class CharData:
    """The corpus as int64 character indices: the first ``1 - val_fraction`` for training, the
    rest for validation; ``vocab[i]`` is the character of index ``i``."""
    train: torch.Tensor
    val: torch.Tensor
    vocab: list[str]
    n_chars: int
    sha256: str


def make_data(text: str, val_fraction: float = 0.1) -> CharData:
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.int64)
    n_val = int(round(len(ids) * val_fraction))
    return CharData(ids[:len(ids) - n_val], ids[len(ids) - n_val:], vocab, len(text),
                    hashlib.sha256(text.encode("utf-8")).hexdigest())


def batch_offsets(n_tokens: int, steps: int, batch_size: int, context: int, seed: int) -> torch.Tensor:
    """``(steps, batch_size)`` random window starts in ``[0, n_tokens - context - 1]``, from a
    generator of their own seeded with ``seed``: the same batches for every variant."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_tokens - context - 1 + 1, (steps, batch_size), generator=gen)


def get_batch(ids: torch.Tensor, offsets: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``ids[o : o + context]`` and targets ``ids[o + 1 : o + context + 1]`` per offset."""
    idx = offsets[:, None] + torch.arange(context + 1)
    windows = ids[idx]
    return windows[:, :-1], windows[:, 1:]


# ----------------------------------------------------------------------------- model
def _linear(m: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # the weights in the activations' dtype: a no-op for float32 params computing in float32
    return F.linear(x, m.weight.to(x.dtype), m.bias.to(x.dtype))


def _layer_norm(m: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, m.normalized_shape, m.weight.to(x.dtype), m.bias.to(x.dtype), m.eps)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)). The activations'
    dtype is the compute dtype; the params are cast to it (autograd rounds their gradients back
    to the params' dtype)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = _linear(self.qkv, _layer_norm(self.ln1, x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + _linear(self.proj, y.transpose(1, 2).reshape(b, t, d))
        return x + _linear(self.out, F.gelu(_linear(self.fc, _layer_norm(self.ln2, x))))


class CharTransformer(nn.Module):
    """``compute_dtype``: the activations' dtype, the params cast to it in the forward pass;
    None computes in the params' dtype. float32 by default: on CPUs without bf16 arithmetic
    (AVX2 only) bf16 matmuls are emulated, 6x slower than float32 in our measurements; what this
    example compares is how params and states are stored and updated, not the compute dtype."""

    def __init__(self, vocab_size: int, d_model: int = 128, n_heads: int = 4, n_layers: int = 2,
                 context: int = 64, compute_dtype: torch.dtype | None = torch.float32):
        super().__init__()
        self.context = context
        self.compute_dtype = compute_dtype
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        dt = self.compute_dtype or self.tok.weight.dtype
        x = F.embedding(idx, self.tok.weight.to(dt)) + self.pos.weight[:idx.shape[1]].to(dt)
        for block in self.blocks:
            x = block(x)
        return _linear(self.head, _layer_norm(self.ln, x))


def build_model(vocab_size: int, seed: int = 0, dtype: torch.dtype = torch.float32, **kwargs) -> CharTransformer:
    """The model, its initial weights fixed by ``seed`` (drawn in float32, then rounded to ``dtype``)."""
    torch.manual_seed(seed)
    return CharTransformer(vocab_size, **kwargs).to(dtype)


# ----------------------------------------------------------------------------- optimizers
# lr, betas, weight decay of the matrices (see the module docstring)
OPTIMIZERS = {
    "adamw": dict(cls="AdamW", lr=2e-3, betas=(0.9, 0.99), weight_decay=0.1),
    "lion": dict(cls="Lion", lr=6e-4, betas=(0.9, 0.99), weight_decay=0.3),
}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on the matrices of the linear layers; none on embeddings, biases, LayerNorms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_linear_weight = p.dim() == 2 and not name.startswith(("tok.", "pos."))
        (decay if is_linear_weight else no_decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def make_optimizer(model: nn.Module, optimizer: str, variant: Variant, seed: int, backend: str = "auto",
                   lr: float | None = None) -> torch.optim.Optimizer:
    cfg = dict(OPTIMIZERS[optimizer])
    cls = getattr(fusedopt, cfg.pop("cls"))
    wd = cfg.pop("weight_decay")
    if lr is not None:
        cfg["lr"] = lr
    return cls(param_groups(model, wd), **cfg, backend=backend, **storage_options(variant, seed))


def lr_factor(step: int, steps: int, warmup: int, floor: float = 0.1) -> float:
    """Linear warmup from 1/warmup to 1 over ``warmup`` steps, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


# ----------------------------------------------------------------------------- training
@dataclass
class History:
    variant: str
    optimizer: str
    step_loss: list[float] = field(default_factory=list)  # training loss of every step
    eval_steps: list[int] = field(default_factory=list)   # steps after which val_loss was measured
    val_loss: list[float] = field(default_factory=list)   # on the fixed validation sample
    final_train_loss: float = float("nan")  # on a fixed sample of training windows, after the last step
    final_val_loss: float = float("nan")    # on the whole validation text, after the last step
    seconds: float = 0.0                   # training loop (evaluations excluded)
    wall: float = 0.0                      # whole run
    eight_bit_slots: int = 0
    eight_bit_params: int = 0
    eight_bit_elements: int = 0
    n_elements: int = 0
    param_dtype: str = "float32"


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x).float()  # the loss in float32, whatever the model's dtype
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, ids: torch.Tensor, offsets: torch.Tensor, context: int, chunk: int = 64) -> float:
    """Mean cross-entropy (nats per character) over the windows at ``offsets``."""
    total, n = 0.0, 0
    for part in offsets.split(chunk):
        x, y = get_batch(ids, part, context)
        total += _loss(model, x, y).item() * y.numel()
        n += y.numel()
    return total / n


def train(data: CharData, variant: str | Variant = "float32", *, optimizer: str = "adamw", steps: int = 2000,
          batch_size: int = 16, seed: int = 0, lr: float | None = None, warmup: int | None = None,
          clip: float | None = 1.0, eval_every: int = 100, eval_windows: int = 64, final_eval: bool = True,
          backend: str = "auto", model_kwargs: dict | None = None, progress: bool = True) -> History:
    """Train a fresh model of ``seed`` for ``steps`` steps under ``variant`` and return its History.

    Validation loss every ``eval_every`` steps on ``eval_windows`` fixed windows of the validation
    text; at the end (``final_eval``) the loss on the whole validation text (consecutive windows)
    and on a fixed sample of 8 x ``eval_windows`` training windows.
    """
    t_wall = time.perf_counter()
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    kw = dict(model_kwargs or {})
    context = kw.setdefault("context", 64)
    model = build_model(len(data.vocab), seed, v.dtype, **kw)
    opt = make_optimizer(model, optimizer, v, seed, backend, lr)
    warmup = max(1, steps // 20) if warmup is None else warmup
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup))
    offsets = batch_offsets(len(data.train), steps, batch_size, context, seed)
    eval_gen = torch.Generator().manual_seed(10_000 + seed)
    val_sample = torch.randint(0, len(data.val) - context - 1 + 1, (eval_windows,), generator=eval_gen)
    train_sample = torch.randint(0, len(data.train) - context - 1 + 1, (8 * eval_windows,), generator=eval_gen)
    params = [p for g in opt.param_groups for p in g["params"]]
    hist = History(v.name, optimizer, param_dtype=str(v.dtype).replace("torch.", ""),
                   n_elements=sum(p.numel() for p in params))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc=f"{optimizer} {v.name}", unit="step", leave=False, dynamic_ncols=True)
    for step in range(steps):
        t0 = time.perf_counter()
        x, y = get_batch(data.train, offsets[step], context)
        opt.zero_grad(set_to_none=True)
        loss = _loss(model, x, y)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        hist.step_loss.append(loss.item())
        hist.seconds += time.perf_counter() - t0
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            hist.eval_steps.append(step + 1)
            hist.val_loss.append(evaluate(model, data.val, val_sample, context))
            if bar is not None:
                bar.set_postfix(loss=f"{hist.step_loss[-1]:.3f}", val=f"{hist.val_loss[-1]:.3f}")
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    if final_eval:
        whole_val = torch.arange(0, len(data.val) - context - 1 + 1, context)
        hist.final_val_loss = evaluate(model, data.val, whole_val, context)
        hist.final_train_loss = evaluate(model, data.train, train_sample, context)
    hist.eight_bit_slots, hist.eight_bit_params, hist.eight_bit_elements = storage_counts(opt)
    hist.wall = time.perf_counter() - t_wall
    return hist


# ----------------------------------------------------------------------------- report
def machine_line() -> str:
    return (f"{os.cpu_count()}-core CPU ({_cpu_name()}), torch threads: {torch.get_num_threads()}, "
            f"torch {torch.__version__}, Python {platform.python_version()}, fusedopt {fusedopt.__version__} "
            f"commit {fusedopt_commit()}, backend=\"auto\", {datetime.date.today().isoformat()}")


def smooth(xs: list[float], alpha: float) -> list[float]:
    """Exponential moving average, bias-corrected (as a debiased Adam moment)."""
    out, m = [], 0.0
    for i, x in enumerate(xs):
        m = alpha * m + (1 - alpha) * x
        out.append(m / (1 - alpha ** (i + 1)))
    return out


def plot(hists: list[History], path: str, title: str) -> None:
    """Smoothed training loss, validation loss, and the smoothed training loss relative to the
    float32 states of the same optimizer, all variants on each panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"float32": "black", "8bit": "tab:blue", "bf16+SR": "tab:green", "bf16 RN": "tab:red"}
    styles = {"adamw": "-", "lion": "--"}
    fig, (ax_train, ax_val, ax_rel) = plt.subplots(1, 3, figsize=(18, 5.2))
    base = {h.optimizer: smooth(h.step_loss, 0.98) for h in hists if h.variant == "float32"}
    for h in hists:
        label = f"{h.optimizer} {h.variant}"
        style, color = styles.get(h.optimizer, "-"), colors.get(h.variant)
        steps = range(1, len(h.step_loss) + 1)
        sm = smooth(h.step_loss, 0.98)
        ax_train.plot(steps, sm, style, color=color, lw=1.2, label=f"{label}: {h.final_train_loss:.4f}")
        ax_val.plot(h.eval_steps, h.val_loss, style, color=color, lw=1.2, marker=".",
                    label=f"{label}: {h.final_val_loss:.4f}")
        b = base.get(h.optimizer)
        if b is not None and h.variant != "float32":
            ax_rel.plot(steps, [100 * (x / y - 1) for x, y in zip(sm, b)], style, color=color, lw=1.2, label=label)
    ax_train.set(xlabel="step", ylabel="training loss (nats/char), EMA 0.98", title="Training loss (smoothed)")
    ax_val.set(xlabel="step", ylabel="validation loss (nats/char)",
               title="Validation loss (fixed sample of 64 windows)")
    ax_rel.set(xlabel="step", ylabel="% above the float32 states' smoothed training loss",
               title="Training loss relative to float32 states (dotted: ±2%)")
    for y in (-2, 2):
        ax_rel.axhline(y, color="grey", lw=0.8, ls=":")
    ax_rel.axhline(0, color="black", lw=0.6)
    for ax, what in ((ax_train, "final train loss"), (ax_val, "final val loss (whole text)"), (ax_rel, None)):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # the relative panel is empty after the float32 run alone
            ax.legend(fontsize=8, title=what, title_fontsize=8)
        # zoom on the last three quarters of the run, where the variants part
        ys = [y for line in ax.get_lines() if len(line.get_ydata()) > 2
              for y in line.get_ydata()[len(line.get_ydata()) // 4:]]
        if ys:
            lo, hi = min(ys), max(ys)
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    fig.suptitle(title + "\n" + machine_line(), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(hists: list[History], data: CharData, args, elapsed: float, model: nn.Module) -> str:
    n_params = sum(p.numel() for p in model.parameters())
    lines = [
        "# Character-level transformer: 8-bit states and bf16 params with stochastic rounding",
        "",
        f"Machine: {machine_line()}.",
        "",
        f"Command: `python examples/train_charlm.py {' '.join(args.argv)}`".rstrip()
        + f" ({args.steps} steps, batch {args.batch_size} x {args.context} characters, seed {args.seed}).",
        "",
        f"Corpus: the sources of {', '.join(m + '.py' for m in CORPUS_MODULES)} from Python "
        f"{platform.python_version()}'s stdlib, {data.n_chars:,} characters, SHA-256 {data.sha256[:16]}..., "
        f"vocabulary {len(data.vocab)}; {len(data.train):,} training and {len(data.val):,} validation characters "
        f"(the last 10%). Model: d_model {args.d_model}, {args.heads} heads, {args.layers} layers, context "
        f"{args.context}, {n_params:,} parameters.",
        "",
        "Final losses in nats per character: *train* on a fixed sample of 512 training windows, *val* on "
        "the whole validation text, both after the last step; Δ is the relative difference to the float32 "
        "states of the same optimizer (the target: 8bit and bf16+SR within 2%). *time* is the training "
        "loop (evaluations excluded).",
        "",
        "| optimizer | variant | train loss | Δ train | val loss | Δ val | time | s/step | 8-bit states |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = {h.optimizer: h for h in hists if h.variant == "float32"}
    for h in hists:
        b = base.get(h.optimizer)
        rel = lambda a, c: "—" if b is None or h is b else f"{100 * (a - c) / c:+.2f}%"  # noqa: E731
        eight = (f"{h.eight_bit_slots} slots of {h.eight_bit_params} params, {h.eight_bit_elements:,} of "
                 f"{h.n_elements:,} elements" if h.eight_bit_slots else "none")
        lines.append(f"| {h.optimizer} ({OPTIMIZERS[h.optimizer]['cls']}) | {h.variant} | {h.final_train_loss:.4f} | "
                     f"{rel(h.final_train_loss, b.final_train_loss if b else None)} | {h.final_val_loss:.4f} | "
                     f"{rel(h.final_val_loss, b.final_val_loss if b else None)} | {h.seconds:.0f} s | "
                     f"{h.seconds / len(h.step_loss):.3f} | {eight} |")
    lines += ["", f"Whole run: {elapsed:.0f} s.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300,
                   help="optimizer steps per variant (default %(default)s: a quick look; results/ has 2000)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="initial weights, batches and rounding bits")
    p.add_argument("--optimizer", nargs="+", choices=list(OPTIMIZERS), default=["adamw"],
                   help="adamw (default), lion, or both")
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), default=None, metavar="VARIANT",
                   help="variants to run (default: all): " + ", ".join(VARIANTS))
    p.add_argument("--lr", type=float, default=None, help="peak lr (default: the optimizer's, see OPTIMIZERS)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--max-chars", type=int, default=None, metavar="N",
                   help="use only the first N characters of the corpus (quick runs, tests)")
    p.add_argument("--bf16-compute", action="store_true",
                   help="compute in the params' dtype (bf16 activations for the bf16 variants) instead of float32")
    p.add_argument("--backend", default="auto", help='fusedopt backend (default "auto")')
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for charlm.png and charlm.md (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> list[History]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    text = load_corpus()
    data = make_data(text if args.max_chars is None else text[:args.max_chars])
    model_kwargs = dict(d_model=args.d_model, n_heads=args.heads, n_layers=args.layers, context=args.context,
                        compute_dtype=None if args.bf16_compute else torch.float32)
    variants = args.only or list(VARIANTS)
    print(f"corpus {data.n_chars:,} chars (vocab {len(data.vocab)}); fusedopt commit {fusedopt_commit()}", flush=True)
    t_start = time.perf_counter()
    model = build_model(len(data.vocab), args.seed, **model_kwargs)
    hists: list[History] = []

    def write() -> str:  # after every training, so that an interrupted run keeps what it measured
        text = report(hists, data, args, time.perf_counter() - t_start, model)
        with open(os.path.join(args.out, "charlm.md"), "w") as f:
            f.write(text)
        with open(os.path.join(args.out, "charlm.json"), "w") as f:
            json.dump([h.__dict__ for h in hists], f)
        plot(hists, os.path.join(args.out, "charlm.png"),
             f"Character-level transformer on stdlib sources, {args.steps} steps, seed {args.seed}")
        return text

    for opt_name in args.optimizer:
        for v in variants:
            h = train(data, v, optimizer=opt_name, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                      lr=args.lr, eval_every=args.eval_every, backend=args.backend, model_kwargs=model_kwargs,
                      progress=not args.no_progress)
            hists.append(h)
            print(f"{opt_name:<6} {v:<8} train {h.final_train_loss:.4f}  val {h.final_val_loss:.4f}  "
                  f"{h.seconds:.0f} s ({h.seconds / args.steps:.3f} s/step)  8-bit slots {h.eight_bit_slots}",
                  flush=True)
            text = write()
    print(text)
    print(f"wrote {args.out}/charlm.png, charlm.md and charlm.json; took {time.perf_counter() - t_start:.1f} s")
    return hists


if __name__ == "__main__":
    main()
