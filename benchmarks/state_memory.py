"""Optimizer state memory per parameter, measured from the state tensors each optimizer keeps
after one step (step counters excluded: 4 bytes per tensor), for every algorithm (its
representative options, amsgrad / momentum / centered where they add a state) and every state
storage: float32, bfloat16, 8-bit (a 1M-element param, so the 8-bit scales are included).

    python benchmarks/state_memory.py     # prints a markdown table
"""
import torch

import fusedopt

OPTIONS = {"SGD": {"momentum": 0.9}, "RMSprop": {"momentum": 0.9, "centered": True}, "Adam": {"amsgrad": True}}
NAMES = ["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW", "Yogi", "RAdam", "Adamax", "Lion", "NAdam", "LAMB"]
N = 1 << 20


def bytes_per_param(name, state_dtype):
    p = torch.nn.Parameter(torch.zeros(N, dtype=torch.bfloat16))
    opt = getattr(fusedopt, name)([p], **OPTIONS.get(name, {}), state_dtype=state_dtype)
    p.grad = torch.ones_like(p)
    opt.step()
    counters = set(opt.algorithm.COUNTERS)
    return sum(v.numel() * v.element_size() for k, v in opt.state[p].items()
               if isinstance(v, torch.Tensor) and k not in counters) / N


def main():
    print(f"bf16 params of {N} elements, bytes of optimizer state per parameter (step counters excluded)\n")
    print("| optimizer (options) | float32 states | bf16 states | 8-bit states |")
    print("| --- | ---: | ---: | ---: |")
    for name in NAMES:
        cells = [f"{bytes_per_param(name, sdt):.3f}" for sdt in (torch.float32, torch.bfloat16, "8bit")]
        opts = ", ".join(f"{k}={v}" for k, v in OPTIONS.get(name, {}).items())
        print(f"| {name}{f' ({opts})' if opts else ''} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
