"""The zoo's tiny entries (models/zoo/), each with the library it needs: shared by tests/test_zoo.py and
benchmarks/zoo_table.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ZooEntry:
    spec: str  # FILE.py or FILE.py:NAME under models/zoo/
    library: str  # the import that must work for it


ENTRIES = (
    ZooEntry("tv_resnet50.py", "torchvision"),
    ZooEntry("tv_mobilenet_v3_large.py", "torchvision"),
    ZooEntry("tv_efficientnet_b0.py", "torchvision"),
    ZooEntry("tv_convnext_tiny.py", "torchvision"),
    ZooEntry("timm_vit_small.py", "timm"),
    ZooEntry("timm_resnet18.py", "timm"),
    ZooEntry("hf_gpt2.py", "transformers"),
    ZooEntry("hf_gpt2_sdpa.py", "transformers"),
    ZooEntry("hf_llama.py", "transformers"),
    ZooEntry("hf_bert.py", "transformers"),
    ZooEntry("hf_qwen2.py", "transformers"),
    ZooEntry("hf_phi3.py", "transformers"),
    ZooEntry("hf_clip_vision.py", "transformers"),
    ZooEntry("hf_whisper_encoder.py", "transformers"),
    ZooEntry("hf_t5.py", "transformers"),
    ZooEntry("timm_levit.py", "timm"),
    ZooEntry("hf_wav2vec2.py", "transformers"),
    ZooEntry("hf_segformer.py", "transformers"),
    ZooEntry("hf_gemma.py", "transformers"),
)


def require(library: str):
    """The library a zoo model needs, or skip the test with the reason (pytest.importorskip).

    torchvision is imported through models/zoo/_zoolib.py first, as the zoo's own files do: beside a CPU build of
    torch, PyPI's (CUDA) torchvision only imports that way, and timm and transformers import it.
    """
    import pytest

    zoolib = zoo_module("_zoolib")
    try:
        zoolib.import_torchvision()
    except ImportError:
        pass  # absent: the importorskip below says so where it matters
    return pytest.importorskip(library, reason=f"the zoo model needs {library}: pip install -e '.[zoo]'")


def zoo_module(name: str):
    """A module of models/zoo/ by name, imported as the model files import it (a sibling on sys.path)."""
    import importlib
    import sys
    from pathlib import Path

    folder = str(Path(__file__).resolve().parent.parent / "models" / "zoo")
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(folder)
