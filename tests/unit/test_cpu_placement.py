"""VLLM_CPU_OMP_THREADS_BIND and VLLM_CPU_NUM_OF_RESERVED_CPU, as vLLM's CPU backend reads them: the parsing, the
checks made before any rank starts, and a real binding in a child process (the test process keeps its mask)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pagedserve import cpu_placement
from pagedserve.cpu_placement import check_binding, default_cpu_threads, parse_cpu_list, rank_cpu_lists
from pagedserve.cpu_quota import usable_cpus

ALLOWED = sorted(os.sched_getaffinity(0))


def test_cpu_lists_take_numbers_and_ranges() -> None:
    assert parse_cpu_list("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_cpu_list(" 5 ") == [5]
    assert rank_cpu_lists("0-1|2,3") == [[0, 1], [2, 3]]
    for unpinned in ("auto", "nobind", "all", "AUTO"):
        assert rank_cpu_lists(unpinned) is None


@pytest.mark.parametrize("bad", ["", "a", "3-1", "0-", "-2", "0,,1", "1,1", "0-2,2", "0||1"])
def test_a_malformed_list_names_the_variable(bad: str) -> None:
    with pytest.raises(ValueError, match="VLLM_CPU_OMP_THREADS_BIND"):
        rank_cpu_lists(bad)


def test_too_few_lists_for_the_ranks_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", str(ALLOWED[0]))
    check_binding(1)
    with pytest.raises(ValueError, match="1 CPU list.*2 tensor-parallel ranks"):
        check_binding(2)


def test_a_cpu_outside_the_affinity_mask_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", f"{ALLOWED[0]}|{max(ALLOWED) + 1}")
    with pytest.raises(ValueError, match=rf"rank 1's list names CPU\(s\) \[{max(ALLOWED) + 1}\]"):
        check_binding(2)
    check_binding(1)  # only this node's ranks' lists count


def test_unpinned_threads_share_the_usable_cpus_less_the_reserved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    usable = usable_cpus()
    assert default_cpu_threads(1) == usable
    assert default_cpu_threads(2) == max(1, usable // 2)
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")
    assert default_cpu_threads(1) == max(1, usable - 1)
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", str(usable + 5))
    assert default_cpu_threads(1) == 1  # never none
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "-1")
    with pytest.raises(ValueError, match="VLLM_CPU_NUM_OF_RESERVED_CPU"):
        default_cpu_threads(1)


CHILD = """
import json, os, sys
import torch
from pagedserve.cpu_placement import bind_rank, default_cpu_threads
torch.ones(256, 256) @ torch.ones(256, 256)  # an OpenMP team exists before the binding, as in an in-process engine
cpus = bind_rank(int(sys.argv[1]))
torch.set_num_threads(default_cpu_threads(1))
torch.ones(512, 512) @ torch.ones(512, 512)
masks = {}
for tid in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{tid}/status") as status:
        masks[tid] = next(line.split()[1] for line in status if line.startswith("Cpus_allowed_list"))
print(json.dumps({"cpus": cpus, "threads": torch.get_num_threads(), "masks": sorted(set(masks.values()))}))
"""


def test_a_rank_binds_every_thread_to_its_list_and_runs_one_thread_per_cpu() -> None:
    last = ALLOWED[-1]
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": f"{ALLOWED[0]}|{last}"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "1"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {"cpus": [last], "threads": 1, "masks": [str(last)]}


def test_unpinned_leaves_the_mask_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    before = os.sched_getaffinity(0)
    assert cpu_placement.bind_rank(0) is None
    assert os.sched_getaffinity(0) == before
