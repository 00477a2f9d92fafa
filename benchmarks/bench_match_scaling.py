"""Capture and matching time against graph size: synthetic models of 100 and 1,000 repeated blocks.

Each block is a residual MLP with a written-out RMSNorm, 11 aten ops: linear, gelu, linear, add, layer_norm, pow,
mean, add, rsqrt, mul, mul; 1,000 blocks are about 11,000 nodes.  Matching must be linear in the node count
(issue 3): the script prints both times and the per-node ratio (1.0 is linear).  Target: capture and matching of
the large model in at most 5 s on a 2-core CPU (no variant is benchmarked here).  Capture is torch.export's own
tracing and dominates; matching alone is reported too.
    python benchmarks/bench_match_scaling.py [--blocks 100,1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxfusion.graph.capture import capture
from fxfusion.fusions.match import find_sites

TARGET_S = 5.0  # capture + match of the large model
DIM = 16


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)
        self.norm = nn.LayerNorm(DIM)
        self.weight = nn.Parameter(torch.ones(DIM))

    def forward(self, x):  # x: (tokens, DIM)
        h = self.norm(x + self.fc2(F.gelu(self.fc1(x))))
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight


def measure(blocks: int, repeats: int) -> tuple[int, int, float, float]:
    model = nn.Sequential(*[Block() for _ in range(blocks)]).eval()
    start = time.perf_counter()
    captured = capture(model, (torch.randn(4, DIM),))
    capture_s = time.perf_counter() - start
    nodes = sum(1 for g in captured.graphs for n in g.graph.nodes if n.op == "call_function")
    match_s, sites = float("inf"), []
    for _ in range(repeats):  # the minimum of a few runs: the machine's noise only ever adds time
        start = time.perf_counter()
        sites = find_sites(captured)
        match_s = min(match_s, time.perf_counter() - start)
    return nodes, len(sites), capture_s, match_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", default="100,1000")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for blocks in (int(b) for b in args.blocks.split(",")):
        nodes, sites, capture_s, match_s = measure(blocks, args.repeats)
        rows.append((blocks, nodes, capture_s, match_s))
        print(f"blocks={blocks:5d} nodes={nodes:6d} sites={sites:5d} capture={capture_s:7.2f}s "
              f"match={match_s:7.3f}s ({match_s / nodes * 1e6:6.1f} us/node) threads={torch.get_num_threads()}")
    (_, n0, c0, m0), (_, n1, c1, m1) = rows[0], rows[-1]
    print(f"nodes x{n1 / n0:.1f}: match time x{m1 / m0:.1f} (per-node ratio {(m1 / n1) / (m0 / n0):.2f}, 1.0 is "
          f"linear), capture time x{c1 / c0:.1f} (per-node ratio {(c1 / n1) / (c0 / n0):.2f})")
    print(f"capture + match of the large model: {c1 + m1:.1f}s, target <= {TARGET_S:.0f}s: "
          f"{'OK' if c1 + m1 <= TARGET_S else 'MISSED'} (match alone {m1:.3f}s, capture {c1:.1f}s)")


if __name__ == "__main__":
    main()
