"""CUDA-only checks; skipped cleanly without a GPU.  Run on a GPU machine with:  python3 -m pytest -q -m cuda"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from fxfusion.measure.correctness import relative_error, to_reference, tolerance
from fxfusion.measure.hardware import resolve
from fxfusion.fusions.registry import REGISTRY
from fxfusion.measure.timing import CudaClock, TimingSpec

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SPEC = TimingSpec(rounds=8, warmup=2, budget_s=2.0)


def _cases():
    for p in REGISTRY.values():
        for mv in p.manual:
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                yield pytest.param(p.name, mv.name, dtype, id=f"{p.name}-{mv.name}-{str(dtype)[6:]}")


@pytest.mark.parametrize("pattern_name,variant,dtype", list(_cases()))
def test_every_manual_variant_is_correct_on_cuda(pattern_name, variant, dtype):
    p = REGISTRY[pattern_name]
    mv = next(m for m in p.manual if m.name == variant)
    shape = p.shapes["quick"][1]
    why = mv.unsupported(shape, dtype, "cuda")
    if why:
        pytest.skip(why)
    inputs = p.make_inputs(shape, dtype, "cuda", torch.Generator().manual_seed(3))
    ref = p.eager(**to_reference(inputs))
    tf32 = dtype == torch.float32 and (torch.backends.cudnn.allow_tf32 if p.family == "conv"
                                       else torch.backends.cuda.matmul.allow_tf32)
    assert relative_error(mv.build(inputs)(), ref) <= tolerance(dtype, tf32)


def test_cuda_entry_has_host_device_split_kernel_counts_and_sdpa_backend():
    import importlib

    cal = importlib.import_module("fxfusion.calibration.calibrate")
    p = REGISTRY["full_attention"]
    entry = cal.measure_entry(p, {"B": 2, "H": 4, "S": 256, "D": 64}, "bfloat16", "cuda", resolve("h100-sxm"), SPEC,
                              CudaClock(), compile_modes=("compile", "compile_reduce_overhead"))
    for v in entry.variants:
        assert v.status == "ok", (v.name, v.reason)
        assert v.kernels_per_call >= 1 and v.kernel_unit == "cuda kernels"
        assert v.device_ms > 0 and v.host_overhead_ms >= 0 and v.median_ms >= v.device_ms * 0.5
    assert entry.variant("sdpa").details["sdpa_backend"] in ("flash", "efficient", "cudnn", "math")
    assert entry.variant("sdpa").kernels_per_call < entry.variant("eager").kernels_per_call


def test_triton_add_layernorm_matches_reference_in_every_dtype():
    p = REGISTRY["add_layernorm"]
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        inputs = p.make_inputs({"M": 300, "N": 1000}, dtype, "cuda", torch.Generator().manual_seed(0))
        ref = p.eager(**to_reference(inputs))
        assert relative_error(p.manual[0].build(inputs)(), ref) <= tolerance(dtype)


def test_calibrate_cli_on_cuda(tmp_path):
    from typer.testing import CliRunner

    from fxfusion.cli.commands import app
    from fxfusion.profiles.profile import Profile

    out = tmp_path / "gpu.json"
    result = CliRunner().invoke(app, ["calibrate", "--hardware", "h100-sxm", "--device", "cuda", "--quick",
                                      "--patterns", "conv2d_bn_relu", "--dtypes", "float16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    profile = Profile.load(out)
    assert profile.metadata["device"] == f"cuda:{torch.cuda.current_device()}" and "tf32" in profile.metadata
    assert {v.name for v in profile.entries[0].variants} >= {"eager", "bn_folded", "conv_relu_fused", "channels_last",
                                                             "compile", "compile_reduce_overhead"}


def test_written_out_gelu_goes_into_the_cublaslt_epilogue():
    """GPT-2's NewGELU (eight elementwise ops) after a Conv1D addmm: the epilogue takes it, bf16, within tolerance."""
    import fxfusion
    from fxfusion.graph.capture import capture
    from fxfusion.graph.loader import load_model
    from fxfusion.fusions.match import find_sites
    from fxfusion.planning.plan import FusionPlan
    from fxfusion.profiles.profile import Decision

    loaded = load_model(Path(__file__).resolve().parent.parent / "models" / "gpt2_mlp.py", device="cuda",
                        dtype=torch.bfloat16)
    captured = capture(loaded.model, loaded.example_inputs)
    sites = find_sites(captured)
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cuda", "fuse", "addmm_epilogue", None, "test")
                 for s in sites if s.pattern == "linear_bias_gelu_tanh"}
    plan = FusionPlan.from_decisions(captured, sites, decisions)
    planned = fxfusion.apply(loaded.model, plan)
    assert [r.variant for r in planned.fxfusion_rewrites if r.applied] == ["addmm_epilogue"]
    ops = [str(n.meta.get("fxfusion_original_target", n.target)) for n in planned.graph.nodes]
    assert "aten.tanh.default" not in ops and "aten._addmm_activation.default" in ops
    x = loaded.example_inputs[0]
    with torch.no_grad():
        ref = copy.deepcopy(loaded.model).double().cpu()(x.double().cpu())  # the float64 reference, on the CPU
        assert relative_error(planned(x).cpu(), ref) < tolerance(torch.bfloat16)


@pytest.mark.parametrize("mode", ["isolated", "pipelined"])
def test_the_clock_times_the_gpu_it_is_given(mode):
    """A known matmul on a non-default GPU (cuda:1 where there are two; else cuda:0 named explicitly): the clock's
    time per call agrees with a plain wall clock around synchronised calls on that GPU.  Before the device was
    carried to the clock, events were recorded on the current GPU and cuda:1 read the launch only (0.05 vs 1.4 ms)."""
    from fxfusion.measure.devices import as_device, synchronize
    from fxfusion.measure.timing import clock_for, measure

    index = 1 if torch.cuda.device_count() > 1 else 0
    device = as_device(f"cuda:{index}")
    assert torch.cuda.current_device() == 0  # the timed GPU is not the current one where there are two
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    fn = lambda: a @ a  # noqa: E731
    clock = clock_for(device, mode)
    assert clock.device == device
    samples = measure({"mm": fn}, clock, TimingSpec(rounds=10, warmup=3, target_sample_s=0.02, budget_s=10.0))
    timed = sorted(samples.seconds["mm"])[len(samples.seconds["mm"]) // 2]
    import time

    walls = []
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(10):
            fn()
        synchronize(device)
        walls.append((time.perf_counter() - start) / 10)
    wall = sorted(walls)[2]
    assert 0.75 < timed / wall < 1.25, (index, mode, timed, wall)


# -- the pre-LN residual add + norm writing its sum: the two-output Triton kernel -------------------------------------

SUM_PATTERNS = [("add_layernorm_sum", False), ("add_rmsnorm_sum", True)]


@pytest.mark.parametrize("name, rms", SUM_PATTERNS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_two_output_add_norm_kernel_writes_the_sum_and_the_norm(name, rms, dtype):
    """(2, 150, 1000): rows of a 3-d input, N not a power of two (masked columns).  h is bit for bit the eager add
    (one rounding of the float32 sum); h and y are within the dtype's tolerance of float64, and y of the kernel's
    torch twin (the function the CPU tests rewrite with)."""
    from fxfusion.fusions.norm.kernels import add_norm_reference
    from fxfusion.fusions.norm.pattern import EPS

    p = REGISTRY[name]
    inputs = p.make_inputs({"M": 300, "N": 1000}, dtype, "cuda", torch.Generator().manual_seed(0))
    inputs["x"], inputs["residual"] = inputs["x"].view(2, 150, 1000), inputs["residual"].view(2, 150, 1000)
    h, y = p.manual[0].build(inputs)()
    assert h.shape == y.shape == (2, 150, 1000) and h.dtype == y.dtype == dtype
    assert torch.equal(h, inputs["x"] + inputs["residual"])
    assert relative_error((h, y), p.eager(**to_reference(inputs))) <= tolerance(dtype)
    twin = add_norm_reference(inputs["x"], inputs["residual"], inputs["weight"], inputs.get("bias"), EPS, rms)
    assert relative_error(y, twin[1].double()) <= tolerance(dtype)


@pytest.mark.parametrize("name, rms", SUM_PATTERNS)
def test_two_output_add_norm_kernel_is_one_launch_and_every_variant_measures(name, rms):
    """eager, the Triton kernel, compile and compile_reduce_overhead (a CUDA graph returning two tensors) all pass the
    float64 gate; the kernel is one launch where eager takes several."""
    import importlib

    cal = importlib.import_module("fxfusion.calibration.calibrate")
    p = REGISTRY[name]
    entry = cal.measure_entry(p, {"M": 2048, "N": 1024}, "bfloat16", "cuda", resolve("h200"), SPEC, CudaClock(),
                              compile_modes=("compile", "compile_reduce_overhead"))
    for v in entry.variants:
        assert v.status == "ok", (v.name, v.reason)
    kernel = entry.variant(p.manual[0].name)
    assert kernel.kernels_per_call == 1 < entry.variant("eager").kernels_per_call


def test_pre_ln_block_is_rewritten_into_the_two_output_kernels_on_cuda():
    """A pre-LN block (LayerNorm, then Llama's RMSNorm written out, each sum read again) in bfloat16: both sites take
    the Triton kernel, the norms' ops are gone, and the planned model is within bfloat16 tolerance of float64."""
    import fxfusion
    from fxfusion.fusions.match import find_sites
    from fxfusion.fusions.norm import kernels
    from fxfusion.graph.capture import capture
    from fxfusion.graph.lean import original_target
    from fxfusion.planning.plan import FusionPlan
    from fxfusion.profiles.profile import Decision

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.fc1 = torch.nn.LayerNorm(256), torch.nn.Linear(256, 256)
            self.weight, self.fc2 = torch.nn.Parameter(torch.rand(256) + 0.5), torch.nn.Linear(256, 256)

        def forward(self, x, r):
            h = x + r
            h2 = h + self.fc1(self.ln(h))
            f = h2.to(torch.float32)  # transformers' LlamaRMSNorm
            f = f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + 1e-6)
            return h2 + self.fc2(self.weight * f.to(h2.dtype))

    torch.manual_seed(0)
    model = Block().to("cuda", torch.bfloat16).eval()
    inputs = tuple(torch.randn(4, 64, 256, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    captured = capture(model, inputs)
    sites = find_sites(captured)
    variant = {"add_layernorm_sum": "triton_add_layernorm_sum", "add_rmsnorm_sum": "triton_add_rmsnorm_sum"}
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cuda", "fuse", variant[s.pattern], None, "test")
                 for s in sites if s.pattern in variant}
    assert sorted(s.pattern for s in sites if s.pattern in variant and s.legal) == sorted(variant)
    planned = fxfusion.apply(model, FusionPlan.from_decisions(captured, sites, decisions))
    assert sorted(r.variant for r in planned.fxfusion_rewrites if r.applied) == sorted(variant.values())
    ops = [original_target(n) for n in planned.graph.nodes]
    assert kernels.add_layernorm_sum in ops and kernels.add_rmsnorm_sum in ops
    aten = torch.ops.aten
    assert not {aten.layer_norm.default, aten.rsqrt.default, aten.pow.Tensor_Scalar} & set(ops)
    with torch.no_grad():
        ref = copy.deepcopy(model).double().cpu()(*(x.double().cpu() for x in inputs))
        assert relative_error(planned(*inputs).cpu(), ref) < tolerance(torch.bfloat16)


def test_both_regimes_come_from_one_batch_on_the_gpu():
    """A launch-bound op costs more isolated (flushed, the GPU idle, one call) than pipelined (back to back, the host
    enqueuing ahead); a device-bound matmul costs about the same in both, and agrees with a wall clock."""
    from fxfusion.measure.timing import measure_regimes

    small = torch.randn(1024, device="cuda")
    big = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    thunks = {"add": lambda: small + 1.0, "mm": lambda: big @ big}
    out = measure_regimes(thunks, CudaClock(), TimingSpec(rounds=10, warmup=3, target_sample_s=0.01, budget_s=10.0),
                          reference=lambda: small * 2.0)
    med = {r: {n: sorted(s)[len(s) // 2] for n, s in out.by_regime[r].seconds.items()} for r in out.by_regime}
    assert med["isolated"]["add"] > 1.5 * med["pipelined"]["add"], med
    assert 0.8 < med["isolated"]["mm"] / med["pipelined"]["mm"] < 1.25, med
    assert out.by_regime["pipelined"].inner["add"] > 1 and len(out.reference) == 10
