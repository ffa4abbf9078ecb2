"""`pagedserve preflight --local`: the nvidia-smi and df parsers on recorded outputs, and the command end to end.

This machine has no GPU. The end-to-end tests put a small `nvidia-smi` script on PATH that prints recorded
nvidia-smi output (it stands in for the driver's tool); `df` and the CLI are real. The no-driver case runs with
a PATH that has no nvidia-smi at all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pagedserve.kube.local_host import gpu_family, parse_df, parse_gpu_query, parse_smi_header

SMI_550_H100 = """Mon Sep  2 08:14:21 2024
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|                                         |                        |               MIG M. |
|=========================================+========================+======================|
|   0  NVIDIA H100 80GB HBM3          On  |   00000000:18:00.0 Off |                    0 |
| N/A   31C    P0             71W /  700W |       0MiB /  81559MiB |      0%      Default |
|                                         |                        |             Disabled |
+-----------------------------------------+------------------------+----------------------+
|   1  NVIDIA H100 80GB HBM3          On  |   00000000:2A:00.0 Off |                    0 |
| N/A   30C    P0             69W /  700W |       0MiB /  81559MiB |      0%      Default |
|                                         |                        |             Disabled |
+-----------------------------------------+------------------------+----------------------+
"""
SMI_535_A10G_HEADER = """+---------------------------------------------------------------------------------------+
| NVIDIA-SMI 535.104.05             Driver Version: 535.104.05   CUDA Version: 12.2     |
|-----------------------------------------+----------------------+----------------------+
"""
SMI_470_HEADER = "| NVIDIA-SMI 470.182.03   Driver Version: 470.182.03   CUDA Version: 11.4     |\n"
QUERY_H100 = """index, name, memory.total [MiB], driver_version, compute_cap
0, NVIDIA H100 80GB HBM3, 81559 MiB, 550.54.15, 9.0
1, NVIDIA H100 80GB HBM3, 81559 MiB, 550.54.15, 9.0
"""
QUERY_A10G_OLD_DRIVER = """index, name, memory.total [MiB], driver_version
0, NVIDIA A10G, 23028 MiB, 535.104.05
"""
SMI_NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)
DF_NVME = """Filesystem     1024-blocks     Used Available Capacity Mounted on
/dev/nvme1n1     960303848 52812344 907491504       6% /var/lib/containerd
"""
DF_LONG_DEVICE = """Filesystem                                   1024-blocks    Used Available Capacity Mounted on
/dev/mapper/ubuntu--vg-ubuntu--lv              61611820 9427012  49022296      17% /
"""


def test_parse_gpu_query_h100() -> None:
    gpus = parse_gpu_query(QUERY_H100)
    assert [(g.index, g.name, g.memory_mib, g.driver_version) for g in gpus] == [
        (0, "NVIDIA H100 80GB HBM3", 81559, "550.54.15"),
        (1, "NVIDIA H100 80GB HBM3", 81559, "550.54.15"),
    ]
    assert gpu_family(gpus[0].compute_capability) == "hopper"


def test_parse_gpu_query_without_compute_cap() -> None:
    (gpu,) = parse_gpu_query(QUERY_A10G_OLD_DRIVER)
    assert gpu.memory_mib == 23028 and gpu.compute_capability == "" and gpu_family("") is None


def test_parse_gpu_query_rejects_other_output() -> None:
    with pytest.raises(ValueError, match="header"):
        parse_gpu_query(SMI_NO_DRIVER)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SMI_550_H100, ("550.54.15", "12.4")),
        (SMI_535_A10G_HEADER, ("535.104.05", "12.2")),
        (SMI_470_HEADER, ("470.182.03", "11.4")),
        (SMI_NO_DRIVER, (None, None)),
    ],
)
def test_parse_smi_header(text: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_smi_header(text) == expected


def test_parse_df() -> None:
    usage = parse_df(DF_NVME)
    assert usage.mount == "/var/lib/containerd" and usage.size_bytes == 960303848 * 1024
    assert usage.available_bytes == 907491504 * 1024
    assert parse_df(DF_LONG_DEVICE).filesystem == "/dev/mapper/ubuntu--vg-ubuntu--lv"
    with pytest.raises(ValueError):
        parse_df("df: /nope: No such file or directory\n")


def _fake_tools(bin_dir: Path, header: str, query: str, smi_exit: int = 0) -> None:
    """A PATH with `df` and an nvidia-smi that prints the recorded output (header, or CSV for --query-gpu)."""
    bin_dir.mkdir()
    (bin_dir / "header.txt").write_text(header)
    (bin_dir / "query.csv").write_text(query)
    script = bin_dir / "nvidia-smi"
    cat = shutil.which("cat") or "/bin/cat"  # PATH holds only this folder
    script.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --query-gpu=*) {cat} "{bin_dir}/query.csv";; *) {cat} "{bin_dir}/header.txt"; exit {smi_exit};; esac\n'
    )
    script.chmod(0o755)
    os.symlink(shutil.which("df") or "/bin/df", bin_dir / "df")


def run_local(
    bin_dir: Path, tmp_path: Path, values: dict[str, object] | None = None
) -> tuple[int, dict, str]:
    args = [
        sys.executable,
        "-m",
        "pagedserve.cli.main",
        "preflight",
        "--local",
        "--storage-path",
        str(tmp_path),
    ]
    if values is not None:
        (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
        args += ["--values", str(tmp_path / "values.yaml")]
    env = {**os.environ, "PATH": str(bin_dir)}
    done = subprocess.run([*args, "-o", "json"], capture_output=True, text=True, timeout=60, env=env)
    assert "Traceback" not in done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_local_without_nvidia_smi_says_so(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("df") or "/bin/df", bin_dir / "df")
    code, report, _ = run_local(bin_dir, tmp_path)
    assert code == 1
    driver = by_name(report)["nvidia-driver"]
    assert driver["status"] == "FAIL" and "nvidia-smi not found" in driver["observed"]
    assert "disk" in by_name(report)  # the host checks still run


def test_local_h100_host_passes_gpu_checks(tmp_path: Path) -> None:
    _fake_tools(tmp_path / "bin", SMI_550_H100, QUERY_H100)
    code, report, _ = run_local(tmp_path / "bin", tmp_path, {"engine": {"tensorParallelSize": 1}})
    checks = by_name(report)
    assert checks["engine-values"]["status"] == "PASS"
    assert checks["nvidia-driver"]["status"] == "PASS" and "CUDA 12.4" in checks["nvidia-driver"]["observed"]
    assert checks["gpus"]["status"] == "PASS" and "81559 MiB" in checks["gpus"]["observed"]
    assert checks["version-matrix"]["status"] == "PASS"
    assert checks["containerd"]["status"] == "WARN"  # not on this PATH
    assert code == (1 if checks["disk"]["status"] == "FAIL" else 0)  # tmp_path's disk is this machine's


def test_local_old_cuda_fp8_on_h100_fails_hard_rule(tmp_path: Path) -> None:
    header = SMI_550_H100.replace("CUDA Version: 12.4", "CUDA Version: 12.1")
    _fake_tools(tmp_path / "bin", header, QUERY_H100)
    code, report, _ = run_local(
        tmp_path / "bin", tmp_path, {"engine": {"tensorParallelSize": 4, "quantization": "fp8"}}
    )
    checks = by_name(report)
    assert code == 1
    assert checks["version-matrix"]["status"] == "FAIL"
    assert checks["gpus"]["status"] == "FAIL"  # 2 GPUs, tensor-parallel 4
    assert checks["engine-values"]["status"] == "FAIL"  # TP 4 on GPUs does not run on this image's engine
    assert checks["nvidia-driver"]["status"] == "WARN"


def test_local_driver_not_loaded_fails(tmp_path: Path) -> None:
    _fake_tools(tmp_path / "bin", SMI_NO_DRIVER, "", smi_exit=9)
    code, report, _ = run_local(tmp_path / "bin", tmp_path)
    assert code == 1
    assert "couldn't communicate with the NVIDIA driver" in by_name(report)["nvidia-driver"]["observed"]


def test_local_old_driver_fails(tmp_path: Path) -> None:
    _fake_tools(tmp_path / "bin", SMI_470_HEADER, QUERY_A10G_OLD_DRIVER)
    code, report, _ = run_local(tmp_path / "bin", tmp_path)
    assert code == 1
    assert by_name(report)["nvidia-driver"]["status"] == "FAIL"
