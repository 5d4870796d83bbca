"""The official code the parity tools compare against, taken from a git repository.

Nothing of it is copied into this repository: each run extracts it into a temporary folder."""
from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path


def extract_commit(repo: str, commit: str, dest: Path) -> Path:
    """Extract the tree of ``commit`` of the git repository ``repo`` (``git archive``) into the
    new folder ``dest/official``, and return that folder."""
    source = dest / "official"
    source.mkdir()
    archive = subprocess.run(["git", "-C", repo, "archive", commit], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    return source
