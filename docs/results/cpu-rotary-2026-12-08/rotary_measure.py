"""Does a fused rotary embedding beat the eager chain (and what torch.compile makes of it)?  Hugging Face's
apply_rotary_pos_emb for q and k (slice, neg, cat, mul, mul, add each) against the roll form with the sign folded
into sin once (q * cos + roll(q, D/2) * sin_signed, as addcmul), and torch.compile of the eager chain.  Interleaved
rounds, paired ratios, float64 check."""
import statistics, sys, time
import torch

dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
dtypes = [torch.float32] + ([torch.bfloat16] if dev == "cuda" else [])
if dev == "cpu":
    torch.set_num_threads(1)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def eager(q, k, cos, sin):  # transformers' apply_rotary_pos_emb (unsqueeze_dim=1 done by the caller)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def rolled(q, k, cos, sin):
    h = q.shape[-1] // 2
    sin_s = torch.cat((-sin[..., :h], sin[..., h:]), dim=-1)
    return torch.addcmul(q * cos, q.roll(h, -1), sin_s), torch.addcmul(k * cos, k.roll(h, -1), sin_s)


compiled = torch.compile(eager)


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def timed(fn, args, inner):
    sync(); t0 = time.perf_counter()
    for _ in range(inner):
        fn(*args)
    sync(); return (time.perf_counter() - t0) / inner * 1e3


for B, H, KV, S, D in ((4, 16, 4, 512, 64), (8, 16, 4, 1, 64), (2, 4, 2, 16, 16)):
    for dt in dtypes:
        g = torch.Generator().manual_seed(0)
        q = torch.randn(B, H, S, D, generator=g).to(dev, dt)
        k = torch.randn(B, KV, S, D, generator=g).to(dev, dt)
        ang = torch.randn(B, 1, S, D // 2, generator=g)
        ang = torch.cat((ang, ang), -1)
        cos, sin = ang.cos().to(dev, dt), ang.sin().to(dev, dt)
        args = (q, k, cos, sin)
        ref = eager(*(a.double() for a in args))
        errs = {}
        for name, fn in (("eager", eager), ("rolled", rolled), ("compile", compiled)):
            out = fn(*args)
            errs[name] = max(float((o.double() - r).norm() / r.norm()) for o, r in zip(out, ref))
        inner = 50 if dev == "cuda" else (3 if S > 100 else 50)
        for _ in range(3):
            for fn in (eager, rolled, compiled):
                fn(*args)
        t = {"eager": [], "rolled": [], "compile": []}
        for r in range(25):
            order = [("eager", eager), ("rolled", rolled), ("compile", compiled)]
            for name, fn in (order if r % 2 else order[::-1]):
                t[name].append(timed(fn, args, inner))
        med = {n: statistics.median(v) for n, v in t.items()}
        ratio = lambda n: statistics.median(e / x for e, x in zip(t["eager"], t[n]))
        print(f"{dev} {str(dt)[6:]} B={B} H={H} KV={KV} S={S} D={D}: eager {med['eager']:.4f} ms, rolled "
              f"{med['rolled']:.4f} ms ({ratio('rolled'):.2f}x), compile {med['compile']:.4f} ms "
              f"({ratio('compile'):.2f}x); rel err vs float64: " + ", ".join(f"{n} {e:.1e}" for n, e in errs.items()),
              flush=True)
