"""Regenerate deploy/manifests/pagedserve.yaml from the chart's default values.

    .venv/bin/python -m tests.deploy.render_manifests

tests/deploy/test_manifests.py fails when the committed file drifts from what this writes.
"""

from __future__ import annotations

from tests.deploy.chart import MANIFESTS_FILE, render_text

HEADER = """\
# Plain manifests for kubectl users, rendered from deploy/helm/pagedserve with its default values
# (GPU mode, the image's bundled model). Do not edit: change the chart and regenerate with
#   .venv/bin/python -m tests.deploy.render_manifests
# Apply into a namespace of your choice:  kubectl apply -n <namespace> -f deploy/manifests/pagedserve.yaml
"""


def rendered_manifests() -> str:
    # No namespace in the objects (the chart sets none), and no helm test pod: kubectl has no `helm test`.
    return HEADER + render_text(skip_tests=True)


def main() -> None:
    MANIFESTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    MANIFESTS_FILE.write_text(rendered_manifests())
    print(f"wrote {MANIFESTS_FILE}")


if __name__ == "__main__":
    main()
