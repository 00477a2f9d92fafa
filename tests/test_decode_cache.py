"""A real decode step over a KV cache (models/zoo: hf_llama, hf_qwen2, hf_gpt2 -- ``decode_cache``), planned and run
inside a greedy generation loop: the same tokens as eager over 32 steps, on the CPU with tiny configs.

The step (``hf_llama.DecodeStep``) takes transformers' StaticCache tensors as inputs and writes the new keys and values
in place; the prompt is prefilled once by the eager model into the same tensors the planned step then extends
(``hf_llama.greedy_generate``).  Every legal site is planned with the first manual variant that runs on the CPU, so
every rewrite the library has for these models is exercised, not only those a timing would pick.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from fxfusion.planning.apply import apply
from fxfusion.planning.plan import FusionPlan
from tests.helpers import runnable_plan_of
from tests.zoo_entries import require, zoo_module

os.environ.setdefault("HF_HUB_OFFLINE", "1")

STEPS = 32  # decode steps through the planned step, after the prefill's token
# file -> (module, the rewrites every legal site gets on the CPU at float32)
LLMS = {"hf_llama": {"rms_norm_op", "merged", "addmm_rms_norm", "rolled"},
        "hf_qwen2": {"rms_norm_op", "merged", "addmm_rms_norm", "rolled"}, "hf_gpt2": {"sdpa"}}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one thread (tests.helpers.one_thread)."""


def tiny_decode(name: str):
    """The file's decode_cache entry at its tiny config: 2 sequences, an 8-token prompt, a cache of 48 positions."""
    require("transformers")
    module = zoo_module(name)
    cfg = replace(module.PRESETS["tiny"], seq=8, cache=8 + 1 + STEPS + 7)
    step, inputs = module.decode_cache(cfg)
    return module, cfg, step, inputs


def plan_every_site(step, inputs) -> FusionPlan:
    plan = runnable_plan_of(step, inputs)
    assert plan.captured.method == "export", plan.captured.notes  # the cache as inputs exports as one graph
    return plan


@pytest.mark.parametrize("name", sorted(LLMS))
def test_planned_decode_step_generates_the_eager_tokens(name):
    module, cfg, step, inputs = tiny_decode(name)
    plan = plan_every_site(step, inputs)
    planned = apply(step, plan, candidate="planned")
    applied = {r.variant for r in planned.fxfusion_rewrites if r.applied}
    assert applied == LLMS[name], [(r.site_id, r.variant, r.detail) for r in planned.fxfusion_rewrites]
    prompt = module.token_ids(cfg.batch, cfg.seq, cfg.vocab, seed=7)  # another prompt than the one planned at
    llama = zoo_module("hf_llama")
    eager_tokens = llama.greedy_generate(step, prompt, STEPS)
    planned_tokens = llama.greedy_generate(step, prompt, STEPS, planned_step=planned)
    assert planned_tokens.shape == (cfg.batch, 1 + STEPS)
    assert torch.equal(planned_tokens, eager_tokens)
    # Not one token throughout (random GPT-2 repeats one token per sequence for long stretches, but not everywhere)
    assert len(set(eager_tokens.flatten().tolist())) > 1


def test_cached_decoding_matches_decoding_without_a_cache():
    """The loop itself is right: greedy tokens over the static cache equal those of the LM re-run on the whole
    sequence at every step (no cache)."""
    module, cfg, step, _ = tiny_decode("hf_llama")
    prompt = module.token_ids(cfg.batch, cfg.seq, cfg.vocab, seed=7)
    cached = module.greedy_generate(step, prompt, 8)
    seq = prompt
    with torch.no_grad():
        for _ in range(9):
            seq = torch.cat([seq, step.lm(input_ids=seq, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(cached, seq[:, cfg.seq:])


def test_the_step_writes_its_position_in_place_and_is_idempotent():
    """fxfusion calls the step many times at its example inputs: each call writes the same keys and values at the
    same position and returns the same logits."""
    _, cfg, step, inputs = tiny_decode("hf_llama")
    token, position, *kv = inputs
    before = [t.clone() for t in kv]
    with torch.no_grad():
        first = step(token, position, *kv)
        after_one = [t.clone() for t in kv]
        second = step(token, position, *kv)
    assert int(position) == cfg.seq  # the input position is not advanced
    for b, a, now in zip(before, after_one, kv):
        assert not torch.equal(b[:, :, cfg.seq], a[:, :, cfg.seq])  # position cfg.seq written ...
        assert torch.equal(b[:, :, :cfg.seq], a[:, :, :cfg.seq])  # ... and nothing before it
        assert torch.equal(a, now)
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", sorted(LLMS))
def test_padded_preset_masks_the_left_padding(name):
    require("transformers")
    module = zoo_module(name)
    cfg = replace(module.PRESETS["tiny"], pad=5)
    model, (ids, mask) = module.padded(cfg)
    assert mask[1::2, :5].eq(0).all() and mask[0::2].eq(1).all() and ids[1::2, :5].eq(0).all()
    with torch.no_grad():
        out = model(ids, mask)
        shifted = ids[1:2].clone()
        shifted[:, :5] = 3  # other tokens under the padding: the unpadded positions do not see them
        again = model(torch.cat([ids[:1], shifted]), mask[:2])
    assert out.shape == (cfg.batch, cfg.seq, cfg.hidden)
    torch.testing.assert_close(again[1, 5:], out[1, 5:], rtol=1e-5, atol=1e-5)


def test_the_step_keeps_no_tensor_of_its_last_call_so_a_copy_after_a_capture_works():
    """The step pointed its cache at each call's tensors and kept them: after an export capture those were fake
    tensors, and a deep copy failed (saved.apply and bench_decode worked around it)."""
    import copy

    _, _, step, inputs = tiny_decode("hf_llama")
    runnable_plan_of(step, inputs)  # an export capture: the step ran on fake tensors
    assert all(layer.keys is None and layer.values is None and layer.cumulative_length is None
               for layer in step.cache.layers)
    twin = copy.deepcopy(step)
    with torch.no_grad():
        assert torch.equal(twin(*[t.clone() for t in inputs]), step(*[t.clone() for t in inputs]))
