"""The command-line arguments the calibration benchmarks share."""

from __future__ import annotations

import argparse


def calibration_args(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hardware", default="generic-cpu")
    ap.add_argument("--patterns", default="all")
    return ap.parse_args()
