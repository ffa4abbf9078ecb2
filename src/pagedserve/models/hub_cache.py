"""Find a Hugging Face Hub model id (`org/name`) in a local Hub cache, as vLLM does offline (HF_HUB_OFFLINE=1).

A claim filled by `huggingface-cli download`, or by a vLLM pod (its --download-dir or HF_HOME), holds the Hub's cache
layout: `models--org--name/refs/<branch>` names a commit, `models--org--name/snapshots/<commit>/` holds the files
(links into `blobs/`). pagedserve reads that layout and never downloads, so a vLLM manifest that serves
`org/name` from such a claim works unchanged. Pure path logic: no network, no torch.
"""

from __future__ import annotations

import pathlib
import re

from pagedserve import envs

# The Hub's repo ids: one optional namespace and a name, letters, digits, "-", "_", ".".
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def looks_like_repo_id(value: str) -> bool:
    """Whether `value` could be a Hub repo id (and is not a path someone meant literally)."""
    return bool(_REPO_ID.fullmatch(value)) and ".." not in value and not value.endswith((".gguf", "/"))


def cache_dirs(download_dir: str | None) -> list[pathlib.Path]:
    """--download-dir (vLLM's flag: the Hub cache folder), else the Hub's own choice (envs.hf_hub_cache_dirs)."""
    return [pathlib.Path(download_dir).expanduser()] if download_dir else envs.hf_hub_cache_dirs()


def _repo_folder(cache: pathlib.Path, repo_id: str) -> pathlib.Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def find_snapshot(repo_id: str, revision: str | None, download_dir: str | None) -> pathlib.Path | None:
    """The cached snapshot folder of `repo_id` at `revision` (a branch or tag the cache has a ref for, or a
    commit hash; default main) in the first cache folder that holds it, or None."""
    for cache in cache_dirs(download_dir):
        try:
            snapshot = _snapshot_in(_repo_folder(cache, repo_id), revision or "main")
        except PermissionError:  # e.g. /root of vLLM's image, unreadable for a non-root user
            snapshot = None
        if snapshot is not None:
            return snapshot
    return None


def _snapshot_in(repo: pathlib.Path, wanted: str) -> pathlib.Path | None:
    ref = repo / "refs" / wanted
    if ref.is_file():
        commit = ref.read_text().strip()
    elif _COMMIT.fullmatch(wanted):
        commit = wanted
    else:
        return None
    snapshot = repo / "snapshots" / commit
    return snapshot if _COMMIT.fullmatch(commit) and snapshot.is_dir() else None


def describe_search(repo_id: str, revision: str | None, download_dir: str | None) -> str:
    """Where find_snapshot looked, for the error that says it found nothing."""
    folders = " and ".join(str(_repo_folder(cache, repo_id)) for cache in cache_dirs(download_dir))
    return f"revision {revision or 'main'} in the Hugging Face cache {folders}"
