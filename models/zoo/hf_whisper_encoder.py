"""Hugging Face Whisper encoder (``transformers.WhisperModel(...).encoder``), random weights, from a ``WhisperConfig``.

An audio encoder: a 1-d conv stem on log-mel features -- conv1d (k 3) + bias + **GELU**, conv1d (k 3, stride 2) +
bias + GELU, no BatchNorm -- then sinusoidal positions and pre-norm layers: LayerNorm, q/k/v Linear (k without
bias), attention through ``F.scaled_dot_product_attention`` (``"sdpa"``), out Linear, residual add, LayerNorm, fc1 +
GELU, fc2, residual add; a final LayerNorm.  The model returns ``last_hidden_state``.

  models/zoo/hf_whisper_encoder.py          tiny: 2 layers, d_model 64, 2 heads, 16 mel bins x 64 frames, batch 2
  models/zoo/hf_whisper_encoder.py:bench    Whisper-base's encoder (6 layers, 512, 8 heads, FFN 2048), 80 mel bins x
                                            3000 frames (30 s), batch 8
"""

from dataclasses import dataclass

import torch
from _zoolib import import_library


@dataclass(frozen=True)
class WhisperShape:
    d_model: int = 64
    layers: int = 2
    heads: int = 2
    ffn: int = 256
    mels: int = 16
    frames: int = 64  # input frames; the stem's stride-2 conv halves them
    batch: int = 2
    attn_implementation: str = "sdpa"  # or "eager"


PRESETS = {
    "tiny": WhisperShape(),
    "bench": WhisperShape(d_model=512, layers=6, heads=8, ffn=2048, mels=80, frames=3000, batch=8),
}
REALISTIC_ENTRIES = ("bench",)  # the entry functions of the realistic presets


class Encoded(torch.nn.Module):
    """WhisperEncoder called with log-mel features, returning the plain tensor ``last_hidden_state``."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:  # (B, mels, frames) -> (B, frames/2, d_model)
        return self.encoder(input_features=input_features, return_dict=True).last_hidden_state


def get_model(cfg: WhisperShape = PRESETS["tiny"]) -> torch.nn.Module:
    transformers = import_library("transformers")
    config = transformers.WhisperConfig(
        d_model=cfg.d_model, encoder_layers=cfg.layers, encoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ffn,
        decoder_layers=1, decoder_attention_heads=cfg.heads, decoder_ffn_dim=cfg.ffn, num_mel_bins=cfg.mels,
        max_source_positions=cfg.frames // 2, vocab_size=256, max_target_positions=16, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, use_cache=False,
        attn_implementation=cfg.attn_implementation)
    torch.manual_seed(0)
    return Encoded(transformers.WhisperModel(config).get_encoder()).eval()


def get_inputs(cfg: WhisperShape = PRESETS["tiny"]):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(cfg.batch, cfg.mels, cfg.frames, generator=gen),)  # (B, mels, frames) log-mel features


def bench():
    """Whisper-base's encoder on 8 clips of 30 s (80 x 3000 log-mel frames)."""
    cfg = PRESETS["bench"]
    return get_model(cfg), get_inputs(cfg)
