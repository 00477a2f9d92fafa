"""Hugging Face BERT (``transformers.BertModel``), random weights, built from a ``BertConfig``: nothing downloaded.

Post-norm encoder layers: q/k/v Linear, bidirectional attention through ``F.scaled_dot_product_attention``
(``"sdpa"``) with no padding mask, output Linear, dropout (identity in eval), residual add + LayerNorm,
Linear + GELU, Linear, residual add + LayerNorm.  The model returns ``last_hidden_state`` (the pooler runs too).

  models/zoo/hf_bert.py          tiny: 2 layers, hidden 64, 2 heads, 2 x 16 tokens
  models/zoo/hf_bert.py:bench    BERT-base (12 layers, hidden 768, 12 heads, MLP 3072), 32 x 128 tokens
"""

from dataclasses import dataclass

import torch
from _zoolib import LastHiddenState, import_library, token_ids


@dataclass(frozen=True)
class BertShape:
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    mlp: int = 256
    vocab: int = 256
    positions: int = 64
    batch: int = 2
    seq: int = 16
    attn_implementation: str = "sdpa"  # or "eager"


PRESETS = {
    "tiny": BertShape(),
    "bench": BertShape(hidden=768, layers=12, heads=12, mlp=3072, vocab=30522, positions=512, batch=32, seq=128),
}
REALISTIC_ENTRIES = ("bench",)  # the entry functions of the realistic presets


def get_model(cfg: BertShape = PRESETS["tiny"]) -> torch.nn.Module:
    transformers = import_library("transformers")
    config = transformers.BertConfig(
        hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        intermediate_size=cfg.mlp, vocab_size=cfg.vocab, max_position_embeddings=cfg.positions, pad_token_id=0,
        use_cache=False, attn_implementation=cfg.attn_implementation)
    torch.manual_seed(0)
    return LastHiddenState(transformers.BertModel(config)).eval()  # (B, T) ids -> (B, T, hidden)


def get_inputs(cfg: BertShape = PRESETS["tiny"]):
    return (token_ids(cfg.batch, cfg.seq, cfg.vocab),)


def bench():
    """BERT-base on 32 x 128 tokens."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)
