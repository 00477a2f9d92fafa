"""The zoo's attention for real: transformers' GPT-2, Llama and BERT with eager attention, and timm's ViT with its
eager attention, at tiny configs with random weights.  Every attention block is one legal site of the pattern that
measures it, and becomes one SDPA that agrees with the float64 model.  Skipped cleanly where transformers or timm is
missing or does not import (timm needs torchvision; transformers does not).

The rewrite is checked on the runnable captured graph (``runnable_graph`` + ``rewrite_group``), not through
``fxfusion.apply``: apply's last step, ``graph.lean``, turns the ``aten.to.dtype_layout`` of transformers' mask code
into a ``Tensor.to(layout=...)`` call that raises -- a lean.py defect outside attention, fixed separately.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util

import pytest
import torch

from fxfusion.fusions.attention.reading import HAS_GQA
from fxfusion.fusions.match import find_sites
from fxfusion.graph.capture import capture
from fxfusion.graph.nodes import arg
from fxfusion.graph.runnable import runnable_graph
from fxfusion.measure.correctness import relative_error, tolerance
from fxfusion.planning.plan import FusionPlan
from fxfusion.planning.rewrite import rewrite_group
from fxfusion.profiles.profile import Decision
from tests.zoo_entries import zoo_module

aten = torch.ops.aten
ATTENTION = {"full_attention", "causal_attention", "masked_attention", "gqa_attention"}


def _import(module: str):
    """``module``, or a clean skip saying why it does not import here (the package missing, or broken)."""
    broken = ""
    try:  # torchvision as the zoo imports it (models/zoo/_zoolib.py): transformers and timm import it when installed
        zoo_module("_zoolib").import_torchvision()
    except Exception as exc:  # absent or broken: the skip below says so
        broken = f"; torchvision does not import ({type(exc).__name__}: {str(exc)[:80]})"
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ModuleNotFoundError when the package is missing
        pytest.skip(f"{module} does not import here: {type(exc).__name__}: {str(exc)[:120]}{broken}")


def _hidden(out) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0] if isinstance(out, tuple) else out


def check_every_block(model, inputs, layers: int, pattern: str, form: str):
    """One legal ``pattern`` site per attention block, each rewritten to one SDPA; the result against float64."""
    captured = capture(model, inputs)
    sites = find_sites(captured)
    attention = [s for s in sites if s.pattern in ATTENTION]
    assert [(s.pattern, s.status, s.roles.get("mask_form", "none")) for s in attention] == \
        [(pattern, "fusible", form)] * layers, [(s.pattern, s.reasons) for s in attention]
    assert not {"aten.matmul.default", "aten.softmax.int"} & set(captured.unmatched)
    decisions = {s.id: Decision(s.pattern, dict(s.shape), s.dtype, "cpu", "fuse", "sdpa", None, "test")
                 for s in attention}
    plan = FusionPlan.from_decisions(captured, sites, decisions)
    gm = runnable_graph(captured, 0, model)
    records = [rewrite_group(gm, g) for g in plan.groups]
    assert [r.applied for r in records] == [True] * layers, [r.detail for r in records]
    gm.graph.lint()
    sdpas = [n for n in gm.graph.nodes if n.target == aten.scaled_dot_product_attention.default]
    assert len(sdpas) == layers and not [n for n in gm.graph.nodes if n.target == aten.softmax.int]
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        want = _hidden(ref(*[x.double() if x.is_floating_point() else x for x in inputs]))
        got = _hidden(gm(*inputs))
    assert relative_error(got, want) < tolerance(torch.float32)
    return sites, sdpas


class WithMask(torch.nn.Module):
    """A model called with its attention mask by keyword (GPT-2 takes ``cache`` second)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, mask):
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state


def _tokens(n: int = 16, vocab: int = 128) -> torch.Tensor:
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("padded", [False, True], ids=["causal", "causal+padding"])
def test_gpt2_eager_attention_is_one_sdpa_per_block(padded):
    tf = _import("transformers.models.gpt2.modeling_gpt2")
    torch.manual_seed(0)
    cfg = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=128, use_cache=False,
                        attn_implementation="eager", bos_token_id=0, eos_token_id=0)
    model, inputs = tf.GPT2Model(cfg).eval(), (_tokens(),)
    if padded:
        mask = torch.ones(2, 16, dtype=torch.long)
        mask[1, :3] = 0  # left padding
        model, inputs = WithMask(model), (inputs[0], mask)
    # the causal mask HF builds from position ids is a constant of the graph: SDPA's is_causal, no mask tensor
    _, sdpas = check_every_block(model, inputs, 2, "masked_attention" if padded else "causal_attention",
                                 "additive" if padded else "causal")
    assert all(bool(arg(n, 5, "is_causal", False)) != padded for n in sdpas)


def test_llama_eager_attention_is_one_sdpa_per_block_with_gqa():
    tf = _import("transformers.models.llama.modeling_llama")
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, use_cache=False,
                         attn_implementation="eager")
    model = tf.LlamaModel(cfg).eval()
    pattern = "gqa_attention" if HAS_GQA else "causal_attention"
    sites, sdpas = check_every_block(model, (_tokens(),), 2, pattern, "causal")
    if HAS_GQA:  # repeat_kv (expand + reshape of k and v) is in the site: SDPA reads K and V with their 2 heads
        assert [s.shape for s in sites if s.pattern == pattern] == [{"B": 2, "H": 4, "KV": 2, "S": 16, "D": 16}] * 2
        assert all(n.kwargs.get("enable_gqa") and n.args[1].meta["val"].shape[1] == 2 for n in sdpas)


def test_bert_eager_attention_with_a_padding_mask_is_one_sdpa_per_block():
    tf = _import("transformers.models.bert.modeling_bert")
    torch.manual_seed(0)
    cfg = tf.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        vocab_size=128, max_position_embeddings=64, attn_implementation="eager")
    model, ids = tf.BertModel(cfg).eval(), _tokens()
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0  # the second sequence is padded
    # HF's additive mask (0 / finfo.min) is what SDPA reads as attn_mask, as it is: nothing is built
    _, sdpas = check_every_block(model, (ids, mask), 2, "masked_attention", "additive")
    masks = {arg(n, 3, "attn_mask") for n in sdpas}
    assert len(masks) == 1 and next(iter(masks)).meta["val"].dtype == torch.float32


def test_timm_vit_eager_attention_is_one_sdpa_per_block():
    timm = _import("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=2)
    for block in model.blocks:
        block.attn.fused_attn = False  # timm's eager path: q * scale, q @ k^T, softmax, dropout, @ v
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    check_every_block(model.eval(), (x,), 2, "full_attention", "none")
