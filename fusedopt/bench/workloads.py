"""Benchmark workloads: parameter lists named after real shapes, built from configs.

Nothing is downloaded: a workload is a list of tensor shapes. Names:

- ``gpt2-small``: GPT-2 small (124M parameters, 148 tensors): token and position embeddings,
  per layer two layer norms, the fused QKV and output projections and the MLP (weights and
  biases), the final layer norm. The token embedding is tied to the LM head, as in GPT-2.
- ``gpt2-mini``: the same 148 tensors scaled down (width 256, vocabulary 8192, context 512;
  11.7M parameters) so that a full sweep finishes quickly on a small CPU.
- ``gpt2-1b``: GPT-2 layout at about 1.1B parameters (20 layers, width 2048) for GPUs.
- ``<count>x<size>``: ``count`` 1-D tensors of ``size`` elements each, with ``K`` = 1024 and
  ``M`` = 1024*1024 suffixes, e.g. ``1000x64K`` (65.5M parameters in 1,000 tensors: large
  tensors, bandwidth bound) and ``10000x1K`` (10.2M parameters in 10,000 tensors: per-tensor
  overhead bound).
- ``<workload>/<G>g``: the same tensors in ``G`` param groups of consecutive tensors, each
  with its own lr and weight decay (layer-wise lr decay, no-decay groups), e.g.
  ``1000x4K/100g`` against ``1000x4K``: what spreading a model over many groups costs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GPT2Config:
    n_layer: int
    n_embd: int
    vocab: int = 50257
    n_ctx: int = 1024


GPT2_CONFIGS = {
    "gpt2-small": GPT2Config(n_layer=12, n_embd=768),
    "gpt2-mini": GPT2Config(n_layer=12, n_embd=256, vocab=8192, n_ctx=512),
    "gpt2-medium": GPT2Config(n_layer=24, n_embd=1024),
    "gpt2-1b": GPT2Config(n_layer=20, n_embd=2048),
}


def gpt2_shapes(cfg: GPT2Config) -> list[tuple[int, ...]]:
    """Parameter shapes of a GPT-2 model (``transformers``' GPT2LMHeadModel order)."""
    d = cfg.n_embd
    shapes: list[tuple[int, ...]] = [(cfg.vocab, d), (cfg.n_ctx, d)]  # wte (tied LM head), wpe
    for _ in range(cfg.n_layer):
        shapes += [(d,), (d,),                  # ln_1 weight, bias
                   (d, 3 * d), (3 * d,),        # attn.c_attn (QKV) weight, bias
                   (d, d), (d,),                # attn.c_proj
                   (d,), (d,),                  # ln_2
                   (d, 4 * d), (4 * d,),        # mlp.c_fc
                   (4 * d, d), (d,)]            # mlp.c_proj
    shapes += [(d,), (d,)]                      # ln_f
    return shapes


_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2}
_UNIFORM = re.compile(r"^(\d+)([KM]?)x(\d+)([KM]?)$", re.IGNORECASE)


_GROUPS = re.compile(r"^(.*)/(\d+)g$", re.IGNORECASE)


def workload_groups(name: str) -> int:
    """How many param groups workload ``name`` spreads its tensors over (1 without ``/<G>g``)."""
    m = _GROUPS.match(name)
    return int(m.group(2)) if m else 1


def in_groups(params: list, n_groups: int, lr: float, weight_decay: float) -> list:
    """``params`` as ``n_groups`` param groups of consecutive tensors with different lr and
    weight decay (``lr`` times 1, 3/4, 1/2, 1/4 in turn; ``weight_decay`` on every other group);
    the plain list when ``n_groups`` is 1."""
    if n_groups == 1:
        return params
    bounds = [len(params) * i // n_groups for i in range(n_groups + 1)]
    return [{"params": params[a:b], "lr": lr * (4 - i % 4) / 4, "weight_decay": weight_decay * (i % 2)}
            for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def workload_shapes(name: str) -> list[tuple[int, ...]]:
    """The parameter shapes of workload ``name`` (see the module docstring)."""
    m = _GROUPS.match(name)
    if m:
        if int(m.group(2)) < 1:
            raise ValueError(f"workload {name!r}: the number of groups must be >= 1")
        name = m.group(1)
    if name in GPT2_CONFIGS:
        return gpt2_shapes(GPT2_CONFIGS[name])
    m = _UNIFORM.match(name)
    if m:
        count = int(m.group(1)) * _UNITS[m.group(2).upper()]
        size = int(m.group(3)) * _UNITS[m.group(4).upper()]
        if count < 1 or size < 1:
            raise ValueError(f"workload {name!r}: count and size must be >= 1")
        return [(size,)] * count
    raise ValueError(f"unknown workload {name!r}; use one of {', '.join(GPT2_CONFIGS)} "
                     "or <count>x<size> such as 1000x64K")


def describe(shapes: list[tuple[int, ...]]) -> tuple[int, int]:
    """(number of parameters, number of tensors)."""
    n = 0
    for s in shapes:
        k = 1
        for x in s:
            k *= x
        n += k
    return n, len(shapes)


# dtype modes: (param and grad dtype, whether fp32 master weights are kept, fusedopt's storage
# options: a mode with any runs fusedopt only)
MODES = {
    "fp32": (torch.float32, False, {}),
    "bf16": (torch.bfloat16, False, {}),
    "bf16-master": (torch.bfloat16, True, {}),
    "fp32-8bit": (torch.float32, False, {"state_dtype": "8bit"}),
    "bf16-8bit": (torch.bfloat16, False, {"state_dtype": "8bit"}),
    "bf16-sr": (torch.bfloat16, False, {"stochastic_rounding": True, "rounding_seed": 0}),
}


def build(shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device,
          seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random parameters and gradients for ``shapes``; each implementation clones the params."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    params, grads = [], []
    for s in shapes:
        p = torch.empty(s, dtype=dtype, device=device)
        p.uniform_(-0.1, 0.1, generator=gen)
        g = torch.empty(s, dtype=dtype, device=device)
        g.uniform_(-1e-3, 1e-3, generator=gen)
        params.append(p)
        grads.append(g)
    return params, grads
