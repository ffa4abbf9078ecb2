"""`pagedserve preflight`: check a cluster (or, with --local, a GPU host) before `helm install`.

Exit codes: 0 all checks PASS or WARN; 1 at least one FAIL; 2 the cluster could not be read (the reason is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "preflight",
        help="check a Kubernetes cluster (or a GPU host) against pagedserve's requirements",
        description="Each check prints PASS, WARN or FAIL, what it saw, what pagedserve needs and how to fix it. "
        "Exit code 0: no FAIL; 1: some FAIL; 2: the cluster could not be reached or read.",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument(
        "--namespace", "-n", default="default", help="namespace pagedserve will be installed in"
    )
    parser.add_argument(
        "--values", help="the chart values file you will install with: decides what is checked"
    )
    parser.add_argument("--gpu-operator-namespace", default="gpu-operator")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per API request")
    parser.add_argument("--output", "-o", default="table", choices=["table", "json"])
    parser.add_argument(
        "--local", action="store_true", help="check this host instead (nvidia-smi, df, containerd)"
    )
    parser.add_argument("--storage-path", help="--local: path whose disk holds images and ephemeral storage")
    parser.set_defaults(func=run)


def _fail_to_read(args: argparse.Namespace, reason: str) -> int:
    from pagedserve.kube.report import EXIT_UNREACHABLE

    if args.output == "json":
        print(json.dumps({"exit_code": EXIT_UNREACHABLE, "error": reason, "checks": []}, indent=2))
    print(f"pagedserve preflight: cannot check the cluster: {reason}", file=sys.stderr)
    return EXIT_UNREACHABLE


def run(args: argparse.Namespace) -> int:
    from pagedserve.kube.chart_values import load_needs
    from pagedserve.kube.cluster import ClusterAccessError
    from pagedserve.kube.report import exit_code, render_json, render_table

    try:
        needs = load_needs(args.values)
    except ValueError as exc:
        print(f"pagedserve preflight: {exc}", file=sys.stderr)
        return 2
    if args.local:
        from pagedserve.kube.local_host import run_local_preflight

        results = run_local_preflight(needs, args.storage_path)
        context: dict[str, object] = {"target": "local host", "values": needs.source}
    else:
        from pagedserve.kube.preflight import run_cluster_preflight

        try:
            snapshot, results = run_cluster_preflight(
                args.kubeconfig,
                args.context,
                args.namespace,
                args.gpu_operator_namespace,
                needs,
                args.timeout,
            )
        except ClusterAccessError as exc:
            return _fail_to_read(args, str(exc))
        context = {"target": snapshot.server, "namespace": args.namespace, "values": needs.source}
    if args.output == "json":
        print(render_json(results, context))
    else:
        print(
            f"pagedserve preflight: {context['target']}"
            + (f" (values {needs.source})" if needs.source else "")
        )
        print(render_table(results))
    return exit_code(results)
