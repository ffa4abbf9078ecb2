"""Write a model folder into a Hugging Face Hub cache the way huggingface_hub lays it out (used by the tests):
`models--org--name/blobs/<sha256>` files, `snapshots/<commit>/<file>` relative links to them, `refs/<branch>`."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil


def add_snapshot(
    cache: pathlib.Path, repo_id: str, folder: pathlib.Path, commit: str, refs: tuple[str, ...] = ()
) -> pathlib.Path:
    """Put every file of `folder` in the cache as `repo_id` at `commit`, point each ref at it; the snapshot path."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    for source in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        blob = blobs / digest
        if not blob.exists():
            shutil.copyfile(source, blob)
        link = snapshot / source.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot
