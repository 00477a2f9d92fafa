"""The clock on a non-default GPU: an 8192^2 bf16 matmul on cuda:1 (cuda:0 where there is one GPU), timed by
fxfusion's clock for that device (isolated and pipelined) and by a wall clock around synchronised calls.

    python3 benchmarks/probe_device_index.py      # prints ms per call and the ratio clock / wall
"""

import time

import torch

from fxfusion.measure.devices import as_device, synchronize
from fxfusion.measure.timing import TimingSpec, clock_for, measure


def main() -> None:
    device = as_device(f"cuda:{1 if torch.cuda.device_count() > 1 else 0}")
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    fn = lambda: a @ a  # noqa: E731
    walls = []
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(10):
            fn()
        synchronize(device)
        walls.append((time.perf_counter() - start) / 10 * 1e3)
    wall = sorted(walls)[2]
    print(f"{torch.cuda.get_device_name(device)} x{torch.cuda.device_count()}, torch {torch.__version__}, "
          f"current device cuda:{torch.cuda.current_device()}, timed device {device}")
    print(f"wall clock: {wall:.3f} ms per call (median of 5 x 10 calls)")
    for mode in ("isolated", "pipelined"):
        s = measure({"mm": fn}, clock_for(device, mode), TimingSpec(rounds=10, warmup=3, target_sample_s=0.02))
        med = sorted(s.seconds["mm"])[len(s.seconds["mm"]) // 2] * 1e3
        print(f"fxfusion clock ({mode}): {med:.3f} ms per call, clock / wall = {med / wall:.2f}")


if __name__ == "__main__":
    main()
