"""Hub ids found in a local Hugging Face cache (models/hub_cache.py), checked against huggingface_hub's own
offline lookup on the same on-disk layout."""

from __future__ import annotations

import pathlib

import pytest
import transformers
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from tests.hub_cache_writer import add_snapshot

from pagedserve import envs
from pagedserve.models import hub_cache
from pagedserve.models.loader import _local_path

MAIN = "a" * 40
OLD = "b" * 40


@pytest.fixture()
def cache(tmp_path: pathlib.Path) -> pathlib.Path:
    for text in ("main", "old"):
        folder = tmp_path / f"src-{text}"
        folder.mkdir()
        (folder / "config.json").write_text(f'{{"which": "{text}"}}')
    root = tmp_path / "hub"
    add_snapshot(root, "org/tiny", tmp_path / "src-main", MAIN, refs=("main",))
    add_snapshot(root, "org/tiny", tmp_path / "src-old", OLD, refs=("v1",))
    return root


@pytest.mark.parametrize("revision", [None, "main", "v1", MAIN, OLD])
def test_find_snapshot_agrees_with_huggingface_hub(cache, revision):
    ours = hub_cache.find_snapshot("org/tiny", revision, str(cache))
    theirs = snapshot_download("org/tiny", revision=revision, cache_dir=str(cache), local_files_only=True)
    assert ours == pathlib.Path(theirs)
    expected = "old" if revision in ("v1", OLD) else "main"
    assert f'"{expected}"' in (ours / "config.json").read_text()


@pytest.mark.parametrize(
    ("repo_id", "revision"), [("org/tiny", "v2"), ("org/other", None), ("org/tiny", "c" * 40)]
)
def test_what_the_cache_lacks_is_none_as_for_huggingface_hub(cache, repo_id, revision):
    assert hub_cache.find_snapshot(repo_id, revision, str(cache)) is None
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download(repo_id, revision=revision, cache_dir=str(cache), local_files_only=True)


def test_cache_folder_follows_huggingface_hub_variables(monkeypatch, tmp_path):
    for name in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    image = envs.VLLM_IMAGE_HUB_CACHE  # with no variable set, vLLM's image's cache is looked in too
    assert envs.hf_hub_cache_dirs() == [tmp_path / "home" / ".cache" / "huggingface" / "hub", image]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert envs.hf_hub_cache_dirs() == [tmp_path / "xdg" / "huggingface" / "hub", image]
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert envs.hf_hub_cache_dirs() == [tmp_path / "hf" / "hub"]
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert envs.hf_hub_cache_dirs() == [tmp_path / "cache"]
    assert hub_cache.cache_dirs(None) == [tmp_path / "cache"]
    assert hub_cache.cache_dirs(str(tmp_path / "dl")) == [tmp_path / "dl"]  # --download-dir wins


def test_a_claim_mounted_where_vllms_image_keeps_its_cache_is_found(monkeypatch, cache, tmp_path):
    """vLLM's Kubernetes examples mount the claim at /root/.cache/huggingface (its image runs as root)."""
    for name in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    monkeypatch.setattr(envs, "VLLM_IMAGE_HUB_CACHE", cache)
    assert _local_path("org/tiny", "model") == cache / "models--org--tiny" / "snapshots" / MAIN
    with pytest.raises(FileNotFoundError, match=r"empty-home/\.cache/huggingface/hub/models--org--gone and .*"
                       r"models--org--gone"):  # fmt: skip
        _local_path("org/gone", "model")


def test_the_variable_finds_the_model_without_download_dir(monkeypatch, cache):
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert _local_path("org/tiny", "model") == cache / "models--org--tiny" / "snapshots" / MAIN


@pytest.mark.parametrize(
    ("value", "expected"),
    [("org/name", True), ("gpt2", True), ("Qwen/Qwen2.5-0.5B-Instruct", True), ("a/b/c", False),
     ("/abs/path", False), ("./rel", False), ("../up/x", False), ("org/model.gguf", False), ("org/", False)],
)  # fmt: skip
def test_looks_like_repo_id(value, expected):
    assert hub_cache.looks_like_repo_id(value) is expected


def test_a_local_path_wins_over_the_cache(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "tiny").mkdir(parents=True)
    assert _local_path("org/tiny", "model", None, str(cache)) == tmp_path / "org" / "tiny"


def test_errors_say_where_they_looked(cache):
    with pytest.raises(FileNotFoundError, match=r"revision v2 in the Hugging Face cache .*models--org--tiny"):
        _local_path("org/tiny", "model", "v2", str(cache))
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        _local_path("org/absent", "tokenizer", None, str(cache))
    with pytest.raises(FileNotFoundError, match="'/no/such/folder' does not exist"):
        _local_path("/no/such/folder", "model", None, str(cache))


def test_model_and_tokenizer_revisions_reach_the_loader(tmp_path):
    """--revision picks the model's snapshot, --tokenizer-revision the tokenizer's (vLLM's default: --revision)."""
    from tests.unit.models.test_model_hf_folder import save_model, save_word_tokenizer, tiny_llama_config

    from pagedserve.config import EngineConfig
    from pagedserve.engine.input_processor import load_tokenizer_for
    from pagedserve.model_config import ModelConfig

    model_dir, tokenizer_dir = tmp_path / "model", tmp_path / "tok"
    save_model(model_dir, transformers.LlamaForCausalLM(tiny_llama_config()))
    save_word_tokenizer(tokenizer_dir)
    cache = tmp_path / "hub"
    add_snapshot(cache, "org/llama", model_dir, OLD, refs=("v1",))
    add_snapshot(cache, "org/words", tokenizer_dir, MAIN, refs=("v2",))
    config = ModelConfig(model="org/llama", revision="v1", tokenizer="org/words", tokenizer_revision="v2",
                         download_dir=str(cache))  # fmt: skip
    tokenizer, source = load_tokenizer_for(EngineConfig(model=config))
    assert source.path == cache / "models--org--llama" / "snapshots" / OLD and source.name == "llama"
    assert tokenizer.encode("world", add_special_tokens=False) == [4]
    with pytest.raises(FileNotFoundError, match="revision v1 in the Hugging Face cache .*models--org--words"):
        load_tokenizer_for(EngineConfig(model=ModelConfig(**{**vars(config), "tokenizer_revision": None})))
