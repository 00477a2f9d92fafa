"""Loading user model files: the convention, dtype and device moves, and one-line errors for every bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from fxfusion.errors import FxFusionError
from fxfusion.graph.loader import load_model, split_spec

MODELS = Path(__file__).resolve().parent.parent / "models"


HEADER = "import torch\nimport torch.nn as nn\n"


def write(tmp_path: Path, body: str, name: str = "m.py", header: str = HEADER) -> Path:
    path = tmp_path / name
    path.write_text(header + textwrap.dedent(body))
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in MODELS.glob("*.py")))
def test_every_reference_model_loads_by_convention(name):
    loaded = load_model(MODELS / name)
    assert loaded.entry == "get_model()+get_inputs()"
    assert isinstance(loaded.model, torch.nn.Module) and not loaded.training
    assert loaded.example_inputs and all(isinstance(t, torch.Tensor) for t in loaded.example_inputs)


def test_named_callable_returning_model_and_a_single_tensor(tmp_path):
    path = write(tmp_path, """
        def build():
            return nn.Linear(4, 2), torch.randn(3, 4)
    """)
    loaded = load_model(f"{path}:build")
    assert loaded.entry == "build()" and len(loaded.example_inputs) == 1
    assert loaded.example_inputs[0].shape == (3, 4)


def test_dtype_moves_floating_parameters_and_inputs_only(tmp_path):
    path = write(tmp_path, """
        class Emb(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb, self.fc = nn.Embedding(10, 4), nn.Linear(4, 4)
            def forward(self, ids, x):
                return self.fc(self.emb(ids)) + x
        def get_model():
            return Emb()
        def get_inputs():
            return torch.tensor([[1, 2, 3]]), torch.randn(1, 3, 4)
    """)
    loaded = load_model(path, dtype=torch.bfloat16)
    ids, x = loaded.example_inputs
    assert ids.dtype == torch.int64 and x.dtype == torch.bfloat16
    assert loaded.model.fc.weight.dtype == torch.bfloat16 and loaded.model.emb.weight.dtype == torch.bfloat16


def test_eval_flag_and_training_mode_check_leaves_batchnorm_statistics(tmp_path):
    path = write(tmp_path, """
        def get_model():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        def get_inputs():
            return torch.randn(2, 3, 8, 8) + 5.0
    """)
    loaded = load_model(path)
    assert loaded.training and torch.equal(loaded.model[1].running_mean, torch.zeros(4))
    assert int(loaded.model[1].num_batches_tracked) == 0
    assert not load_model(path, eval_mode=True).training


def test_sibling_modules_are_importable(tmp_path):
    write(tmp_path, "def block():\n    return nn.Linear(4, 4)\n", "blocks.py")
    path = write(tmp_path, """
        from blocks import block
        def get_model():
            return block()
        def get_inputs():
            return (torch.randn(2, 4),)
    """)
    assert isinstance(load_model(path).model, torch.nn.Linear)


@pytest.mark.parametrize("spec,expected", [
    ("models/x.py", (Path("models/x.py"), None)),
    ("models/x.py:build", (Path("models/x.py"), "build")),
    ("C:\\models\\x.py", (Path("C:\\models\\x.py"), None)),
    ("x.py:not-an-identifier", (Path("x.py:not-an-identifier"), None)),
])
def test_split_spec(spec, expected):
    assert split_spec(spec) == expected


BAD = {
    "missing file": (None, "", "model file {path} does not exist"),
    "not python": ("m.txt", "x = 1\n", "is not a Python file"),
    "raises on import": (None, "raise ValueError('no weights found at /data/ckpt')\n",
                         "importing {path} raised ValueError: no weights found at /data/ckpt"),
    "syntax error": (None, "def get_model(:\n", "importing {path} raised SyntaxError"),
    "exits on import": (None, "import sys\nsys.exit(3)\n", "importing {path} raised SystemExit: 3"),
    "nothing model-like": (None, "x = 1\n", "{path} defines no model; define get_model() and get_inputs()"),
    "no get_inputs": (None, HEADER + "def get_model():\n    return nn.Linear(2, 2)\n",
                      "defines get_model() but no get_inputs()"),
    "get_model raises": (None, HEADER + "def get_model():\n    raise RuntimeError('CUDA needed')\n"
                               "def get_inputs():\n    return torch.ones(1)\n",
                         "{path}:get_model() raised RuntimeError: CUDA needed"),
    "not a module": (None, HEADER + "def get_model():\n    return 42\ndef get_inputs():\n    return torch.ones(1)\n",
                     "get_model() returned an int, not a torch.nn.Module"),
    "inputs not tensors": (None, HEADER + "def get_model():\n    return nn.Linear(2, 2)\n"
                                          "def get_inputs():\n    return [1.0, 2.0]\n",
                           "get_inputs() returned a float as input 0; example inputs must be tensors"),
    "inputs do not fit": (None, HEADER + "def get_model():\n    return nn.Linear(8, 2)\n"
                                         "def get_inputs():\n    return torch.randn(3, 7)\n",
                          "the example inputs of {path} do not fit the model ((3, 7) float32): RuntimeError: "
                          "mat1 and mat2 shapes cannot be multiplied (3x7 and 8x2)"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_model_files_are_one_line_errors(case, tmp_path):
    name, body, message = BAD[case]
    path = tmp_path / (name or "m.py")
    if case != "missing file":
        path.write_text(body)
    with pytest.raises(FxFusionError) as err:
        load_model(path)
    text = str(err.value)
    assert message.format(path=path) in text and "\n" not in text


@pytest.mark.parametrize("spec,message", [
    ("{path}:nope", "has no 'nope'"),
    ("{path}:CONST", "CONST is an int, not a callable"),
    ("{path}:single", "single() returned a Linear; expected (model, example_inputs)"),
])
def test_bad_named_callables_are_one_line_errors(spec, message, tmp_path):
    path = write(tmp_path, "CONST = 3\ndef single():\n    return nn.Linear(2, 2)\n")
    with pytest.raises(FxFusionError) as err:
        load_model(spec.format(path=path))
    assert message in str(err.value) and "\n" not in str(err.value)
