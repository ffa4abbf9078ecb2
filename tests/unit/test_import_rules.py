"""The import directions of DEVELOPERS.md, checked on the source's AST."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "pagedserve"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def package_files(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in package_files(package):
        for name in imports_of(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(SRC)} imports {name}")
    return found


def test_core_is_pure_python():
    assert (
        offenders(
            "core",
            (
                "torch",
                "numpy",
                "transformers",
                "pagedserve.worker",
                "pagedserve.models",
                "pagedserve.distributed",
            ),
        )
        == []
    )


def test_distributed_depends_on_torch_only():
    """Layers call the collectives; the group knows nothing of layers, models, workers or the engine."""
    forbidden = ("pagedserve.engine", "pagedserve.core", "pagedserve.worker", "pagedserve.server",
                 "pagedserve.models", "pagedserve.layers", "pagedserve.attention", "pagedserve.sample")  # fmt: skip
    assert offenders("distributed", forbidden) == []


def test_no_pickle_between_processes():
    """Tensor-parallel messages are msgspec structs (worker/tp_messages.py): no module unpickles what it receives."""
    found = [f"{path.relative_to(SRC)}" for path in SRC.rglob("*.py") if "pickle" in imports_of(path)]
    assert found == []


def test_server_only_talks_to_the_engine_client():
    forbidden = ("pagedserve.worker", "pagedserve.models", "pagedserve.layers", "pagedserve.attention",
                 "pagedserve.sample", "pagedserve.engine.llm_engine", "pagedserve.engine.core",
                 "pagedserve.engine.core_proc", "pagedserve.distributed", "torch")  # fmt: skip
    assert offenders("server", forbidden) == []


def test_the_engine_front_end_runs_no_model_code():
    """The API server process keeps the front end only: no torch, no runner, no scheduler in these modules."""
    front_end = ("core_client", "core_messages", "input_processor", "output_processor", "request_state",
                 "streams", "detokenizer", "prompts", "chat", "protocol")  # fmt: skip
    forbidden = ("torch", "pagedserve.worker", "pagedserve.core.scheduler", "pagedserve.engine.core",
                 "pagedserve.engine.llm_engine", "pagedserve.layers", "pagedserve.distributed")  # fmt: skip
    found = []
    for name in front_end:
        path = SRC / "engine" / f"{name}.py"
        found += [f"engine/{name}.py imports {n}" for n in imports_of(path)
                  if any(n == f or n.startswith(f + ".") for f in forbidden)]  # fmt: skip
    assert found == []


def test_models_depend_on_layers_and_attention_only():
    forbidden = ("pagedserve.engine", "pagedserve.core", "pagedserve.worker", "pagedserve.server")
    assert offenders("models", forbidden) == []
    assert offenders("layers", forbidden + ("pagedserve.models",)) == []
    assert offenders("attention", forbidden + ("pagedserve.models",)) == []


def test_kernels_depend_on_torch_only():
    forbidden = ("pagedserve.engine", "pagedserve.core", "pagedserve.worker", "pagedserve.server",
                 "pagedserve.models", "pagedserve.layers", "pagedserve.attention")  # fmt: skip
    assert offenders("ops", forbidden) == []


def test_nothing_imports_the_cli():
    found = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "cli":
            continue
        found += [
            f"{path.relative_to(SRC)} imports {n}" for n in imports_of(path) if n.startswith("pagedserve.cli")
        ]
    assert found == []


def test_kube_imports_no_engine():
    forbidden = ("torch", "pagedserve.engine", "pagedserve.worker", "pagedserve.models", "pagedserve.core")
    assert offenders("kube", forbidden) == []


def test_gpu_only_libraries_stay_in_attention_backends():
    found = []
    for path in SRC.rglob("*.py"):
        if "backends" in path.parts:
            continue
        found += [
            f"{path.relative_to(SRC)}: {n}"
            for n in imports_of(path)
            if n.split(".")[0] in {"triton", "flash_attn"}
        ]
    assert found == []


def test_benchmark_client_stays_outside_the_engine():
    forbidden = ("pagedserve.server", "pagedserve.worker", "pagedserve.models", "pagedserve.core.scheduler",
                 "pagedserve.attention", "pagedserve.layers")  # fmt: skip
    assert offenders("benchmark", forbidden) == []
    found = []
    for path in SRC.rglob("*.py"):
        if path.parent.name in ("cli", "benchmark"):
            continue
        found += [
            f"{path.relative_to(SRC)}" for n in imports_of(path) if n.startswith("pagedserve.benchmark")
        ]
    assert found == []
