"""Shared by the benchmarks that write a model-shaped GGUF with random weights and race it against llama.cpp
(moe_single_stream.py, gemma3_single_stream.py): the bundled SmolLM2's tokenizer and chat template in the file, and
the interleaved rounds of single-stream decode (gguf_single_stream.measure) on whatever systems are given."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gguf_single_stream import measure, print_table  # noqa: E402
from peers.servers import CACHE, ServerSpec, free_port, missing_reason  # noqa: E402

from pagedserve.cpu_info import cpu_info  # noqa: E402
from pagedserve.models.bundled import bundled_model_path  # noqa: E402
from pagedserve.models.gguf_metadata import field_value  # noqa: E402
from pagedserve.models.loader import open_gguf  # noqa: E402


def add_bundled_tokenizer(writer: gguf.GGUFWriter) -> int:
    """Writes the bundled model's byte-level vocabulary, merges, special ids and chat template; returns its size."""
    bundled = open_gguf(bundled_model_path())
    tokens = field_value(bundled, "tokenizer.ggml.tokens")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(field_value(bundled, "tokenizer.ggml.pre") or "default")
    writer.add_token_list(tokens)
    writer.add_token_types(field_value(bundled, "tokenizer.ggml.token_type"))
    writer.add_token_merges(field_value(bundled, "tokenizer.ggml.merges"))
    writer.add_bos_token_id(field_value(bundled, "tokenizer.ggml.bos_token_id"))
    writer.add_eos_token_id(field_value(bundled, "tokenizer.ggml.eos_token_id"))
    writer.add_chat_template(field_value(bundled, "tokenizer.chat_template"))
    return len(tokens)


K_QUANT_SCALES = {gguf.GGMLQuantizationType.Q4_K: (0, 4), gguf.GGMLQuantizationType.Q6_K: (208, 2)}
"""K-quant type -> (offset, bytes) of its float16 scales in a super-block (d and dmin for Q4_K, d for Q6_K)."""


def random_k_quant(
    rng: np.random.Generator, shape: tuple[int, ...], kind: gguf.GGMLQuantizationType
) -> np.ndarray:
    """Random K-quant super-blocks (the gguf package cannot write them): random bytes, float16 scales small and
    finite. The values are noise; decode speed does not depend on them."""
    rows, cols = shape
    size = gguf.GGML_QUANT_SIZES[kind][1]
    raw = rng.integers(0, 256, (rows, cols // 256, size), dtype=np.uint8)
    at, nbytes = K_QUANT_SCALES[kind]
    halves = rng.uniform(0.0, 1e-3, (rows, cols // 256, nbytes // 2)).astype(np.float16)
    raw[..., at : at + nbytes] = halves.view(np.uint8)
    return raw.reshape(rows, -1)


def random_tensor_writer(writer: gguf.GGUFWriter, seed: int = 0) -> Callable[..., None]:
    """add(name, *shape, kind=Q4_0): a tensor of normal(0, 0.02) values in GGML type `kind` (random super-blocks
    for the K-quants); F32 vectors are norm weights, written as 1 + that (what llama.cpp's converters store for
    Gemma, and near a trained norm's values)."""
    rng = np.random.default_rng(seed)

    def add(name: str, *shape: int, kind: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.Q4_0) -> None:
        if kind in K_QUANT_SCALES:
            writer.add_tensor(name, random_k_quant(rng, shape, kind), raw_dtype=kind)
            return
        values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        if kind == gguf.GGMLQuantizationType.F32:
            values += 1 if len(shape) == 1 else 0
            writer.add_tensor(name, values, raw_dtype=kind)
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)

    return add


def write_out(writer: gguf.GGUFWriter) -> None:
    """Header, metadata and tensors to the file, and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def cached_model(name: str, write: Callable[[Path], None]) -> Path:
    """.bench-cache/name, written once by `write` (through a partial file, so an interrupted write is redone)."""
    path = CACHE / name
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        partial = path.with_suffix(".partial")
        write(partial)
        partial.rename(path)
    print(f"model: {path} ({path.stat().st_size / 1e9:.2f} GB)", flush=True)
    return path


def run_rounds(
    systems: dict[str, Callable[[int], ServerSpec]], rounds: int, output_len: int, concurrency: int = 1
) -> dict[str, list[float]]:
    """Tok/s of each system in each round (gguf_single_stream.measure), systems interleaved within a round, one
    server at a time."""
    numbers: dict[str, list[float]] = {name: [] for name in systems}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            for name, make in systems.items():
                port = free_port()
                numbers[name].append(measure(make(port), port, output_len, Path(tmp), concurrency))
                print(
                    f"[{time.strftime('%H:%M:%S')}] round {round_ + 1} {name}: {numbers[name][-1]:.1f} tok/s",
                    flush=True,
                )
    return numbers


def compare(
    systems: dict[str, Callable[[int], ServerSpec]],
    rounds: int,
    output_len: int,
    what: str,
    concurrency: int = 1,
) -> None:
    """Runs the systems (llama.cpp dropped, and said so, when it is not built) and prints the table."""
    if "llama.cpp" in systems and (missing := missing_reason("llamacpp")):
        print(f"llama.cpp: missing: {missing}")
        systems = {name: make for name, make in systems.items() if name != "llama.cpp"}
    numbers = run_rounds(systems, rounds, output_len, concurrency)
    print(f"\nCPU: {cpu_info().describe()}; {what}")
    print_table(numbers, "decode tok/s" if concurrency == 1 else f"output tok/s, {concurrency} streams")
