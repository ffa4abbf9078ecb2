"""The loaded model's CPU weights re-homed in one block asked for in 2 MB pages (worker/huge_pages.py): values,
dtypes, views and tied weights kept; the block advised for huge pages (the VMA's `hg` flag, what we control: the
kernel grants the pages); nothing moved where the system gives none; an engine's model lives there."""

from __future__ import annotations

import gguf
import pytest
import torch
from tiny_gguf_writer import write_tiny_gguf
from torch import nn

from pagedserve import LLM, SamplingParams
from pagedserve.worker import huge_pages


def mapping_of(address: int) -> dict[str, str]:
    """The /proc/self/smaps entry holding `address`: its fields, and 'range'."""
    entry: dict[str, str] = {}
    found = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                if found:
                    break
                start, end = (int(part, 16) for part in head.split("-"))
                found = start <= address < end
                entry = {"range": head}
            elif found:
                key, _, value = line.partition(":")
                entry[key] = value.strip()
    assert found, f"no mapping holds {address:#x}"
    return entry


class Tied(nn.Module):
    """Shapes of what models hold: a matrix past 2 MB, a tied weight (one Parameter in two modules), a buffer
    that is a view of another, one buffer in two modules, float16 of an odd size, an empty buffer, no bias."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 768)
        self.head = nn.Linear(768, 1000, bias=False)
        self.head.weight = self.embed.weight
        self.proj = nn.Linear(768, 768)
        self.register_buffer("table", torch.arange(20000, dtype=torch.float32))
        self.register_buffer("window", self.table[100:300])
        self.register_buffer("odd", torch.randn(7, 3).half())
        self.register_buffer("empty", torch.empty(0))
        self.inner = nn.Module()
        self.inner.register_buffer("shared", self.odd)


def test_weights_move_with_their_values_views_and_ties(monkeypatch, tmp_path) -> None:
    if huge_pages.huge_pages_mode() == "never":  # this system's choice: the move is still what it would do
        (tmp_path / "enabled").write_text("always [madvise] never\n")
        monkeypatch.setattr(huge_pages, "THP_SETTING", tmp_path / "enabled")
    torch.manual_seed(0)
    model = Tied()
    before = {name: tensor.clone() for name, tensor in model.state_dict(keep_vars=False).items()}
    x = torch.randn(3, 768)
    expected = model.head(model.proj(x))
    moved = huge_pages.move_weights_to_huge_pages(model)
    assert moved >= model.embed.weight.nbytes + model.proj.weight.nbytes + model.table.nbytes
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == before[name].dtype and torch.equal(tensor, before[name]), name
    assert model.head.weight is model.embed.weight  # still one Parameter
    assert isinstance(model.proj.weight, nn.Parameter) and model.proj.bias is not None
    assert model.inner.shared is model.odd
    model.table[150] = -1.0  # the view still shares its base's storage
    assert model.window[50] == -1.0
    torch.testing.assert_close(model.head(model.proj(x)), expected)
    starts = [t.data_ptr() for t in (model.embed.weight, model.proj.weight, model.table)]
    block = {mapping_of(start)["range"] for start in starts}
    assert len(block) == 1  # one block
    assert min(starts) % huge_pages.HUGE_PAGE == 0  # its first storage starts a 2 MB page
    assert all(start % huge_pages.ALIGN == 0 for start in starts)
    assert "hg" in mapping_of(starts[0])["VmFlags"].split()  # advised for huge pages


def test_nothing_moves_where_the_system_gives_no_huge_pages(monkeypatch, tmp_path) -> None:
    (tmp_path / "enabled").write_text("always madvise [never]\n")
    monkeypatch.setattr(huge_pages, "THP_SETTING", tmp_path / "enabled")
    model = Tied()
    address = model.proj.weight.data_ptr()
    assert huge_pages.huge_pages_mode() == "never"
    assert huge_pages.move_weights_to_huge_pages(model) == 0
    assert model.proj.weight.data_ptr() == address
    monkeypatch.setattr(huge_pages, "THP_SETTING", tmp_path / "missing")
    assert huge_pages.huge_pages_mode() == "never"


@pytest.mark.parametrize(
    "setting,mode", [("[always] madvise never", "always"), ("always [madvise] never", "madvise")]
)
def test_the_mode_is_read_from_the_kernel_setting(monkeypatch, tmp_path, setting, mode) -> None:
    (tmp_path / "enabled").write_text(setting + "\n")
    monkeypatch.setattr(huge_pages, "THP_SETTING", tmp_path / "enabled")
    assert huge_pages.huge_pages_mode() == mode


def test_an_engine_serves_from_weights_in_huge_pages(monkeypatch, tmp_path) -> None:
    """The engine's model runner moves a loaded GGUF model (its blocks regrouped first) before its first step;
    tokens and logprobs equal an engine's whose weights stayed where PyTorch put them (the same kernels on the
    same bytes). Where this system gives no huge pages, nothing moves."""
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", tensor_type=gguf.GGMLQuantizationType.Q4_0)
    engine = dict(quantization="gguf", dtype="float32", max_model_len=64, kv_cache_memory_bytes=2**22, seed=0)
    params = [
        SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2),
        SamplingParams(temperature=0.8, seed=3, max_tokens=6, ignore_eos=True, logprobs=2),
    ]
    prompts = ["hello world", "the quick brown fox"]

    def run(llm: LLM) -> list:
        try:
            outputs = llm.generate(prompts, params, use_tqdm=False)
        finally:
            llm.llm_engine.shutdown()
        return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outputs]

    moved = LLM(str(tiny.path), **engine)
    runner = moved.llm_engine.executor.runner
    weights = list(runner.model.parameters())
    if huge_pages.huge_pages_mode() == "never":
        assert runner.huge_page_bytes == 0
    else:
        assert runner.huge_page_bytes >= sum(p.nbytes for p in weights)
        assert len({mapping_of(p.data_ptr())["range"] for p in weights}) == 1  # one block for all
    got = run(moved)
    monkeypatch.setattr(huge_pages, "huge_pages_mode", lambda: "never")
    kept = LLM(str(tiny.path), **engine)
    assert kept.llm_engine.executor.runner.huge_page_bytes == 0
    assert got == run(kept)
