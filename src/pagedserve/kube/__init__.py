"""Cluster pre-flight checks and GPU capacity planning (`pagedserve preflight`, `pagedserve plan`).

Nothing here imports engine code or torch: these run on an operator's laptop before `helm install`.
"""
