"""10,000 x 1K AdamW on the cpu backend: the whole step and the backend call alone, with params
and grads allocated one by one ("scattered", as a model's are) and as views of one buffer
("contiguous p/g"); timed in interleaved rounds, medians and interquartile ranges.

    python benchmarks/small_tensors.py             # in a fresh process
    python benchmarks/small_tensors.py big-first   # after 11 steps of a 1000 x 32K AdamW in the
                                                   # same process (where small tensors land in
                                                   # memory changes)
    python benchmarks/small_tensors.py groups      # 1000 x 4K AdamW in one group against the
                                                   # same in 100 groups with their own lr
"""
import sys, time, statistics, torch, fusedopt
if sys.argv[1:] == ["groups"]:
    def in_groups(count, n=1000, size=4096):
        g = torch.Generator().manual_seed(0)
        ps = [torch.randn(size, generator=g).requires_grad_(True) for _ in range(n)]
        for p in ps: p.grad = torch.randn(size, generator=g)
        k = n // count
        return fusedopt.AdamW([{"params": ps[i * k:(i + 1) * k], "lr": 1e-3 * (1 + i / count)} for i in range(count)],
                              weight_decay=0.01, backend="cpu")
    opts = {1: in_groups(1), 100: in_groups(100)}
    times = {k: [] for k in opts}
    for r in range(63):
        for k, opt in opts.items():
            t = time.perf_counter(); opt.step(); times[k].append((time.perf_counter() - t) * 1e3)
    one, many = (statistics.median(times[k][3:]) for k in (1, 100))
    print(f"1000 x 4K AdamW: one group {one:.2f} ms, 100 groups {many:.2f} ms, ratio {many / one:.3f}")
    sys.exit()
N, S = 10000, 1024
def make(contiguous, seed=0):
    g = torch.Generator().manual_seed(seed)
    if contiguous:
        pb = torch.randn(N * S, generator=g); gb = torch.randn(N * S, generator=g)
        ps = [torch.nn.Parameter(v) for v in pb.view(N, S).unbind(0)]
        for p, v in zip(ps, gb.view(N, S).unbind(0)): p.grad = v
    else:
        ps = [torch.randn(S, generator=g).requires_grad_(True) for _ in range(N)]
        for p in ps: p.grad = torch.randn(S, generator=g)
    return ps
if len(sys.argv) > 1 and sys.argv[1] == "big-first":
    big = [torch.randn(32768).requires_grad_(True) for _ in range(1000)]
    for p in big: p.grad = torch.randn(32768)
    ob = fusedopt.AdamW(big, backend="cpu")
    for _ in range(11): ob.step()
    del ob, big
cands = {}
for label, contig in (("scattered", False), ("contiguous p/g", True)):
    ps = make(contig)
    opt = fusedopt.AdamW(ps, lr=1e-3, backend="cpu")
    for _ in range(3): opt.step()
    cands[f"{label} step"] = opt.step
    cands[f"{label} backend call"] = opt.launch_replay()
times = {k: [] for k in cands}
for r in range(6):
    for k, fn in cands.items():
        for _ in range(2):
            t = time.perf_counter(); fn(); times[k].append((time.perf_counter() - t) * 1e3)
a = torch.empty(32 << 20); b = torch.empty(32 << 20); cp = []
for _ in range(10):
    t = time.perf_counter(); a.copy_(b); cp.append(time.perf_counter() - t)
bw = 2 * a.numel() * 4 / statistics.median(cp) / 1e9
print(f"copy {bw:.1f} GB/s; threads {torch.get_num_threads()}")
for k, v in times.items():
    med = statistics.median(v); q = statistics.quantiles(v, n=4)
    gbs = N * S * 28 / med / 1e6
    print(f"{k:28s} {med:7.2f} ms  IQR {q[0]:.2f}-{q[2]:.2f}  {gbs:5.1f} GB/s  {100*gbs/bw:4.0f}% of copy")
