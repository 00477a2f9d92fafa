"""Does the host of a GPU machine run at one speed?  Times the same small forward pass (models/resnet_basic.py,
pipelined CUDA clock, 100 calls per sample) continuously for a few seconds at a time: at start, after 5 s idle, after
5 s of a busy host with an idle GPU, after 3 s of a busy GPU; prints the GPU clocks (nvidia-smi, read only) and the
first and last samples in ms per call.  Run it plain and under ``taskset -c N`` to see whether pinning helps.

    python3 benchmarks/probe_host_speed.py
"""

import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from bench_apply import load  # noqa: E402
from fxfusion.measure.timing import CudaClock  # noqa: E402


def main() -> None:
    warnings.simplefilter("ignore")
    model, inputs = load("resnet_basic", "tiny", "cuda")
    clock = CudaClock("pipelined")

    def forward():
        with torch.no_grad():
            return model(*inputs)

    def clocks() -> str:
        return subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,pstate", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.strip()

    def trace(label: str, seconds: float = 3.0) -> None:
        start, out = time.perf_counter(), []
        while time.perf_counter() - start < seconds:
            out.append(round(clock.sample(forward, 100) * 1e3, 4))
        print(label, clocks(), "n", len(out), "first", out[:8], "last", out[-5:], flush=True)

    for _ in range(3):
        forward()
    trace("start")
    trace("continuing")
    time.sleep(5)
    trace("after 5s idle")
    start = time.perf_counter()
    while time.perf_counter() - start < 5:  # busy host, idle GPU
        pass
    trace("after 5s host-busy/GPU-idle")
    a = torch.randn(8192, 8192, device="cuda")
    start = time.perf_counter()
    while time.perf_counter() - start < 3:
        a @ a
    torch.cuda.synchronize()
    trace("after 3s GPU-busy")


if __name__ == "__main__":
    main()
