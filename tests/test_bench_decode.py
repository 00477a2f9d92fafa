"""benchmarks/bench_decode.py: its generation loop is the zoo's, its token check names the first differing step, and
each whole-model configuration compiles in a frame of its own (two compiles of one module class in configurations
that differ only by Inductor options share Dynamo's cache entry otherwise)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.zoo_entries import require

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_decode.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_decode", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_decode"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_decode", None)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one thread (tests.helpers.one_thread)."""


def _tiny(bench, name="hf_llama", steps=32):
    require("transformers")
    return bench.build(name, "tiny", steps, torch.device("cpu"), None)


def test_the_timed_loop_generates_what_the_zoo_loop_does(bench):
    module, cfg, step, inputs, prompt = _tiny(bench)
    assert cfg.cache >= cfg.seq + 32 and int(inputs[1]) == cfg.seq
    llama = __import__("hf_llama")
    eager = bench.Candidate("eager", step, kv=llama.empty_cache(step.lm, cfg.batch, step.cache_len))
    tokens, ms, first = bench.generate(eager, step, prompt, 32, torch.device("cpu"))
    again, _, _ = bench.generate(eager, step, prompt, 32, torch.device("cpu"))  # the same cache, prefilled again
    assert ms > 0 and first.shape == (cfg.batch, 1, cfg.vocab)
    assert torch.equal(tokens, llama.greedy_generate(step, prompt, 32)) and torch.equal(again, tokens)


def test_the_token_check_names_the_first_differing_step(bench):
    want = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    got = want.clone()
    assert bench.first_difference(got, want) is None
    got[1, 3], got[0, 2] = 0, 0
    assert bench.first_difference(got, want) == "from step 2 (sequence 0)"
    assert bench.first_difference(got[:, :3], want).startswith("shape")
    gaps = torch.tensor([[1.0, 1.0, 0.01, 1.0], [1.0, 1.0, 1.0, 1.0]])  # eager's top-two gap per sequence and step
    assert bench.first_difference(got, want, gaps, 0.05) == (
        "from step 2 (sequence 0; eager's top-two logit gap there 0.01, within the 0.05 its step-1 logits differ by: "
        "a near-tie)")
    assert bench.first_difference(got, want, gaps, 0.001).endswith("over the 0.001 its step-1 logits differ by)")


def test_the_top_two_gap_is_per_sequence_at_the_last_position(bench):
    logits = torch.tensor([[[9.0, 0.0, 0.0], [3.0, 1.0, 2.5]], [[0.0, 0.0, 0.0], [0.0, 4.0, 1.0]]])
    assert bench.top2_gap(logits).tolist() == [0.5, 3.0]


def test_each_configuration_gets_a_code_object_of_its_own(bench):
    inner = torch.nn.Linear(3, 2)
    a, b = bench.own_frame(inner), bench.own_frame(inner)
    assert type(a).forward.__code__ is not type(b).forward.__code__
    x = torch.randn(4, 3)
    torch.testing.assert_close(a(x), inner(x), rtol=0, atol=0)


@pytest.mark.slow
def test_one_model_end_to_end_with_a_compiled_configuration(bench, tmp_path):
    """GPT-2's tiny step through the whole benchmark: eager, compile, compile+freezing and the chosen candidate timed
    in the loop, every one giving eager's tokens, each compiled configuration compiling a graph of its own."""
    require("transformers")
    args = argparse.Namespace(preset="tiny", steps=32, rounds=2, compile_modes="default,freezing", candidates="none",
                              measure=False, plans=None, save_plans=str(tmp_path), dtype=None)
    result = bench.run_model("hf_gpt2", args, torch.device("cpu"), None)
    rows = {r["name"]: r for r in result["candidates"]}
    assert list(rows)[:3] == ["eager", "compile", "compile+freezing"] and list(rows)[3].startswith("chosen: ")
    assert all(r["failed"] is None and r["tokens_equal"] and len(r["samples_ms"]) == 2 for r in rows.values())
    assert rows["compile"]["graphs"] >= 1 and rows["compile+freezing"]["graphs"] >= 1
    assert (tmp_path / "hf_gpt2.json").exists()
    assert "tokens equal eager's: yes" in "\n".join(bench.table(result, 32))
    # The saved plan applied instead of analysing: the same chosen candidate, no analysis
    args.plans, args.save_plans, args.compile_modes = str(tmp_path), None, "default"
    again = bench.run_model("hf_gpt2", args, torch.device("cpu"), None)
    assert again["fxfusion"]["how"].startswith("saved plan") and again["fxfusion"]["chosen"] == \
        result["fxfusion"]["chosen"]
    assert all(r["tokens_equal"] for r in again["candidates"])
