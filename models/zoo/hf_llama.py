"""Hugging Face Llama (``transformers.LlamaModel``), random weights, built from a ``LlamaConfig``: nothing downloaded.

Pre-norm decoder layers: RMSNorm (written out: pow, mean, rsqrt, multiply), q/k/v/o projections without bias,
rotary embeddings, grouped-query attention through ``F.scaled_dot_product_attention`` (``"sdpa"``, the library's
default on torch 2), RMSNorm, SwiGLU MLP (gate and up projections, SiLU, multiply, down projection).  The model
returns ``last_hidden_state``; no KV cache (``use_cache=False``): the decode preset is one token, as a single
step would be.  The ``decode_cache`` preset is a real decode step: ``LlamaForCausalLM`` over transformers'
``StaticCache`` (:class:`DecodeStep`), run inside a greedy generation loop by :func:`greedy_generate`; the ``padded``
preset is a left-padded batch with its ``attention_mask`` (:class:`Padded`).  GPT-2 and Qwen2 share both.

  models/zoo/hf_llama.py               tiny: 2 layers, hidden 64, 4 heads / 2 KV heads, 2 x 16 tokens
  models/zoo/hf_llama.py:bench         4 layers, hidden 1024, 16 heads / 4 KV heads, MLP 2816, 4 x 512 tokens
  models/zoo/hf_llama.py:decode        the same model on 8 x 1 token, no cache
  models/zoo/hf_llama.py:decode_cache  the same model (with its LM head): one token per sequence after a 128-token
                                       prompt of 8 sequences, over a static cache of 192 positions
  models/zoo/hf_llama.py:padded        the bench model on 4 x 512 tokens, every other sequence left-padded by 128

Why the cache is an input (``DecodeStep(ids, position, *kv)``) and not a buffer of the module: transformers'
export recipe (``integrations.executorch.TorchExportableModuleWithStaticCache``) keeps it in buffers, which the
planned model -- a copy of the captured program -- would copy, so the prompt would have to run through the one-token
step token by token.  As inputs, written in place at ``position`` (``index_copy_``, which torch.export records as a
mutation of the input and the planned model replays), the prompt runs once through the eager model into the same
tensors the planned step then reads and extends.  A call at one position is idempotent (it writes that position and
reads it back), so fxfusion's verification and timing can call the step many times at its example inputs.
"""

from dataclasses import dataclass, replace

import torch
from _zoolib import LastHiddenState, import_library, token_ids


@dataclass(frozen=True)
class LlamaShape:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    mlp: int = 128
    vocab: int = 256
    positions: int = 64
    batch: int = 2
    seq: int = 16  # tokens per sequence (decode_cache: the prompt's)
    attn_implementation: str = "sdpa"  # or "eager"
    cache: int = 0  # decode_cache: the static cache's positions (prompt + the tokens it can generate); 0: no cache
    pad: int = 0  # padded: the left padding of every other sequence
    head_dim: int | None = None  # a head's width where the config does not derive it from hidden / heads (Gemma's 256)


PRESETS = {
    "tiny": LlamaShape(),
    "bench": LlamaShape(hidden=1024, layers=4, heads=16, kv_heads=4, mlp=2816, vocab=32000, positions=2048,
                        batch=4, seq=512),
}
PRESETS["decode"] = replace(PRESETS["bench"], batch=8, seq=1)
PRESETS["decode_cache"] = replace(PRESETS["bench"], batch=8, seq=128, cache=192)
PRESETS["padded"] = replace(PRESETS["bench"], pad=128)
REALISTIC_ENTRIES = ("bench", "decode", "decode_cache", "padded")  # the entry functions of the realistic presets


def decoder(cfg: LlamaShape, family: str = "Llama", head: str = "Model") -> torch.nn.Module:
    """``transformers.<family>Model`` from its ``<family>Config`` at ``cfg``: Llama, and the models that share its
    config fields (Qwen2, Mistral, Gemma); ``head="ForCausalLM"``: the model with its LM head, unwrapped."""
    transformers = import_library("transformers")
    config = getattr(transformers, f"{family}Config")(
        hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads, intermediate_size=cfg.mlp, vocab_size=cfg.vocab,
        max_position_embeddings=cfg.positions, bos_token_id=0, eos_token_id=1, pad_token_id=None, use_cache=False,
        attn_implementation=cfg.attn_implementation, **({"head_dim": cfg.head_dim} if cfg.head_dim else {}))
    torch.manual_seed(0)
    model = getattr(transformers, f"{family}{head}")(config).eval()
    return LastHiddenState(model).eval() if head == "Model" else model  # (B, T) ids -> (B, T, hidden), or the LM


def get_model(cfg: LlamaShape = PRESETS["tiny"]) -> torch.nn.Module:
    return decoder(cfg, "Llama")


def get_inputs(cfg: LlamaShape = PRESETS["tiny"]):
    return (token_ids(cfg.batch, cfg.seq, cfg.vocab),)


def bench():
    """4 Llama layers of width 1024 on 4 x 512 tokens (prefill-shaped)."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)


def decode():
    """The bench model on 8 sequences of one token (decode-shaped, without a KV cache)."""
    cfg = PRESETS["decode"]
    return get_model(cfg), get_inputs(cfg)


def decode_cache(cfg: LlamaShape = PRESETS["decode_cache"]):
    """One decode step of the bench model (with its LM head) over a static cache holding a 128-token prompt."""
    return decode_step(decoder(cfg, "Llama", "ForCausalLM"), cfg)


def padded(cfg: LlamaShape = PRESETS["padded"]):
    """The bench model on a left-padded batch with its attention mask."""
    return Padded(decoder(cfg).model).eval(), padded_inputs(cfg)


# -- decoding over a static KV cache, and padded batches: shared by the zoo's causal LMs ------------------------------

class DecodeStep(torch.nn.Module):
    """A causal LM's forward over transformers' ``StaticCache`` whose tensors are the step's inputs (module doc).

    Each call points the cache's layers at ``kv`` and its length at ``position`` (a fresh tensor: the input is never
    advanced), so the LM writes the new keys and values at ``position`` in place and attends to positions up to it.
    """

    def __init__(self, lm: torch.nn.Module, cache_len: int):
        super().__init__()
        self.lm, self.cache_len = lm, cache_len
        cache_utils = import_library("transformers.cache_utils")
        self.cache = cache_utils.StaticCache(config=lm.config, max_cache_len=cache_len)  # its tensors: set per call

    def _cache(self, position: torch.Tensor, kv: tuple):
        cache = self.cache
        for layer, keys, values in zip(cache.layers, kv[0::2], kv[1::2]):
            layer.keys, layer.values, layer.device = keys, values, keys.device
            layer.batch_size, layer.num_heads, _, layer.k_head_dim = keys.shape
            layer.v_head_dim = values.shape[-1]
            layer.cumulative_length = position.clone()
            layer.is_initialized = True
        return cache

    def _release(self) -> None:
        """The cache's layers let go of the call's tensors: the step keeps no state between calls, so a copy of it
        made after a capture (whose calls ran on export's fake tensors) or after a generation deep-copies cleanly."""
        for layer in self.cache.layers:
            layer.keys = layer.values = layer.cumulative_length = None
            layer.is_initialized = False

    def forward(self, input_ids, position, *kv):  # (B, T) ids, () int64, 2 x layers (B, KVH, cache, D) -> (B, T, vocab)
        try:
            return self.lm(input_ids=input_ids, cache=self._cache(position, kv), use_cache=True).logits
        finally:
            self._release()


def empty_cache(lm: torch.nn.Module, batch: int, cache_len: int) -> list[torch.Tensor]:
    """Zeroed keys and values for every layer of ``lm``: 2 x layers tensors (B, kv_heads, cache_len, head_dim)."""
    c = lm.config
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    p = next(lm.parameters())
    return [torch.zeros(batch, kv_heads, cache_len, head_dim, dtype=p.dtype, device=p.device)
            for _ in range(2 * c.num_hidden_layers)]


def prefill(step: DecodeStep, prompt: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The prompt run once (eagerly) into a new cache: (the next token of each sequence (B, 1), the cache)."""
    kv = empty_cache(step.lm, prompt.shape[0], step.cache_len)
    with torch.no_grad():
        logits = step(prompt, torch.tensor(0, device=prompt.device), *kv)
    return logits[:, -1:].argmax(-1), kv


def greedy_generate(step: DecodeStep, prompt: torch.Tensor, steps: int, planned_step=None) -> torch.Tensor:
    """Greedy decoding: the prompt prefilled by ``step`` (eager), then ``steps`` one-token calls of ``planned_step``
    (default: ``step``), each reading and extending the same cache.  Returns the 1 + ``steps`` new tokens
    (B, 1 + steps)."""
    run = planned_step if planned_step is not None else step
    token, kv = prefill(step, prompt)
    tokens = [token]
    with torch.no_grad():
        for i in range(steps):
            logits = run(token, torch.tensor(prompt.shape[1] + i, device=prompt.device), *kv)
            token = logits[:, -1:].argmax(-1)
            tokens.append(token)
    return torch.cat(tokens, dim=1)


def decode_step(lm: torch.nn.Module, cfg: LlamaShape):
    """(DecodeStep, its inputs after ``cfg.seq`` prompt tokens of ``cfg.batch`` sequences): the next token, its
    position and the prefilled cache."""
    step = DecodeStep(lm, cfg.cache).eval()
    token, kv = prefill(step, token_ids(cfg.batch, cfg.seq, cfg.vocab))
    return step, (token, torch.tensor(cfg.seq), *kv)


class Padded(torch.nn.Module):
    """A base model called with token ids and their attention mask, returning ``last_hidden_state``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):  # (B, T) ids, (B, T) 0/1 -> (B, T, hidden)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                          return_dict=True).last_hidden_state


def padded_inputs(cfg: LlamaShape):
    """Token ids with every other sequence left-padded by ``cfg.pad`` (pad id 0, mask 0), and the mask."""
    ids = token_ids(cfg.batch, cfg.seq, cfg.vocab)
    mask = torch.ones(cfg.batch, cfg.seq, dtype=torch.int64)
    mask[1::2, :cfg.pad] = 0
    return ids.masked_fill(mask == 0, 0), mask
