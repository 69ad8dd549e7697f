"""The operator files of cluster/: what `ray job submit --working-dir .` uploads with them.

The upload is built here by Ray's own packer (the function `ray job submit` calls), over a copy of
the repository's tracked files plus the local clutter a checkout accumulates, so the test sees
exactly what a cluster would receive.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from zipfile import ZipFile

import yaml
from ray._private.runtime_env.packaging import create_package

REPO = Path(__file__).resolve().parents[1]
CLUTTER = [  # what a working checkout holds besides its tracked files; none of it may travel
    ".git/HEAD",
    ".venv/lib/python3.11/site-packages/torch/__init__.py",
    "itstudy-runs/mlflow.db",
    ".itstudy-cache/tasks/task001.json",
    "data/superni/tasks/task001.json",
    "mlruns/0/meta.yaml",
    "itstudy/data/__pycache__/superni.cpython-311.pyc",
    "itstudy.egg-info/PKG-INFO",
    "outputs/model.safetensors",
]


def _tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [name for name in listed.splitlines() if (REPO / name).is_file()]


def _uploaded(tmp_path: Path) -> set[str]:
    """The file names of the working_dir package Ray builds from a cluttered copy of the repository."""
    checkout = tmp_path / "checkout"
    for name in _tracked_files() + CLUTTER:
        target = checkout / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_file():
            shutil.copy(REPO / name, target)
        else:
            target.write_text("clutter")
    excludes = yaml.safe_load((REPO / "cluster/runtime_env.yaml").read_text())["excludes"]
    package = tmp_path / "working_dir.zip"
    create_package(str(checkout), package, include_gitignore=True, excludes=excludes)
    return {name for name in ZipFile(package).namelist() if not name.endswith("/")}


def test_the_upload_holds_every_file_the_package_needs_and_no_local_state(tmp_path):
    uploaded = _uploaded(tmp_path)
    needed = [
        name
        for name in _tracked_files()
        if name.startswith(("itstudy/", "dashboards/", "experiments/")) or name in ("pyproject.toml", "constraints.txt")
    ]
    assert "itstudy/data/superni.py" in needed and "dashboards/templates/report.html.j2" in needed
    assert "itstudy/training/superni_lengths.json" in needed  # package data, not only modules
    missing = sorted(set(needed) - uploaded)
    assert not missing, f"cluster/runtime_env.yaml leaves out files the job needs: {missing}"
    leaked = sorted(name for name in uploaded if name in CLUTTER)
    assert not leaked, f"the upload carries local state: {leaked}"
