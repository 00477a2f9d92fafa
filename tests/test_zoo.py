"""The zoo (models/zoo/): every third-party model's tiny preset loads, is analysed through the CLI, and --apply
verifies it against float64 -- on the CPU, without downloading anything.

A test whose library (torchvision, timm, transformers: the ``zoo`` extra) is not installed is skipped with that
reason; nothing else is skipped.  The --apply runs decide and predict with clocks that price each call by the aten
ops it runs (tests/test_insitu.py's OpCountClock) and take the captured graph's overhead as zero, so the rewrites
applied are the same on every machine and every rewrite that removes ops is exercised; the outputs are checked
against float64 for real, and the end-to-end times are real, with the tiny timing spec and no torch.compile.
Everything runs with one CPU thread: on a shared 2-core machine a second OpenMP thread that waits for a busy core
makes a tiny CNN's forward pass 10-100x slower.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import fxfusion.planning.decide as decide_module
import fxfusion.planning.insitu as insitu_module
import fxfusion.planning.pipeline as pipeline_module
from fxfusion.cli import app
from fxfusion.graph.loader import import_file, load_model
from fxfusion.measure.timing import TimingSpec
from fxfusion.planning.insitu import Overhead
from fxfusion.profiles.schema import schema_errors
from tests.helpers import OpCountClock, runnable_plan_of
from tests.zoo_entries import ENTRIES, require

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be fetched: the models are built from config objects

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
runner = CliRunner()
BY_SPEC = pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.spec)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one thread (tests.helpers.one_thread)."""


def _analyze(*args):
    result = runner.invoke(app, ["analyze", *map(str, args), "--threads", "1"])
    err = result.stderr if result.stderr_bytes is not None else result.output
    return result, err


@BY_SPEC
def test_tiny_preset_loads_through_the_convention(entry):
    require(entry.library)
    loaded = load_model(ZOO / entry.spec)
    assert loaded.training is False  # eval() mode, as built
    with torch.no_grad():
        out = loaded.model(*loaded.example_inputs)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32  # a plain tensor, not a ModelOutput


@BY_SPEC
def test_analyze_json_lists_the_sites(entry, tmp_path):
    require(entry.library)
    out = tmp_path / "report.json"
    result, err = _analyze(ZOO / entry.spec, "--match-only", "--format", "json", "-o", out)
    assert result.exit_code == 0, err
    report = json.loads(out.read_text())
    assert schema_errors(report, "analysis") == []
    assert report["capture"]["method"] == "export" and not report["capture"]["graph_breaks"]
    assert report["sites"] and report["summary"]["sites"] == len(report["sites"])
    assert report["summary"]["fusible"] > 0  # every zoo model has something left to fuse


class PricedOnce(OpCountClock):
    """OpCountClock that runs each callable once to count its aten ops: a priced call costs the same every time, and
    the in-model timing pairs every group's region with a whole forward pass (priced once per group, not 8 times)."""

    def __init__(self):
        super().__init__()
        self.prices = {}  # callable -> seconds; holding the callable keeps its id from being reused

    def sample(self, fn, inner):
        if fn not in self.prices:
            self.prices[fn] = super().sample(fn, inner)
        return self.prices[fn]


# Priced calls: the fewest rounds the statistics take (timing.MIN_ROUNDS) are enough.
PRICED_SPEC = TimingSpec(rounds=5, warmup=0, target_sample_s=0.0, max_inner=1, budget_s=5.0)


@pytest.fixture
def priced_by_op_count(monkeypatch, tmp_path, fast_planning_specs):
    """Decisions (measured live: no profile of this machine is looked for) and in-model predictions from clocks that
    price aten ops, and no captured-graph overhead: the plan is the same on every machine (see the module doc).
    Verification and the eager-context classes keep their real clock, briefly (tests/conftest.py)."""
    monkeypatch.setattr("fxfusion.cli.analyze.PROFILE_FOLDER", tmp_path)  # empty: reading profiles/ costs seconds
    monkeypatch.setattr(decide_module, "clock_for", lambda device, mode="isolated": PricedOnce())
    monkeypatch.setattr(insitu_module, "model_clock", lambda device: PricedOnce())
    monkeypatch.setattr(insitu_module, "INSITU_SPEC", PRICED_SPEC)
    monkeypatch.setattr(pipeline_module, "measure_overhead", lambda *a, **k: Overhead(0.0, 0.0, 0.0))


# What --apply rewrites on the CPU without torch.compile, priced by op count: every conv+BN(+ReLU) site of the CNNs,
# BatchNorm folded into the conv, or oneDNN's fused conv+ReLU.  The transformers rewrite little else there (GPT-2's
# eager attention below; q/k/v, MERGED_ON_CPU): their linears and SDPA already run fused, linear+GELU has no variant
# but the addmm it already runs (torch.compile is the other), the fused add+LayerNorm is a Triton kernel (CUDA), and
# F.rms_norm decomposes on the CPU build (not a fusion).
APPLIED_ON_CPU = {
    "tv_resnet50.py": {"bn_folded", "conv_relu_fused"},
    # conv+BN+Hardswish and the squeeze-excitation convs (conv+ReLU, conv+Hardsigmoid): oneDNN's post-op fusions
    "tv_mobilenet_v3_large.py": {"bn_folded", "conv_relu_fused", "conv_hardswish_fused", "conv_hardsigmoid_fused"},
    "tv_efficientnet_b0.py": {"bn_folded", "conv_silu_fused", "conv_sigmoid_fused"},  # conv+BN+SiLU, SE convs
    "timm_resnet18.py": {"bn_folded", "conv_relu_fused"},
    "hf_gpt2.py": {"sdpa"},  # GPT-2's eager attention, proved causal: SDPA with is_causal
    # T5's attention with its relative-position bias added to the scores (6: encoder, decoder, cross), as SDPA with
    # that bias as its mask; with its q/k/v and gated-GELU sites merged (MERGED_ON_CPU)
    "hf_t5.py": {"sdpa"},
    # LeViT: its 22 Linear + BatchNorm1d (timm's LinearNorm) folded, and its conv stem (conv+BN+Hardswish: oneDNN)
    "timm_levit.py": {"bn_folded", "conv_hardswish_fused"},
    # SegFormer's Mix-FFN: depthwise conv + bias, flatten, transpose, GELU -> oneDNN's conv + GELU, then the layout ops
    "hf_segformer.py": {"conv_gelu_fused"},
    # ConvNeXt's 18 layer scales (linear, permute, * (C, 1, 1)) folded into the linear: one op where eager runs two
    "tv_convnext_tiny.py": {"scale_folded"},
}
# Where not every legal site is rewritten, how many are (the rest refused with a reason): LeViT's 5 attention sites
# (scores + learned position bias) are priced slower inside the model than as written ('slower_in_model').
# ConvNeXt's 18 linear + GELU sites have no CPU variant but the addmm they run and compile: its 18 layer scales only.
APPLIED_COUNT_ON_CPU = {"timm_levit.py": 26, "tv_convnext_tiny.py": 18}
# The transformers' q/k/v (Llama, Qwen2, BERT: one site per layer) merged into one GEMM (fusions/sibling, variant
# "merged"): one GEMM and three slices for three GEMMs, fewer aten ops, so the op-count clock decides them 'fuse'.
# Llama's and Qwen2's gate/up sites are priced even (one GEMM and two slices for two GEMMs): neutral, not rewritten.
# Model file -> how many sites are merged.  CLIP's, Whisper's and wav2vec2's q/k/v too (Whisper's k_proj has no bias:
# zeros are concatenated for it); Whisper's and wav2vec2's conv1d+GELU stems are priced 'avoid' here (the oneDNN call
# runs the 1-d conv as a 2-d one: more aten ops).  Phi-3 merges nothing on the CPU: its q/k/v and gate/up are
# pre-fused in the checkpoint (its gated site already runs as 'merged'; act and product fuse only by torch.compile).
# T5: 5 q/k/v sites (4 self-attention, 1 cross-attention k/v) and its 4 gated-GELU sites, whose activation is written
# out (8 ops, so the merged form runs fewer), plus the 6 SDPA rewrites above: 15 in all.
# SegFormer: its last stage's q/k/v (the other stages' k/v pairs are priced even) and its 4 Mix-FFN conv + GELU.
# Gemma: its q/k/v, as Llama's (its (1 + w) RMSNorms are sites too, not decided 'fuse' by the op-count clock).
MERGED_ON_CPU = {"hf_llama.py": 2, "hf_qwen2.py": 2, "hf_bert.py": 2, "hf_clip_vision.py": 2,
                 "hf_whisper_encoder.py": 2, "hf_t5.py": 15, "hf_wav2vec2.py": 2, "hf_segformer.py": 5,
                 "hf_gemma.py": 2}
# The rotary embeddings of q and k (2 layers: 4 sites) as one roll and one addcmul (fusions/rotary, "rolled"): 4 aten ops
# where the written-out chain launches 6, so the op-count clock decides them 'fuse'.
ROLLED_ON_CPU = {"hf_llama.py": 4, "hf_qwen2.py": 4, "hf_phi3.py": 4, "hf_gemma.py": 4}
# Decided 'fuse' but not rewritten, with the rewrite's own reason: none left.  (GPT-2's eager attention, whose
# probabilities are cast to value's dtype before dropout and @ V, used to be refused by the SDPA rewrite; the
# matcher and the rewrite now read a site the same way, fusions/attention/reading.py.)
NOT_REWRITTEN: dict[str, set] = {}


# The conv nets' --apply runs rewrite 20-80 conv sites: each class of rewrites is applied to the model alone (the
# eager context) and the plan once more to verify it, 10-25 s a model on a busy 2-core machine with every timing
# already quick.  Marked slow: deselected by `python3 -m pytest -q`, run by `python3 -m pytest -q -m slow` (CI runs
# both).  The other presets' runs take a few seconds and stay in the default run.
SLOW_APPLY = {"tv_efficientnet_b0.py", "tv_mobilenet_v3_large.py", "tv_resnet50.py", "timm_resnet18.py",
              "timm_levit.py"}  # LeViT: 26 rewrites, 14-18 s


@pytest.mark.parametrize("entry", [pytest.param(e, marks=pytest.mark.slow) if e.spec in SLOW_APPLY else e
                                   for e in ENTRIES], ids=lambda e: e.spec)
def test_apply_verifies_against_float64(entry, tmp_path, priced_by_op_count):
    require(entry.library)
    out = tmp_path / "report.json"
    result, err = _analyze(ZOO / entry.spec, "--apply", "--no-compile", "--format", "json", "-o", out)
    assert result.exit_code == 0, err
    report = json.loads(out.read_text())
    assert schema_errors(report, "analysis") == []
    v = report["verification"]
    assert v["ok"] is True and v["reference"] == "float64", v.get("reason")
    assert v["outputs"] and all(o["ok"] for o in v["outputs"])
    applied = [r for r in v["rewrites"] if r["applied"]]
    merged = {"merged"} if entry.spec in MERGED_ON_CPU else set()
    rolled = {"rolled"} if entry.spec in ROLLED_ON_CPU else set()
    assert {r["variant"] for r in applied} == APPLIED_ON_CPU.get(entry.spec, set()) | merged | rolled
    if merged or rolled:
        assert len(applied) == MERGED_ON_CPU.get(entry.spec, 0) + ROLLED_ON_CPU.get(entry.spec, 0)
    if entry.spec == "hf_gpt2.py":
        assert len(applied) == 2  # both attention blocks; its linears and add+norms have no CPU variant but compile
    elif entry.spec in APPLIED_COUNT_ON_CPU:
        assert len(applied) == APPLIED_COUNT_ON_CPU[entry.spec]
    elif entry.spec in APPLIED_ON_CPU and not merged:
        assert len(applied) == report["summary"]["fusible"]  # every legal site was rewritten, inside one model
    refused = {(r["variant"], r["detail"]) for r in v["rewrites"] if not r["applied"]}
    assert refused == NOT_REWRITTEN.get(entry.spec, set())


def test_every_file_has_its_presets_and_entries():
    """The realistic presets, by the shapes they promise (built on a GPU by their entry functions, not here)."""
    shapes = {}
    for path in sorted(ZOO.glob("[!_]*.py")):
        module = import_file(path)
        assert callable(module.get_model) and callable(module.get_inputs) and "tiny" in module.PRESETS, path
        # every realistic preset has its entry function, listed in REALISTIC_ENTRIES (benchmarks read that list)
        assert set(module.REALISTIC_ENTRIES) == set(module.PRESETS) - {"tiny"}, path
        assert all(callable(getattr(module, name)) for name in module.REALISTIC_ENTRIES), path
        shapes[path.stem] = module.PRESETS
    assert {e.spec for e in ENTRIES} == {f"{stem}.py" for stem in shapes}  # the test covers every zoo file
    r50, gpt2, llama, vit = shapes["tv_resnet50"], shapes["hf_gpt2"], shapes["hf_llama"], shapes["timm_vit_small"]
    assert (r50["bench"].batch, r50["bench"].image) == (32, 224)
    assert (gpt2["bench"].hidden, gpt2["bench"].layers, gpt2["bench"].batch, gpt2["bench"].seq) == (768, 4, 8, 512)
    assert gpt2["bench"].attn_implementation == "eager" and shapes["hf_gpt2_sdpa"]["bench"].attn_implementation == "sdpa"
    assert (llama["bench"].hidden, llama["bench"].layers, llama["bench"].batch, llama["bench"].seq) == (1024, 4, 4, 512)
    assert (llama["decode"].batch, llama["decode"].seq) == (8, 1)
    assert (vit["bench"].batch, vit["bench"].image, vit["bench"].width, vit["bench"].depth) == (32, 224, 384, 12)


def test_llama_in_bfloat16_keeps_its_dtype_through_every_rewrite():
    """Llama normalises in float32 and casts back: the rms_norm rewrite takes the input before the upcast (so the op
    can run fused) and hands the next GEMM bfloat16, with the merged q/k/v and gate/up around it."""
    require("transformers")
    from fxfusion.measure.correctness import relative_error, tolerance
    from fxfusion.planning.apply import apply

    loaded = load_model(ZOO / "hf_llama.py", dtype=torch.bfloat16)
    plan = runnable_plan_of(loaded.model, loaded.example_inputs, torch.bfloat16)
    planned = apply(loaded.model, plan, candidate="planned")
    applied = {r.pattern for r in planned.fxfusion_rewrites if r.applied}
    assert {"rmsnorm", "sibling_gemm3", "gated_mlp_silu"} <= applied
    with torch.no_grad():
        out = planned(*loaded.example_inputs)
        ref = copy.deepcopy(loaded.model).double()(*loaded.example_inputs)
    assert out.dtype == torch.bfloat16
    assert relative_error(out, ref) < tolerance(torch.bfloat16)
