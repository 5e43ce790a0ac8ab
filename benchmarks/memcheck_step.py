"""A few optimizer steps of every fusedopt class on the GPU backends, checked against the reference.

Small and fast, so that it also runs under ``compute-sanitizer --tool memcheck`` (which slows
kernels ~100x): for each backend of ``cuda`` and ``triton`` available on the CUDA device, every
optimizer class (and Lookahead) in float32, bfloat16 (also with ``master_weights=True``) and
float16 params of odd sizes steps on fresh random parameters and gradients; the params (and
master weights) must match the same steps with ``backend="reference"`` on the same CUDA tensors.

Run it under the sanitizer with ``PYTORCH_NO_CUDA_MEMORY_CACHING=1``: every tensor is then its
own allocation, so an access past a tensor's end is reported instead of landing in the caching
allocator's pool.

``--sync-debug``: after one warm-up step (which creates the state), the remaining steps of the
fused backends run under ``torch.cuda.set_sync_debug_mode("error")``, so any host
synchronisation inside ``step()`` raises. No AMP GradScaler is involved (no grad_scale /
found_inf); the test suites cover those.

Without a CUDA device it prints that it was skipped and exits 0.

    python benchmarks/memcheck_step.py [--sync-debug]
"""
from __future__ import annotations

import argparse
import os
import sys

# The compiled Triton kernels: the interpreter runs on CPU tensors only (fixed at import).
os.environ["TRITON_INTERPRET"] = "0"

import torch  # noqa: E402

SIZES = (0, 1, 3, 4095, 4097, 70001)
DTYPES = {"float32": (torch.float32, False), "bfloat16": (torch.bfloat16, False),
          "bfloat16+master": (torch.bfloat16, True), "float16": (torch.float16, False)}
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
# (label, class name, options, steps): RAdam needs 6 steps to reach its rectified branch;
# Lookahead (k=2) runs its slow-weight update on step 2 and a fast step after it.
CASES = [
    ("SGD(momentum, nesterov)", "SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), 2),
    ("Adagrad", "Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1), 2),
    ("Adadelta", "Adadelta", dict(lr=1.0, weight_decay=0.01), 2),
    ("RMSprop(centered, momentum)", "RMSprop", dict(lr=0.01, centered=True, momentum=0.9, weight_decay=0.01), 2),
    ("Adam(amsgrad)", "Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.01), 2),
    ("AdamW", "AdamW", dict(lr=0.01, weight_decay=0.1), 2),
    ("Yogi", "Yogi", dict(lr=0.01, weight_decay=0.01), 2),
    ("RAdam", "RAdam", dict(lr=0.01, weight_decay=0.01), 6),
    ("Lookahead(Adam)", "Lookahead", dict(lr=0.01), 3),
]


def make_problem(dtype, steps, seed):
    """Random params and one list of random gradients per step (never zeros), on the GPU."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    params = [torch.randn(n, generator=gen, device="cuda").to(dtype) for n in SIZES]
    grads = [[(torch.randn(n, generator=gen, device="cuda") * (1 + s)).to(dtype) for n in SIZES]
             for s in range(steps)]
    return params, grads


def make_optimizer(fusedopt, cls_name, options, params, backend, master):
    extra = {"master_weights": True} if master else {}
    if cls_name == "Lookahead":
        return fusedopt.Lookahead(fusedopt.Adam(params, backend=backend, **options, **extra), k=2)
    return getattr(fusedopt, cls_name)(params, backend=backend, **options, **extra)


def run(fusedopt, cls_name, options, params, grads, backend, master, sync_debug):
    ps = [p.clone().requires_grad_(True) for p in params]
    opt = make_optimizer(fusedopt, cls_name, options, ps, backend, master)
    for i, step_grads in enumerate(grads):
        for p, g in zip(ps, step_grads):
            p.grad = g.clone()  # a new gradient tensor each step, as in training
        checked = sync_debug and i > 0  # step 0 creates the state
        if checked:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            if checked:
                torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    inner = getattr(opt, "optimizer", opt)
    masters = [inner.state[p].get("master_param") for p in ps]
    return [p.detach() for p in ps], masters


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sync-debug", action="store_true",
                    help='steps after the first under torch.cuda.set_sync_debug_mode("error")')
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("memcheck_step: no CUDA device (torch.cuda.is_available() is False): skipped")
        return 0
    import fusedopt

    available = fusedopt.available_backends("cuda")
    backends = [b for b in ("cuda", "triton") if b in available]
    print(f"memcheck_step: fusedopt {fusedopt.__version__} from {os.path.dirname(fusedopt.__file__)}; "
          f"torch {torch.__version__}; {torch.cuda.get_device_name()}; backends on cuda: {', '.join(available)}"
          + ("; sync debug mode 'error'" if args.sync_debug else ""), flush=True)
    if not backends:
        from fusedopt import backends as registry
        for b in ("cuda", "triton"):
            print(f"  {b}: {registry.availability(b, torch.device('cuda'))[1]}")
        print("memcheck_step: 0 ok, 1 failed (neither the cuda nor the triton backend is available)")
        return 1

    ok = failed = skipped = 0
    for seed, (label, cls_name, options, steps) in enumerate(CASES):
        for dname, (dtype, master) in DTYPES.items():
            params, grads = make_problem(dtype, steps, seed)
            try:
                ref, ref_master = run(fusedopt, cls_name, options, params, grads, "reference", master, False)
            except (ValueError, TypeError, NotImplementedError) as e:  # a combination the library refuses
                print(f"skip   {'*':9} {label:28} {dname:16} {type(e).__name__}: {e}", flush=True)
                skipped += 1
                continue
            except Exception as e:  # noqa: BLE001 - the oracle itself broke (e.g. a sticky CUDA error)
                print(f"FAILED {'reference':9} {label:28} {dname:16} {type(e).__name__}: {e}", flush=True)
                failed += 1
                continue
            tol = TOL[dtype]
            for backend in backends:
                try:
                    got, got_master = run(fusedopt, cls_name, options, params, grads, backend, master,
                                          args.sync_debug)
                    diff = 0.0
                    for i, (a, b) in enumerate(zip(got, ref)):
                        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, i=i: f"param {i}: {m}")
                        if a.numel():
                            diff = max(diff, (a.float() - b.float()).abs().max().item())
                    for i, (a, b) in enumerate(zip(got_master, ref_master)):
                        if a is not None or b is not None:
                            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5,
                                                       msg=lambda m, i=i: f"master weights {i}: {m}")
                except Exception as e:  # noqa: BLE001 - report every combination, then fail
                    failed += 1
                    first = [line for line in str(e).splitlines() if line.strip()]
                    print(f"FAILED {backend:9} {label:28} {dname:16} {type(e).__name__}: "
                          + " | ".join(first[:6]), flush=True)
                else:
                    ok += 1
                    print(f"ok     {backend:9} {label:28} {dname:16} steps {steps}, max |diff| {diff:.2e}",
                          flush=True)
    print(f"memcheck_step: {ok} ok, {failed} failed" + (f", {skipped} refused by the library" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
