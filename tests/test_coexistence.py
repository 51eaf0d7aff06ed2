"""An installed ragtune coexists with other packages named core, serving, retrieval, training or
evaluation.

A clean virtual environment gets such a package first (all five names), then ragtune built as a
wheel, both installed by pip. Its dependencies come from this environment's site-packages as a
plain path (its .pth files, the editable install among them, are not run), and nothing runs
from the repository's folder, so only what pip installed can be imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NAMES = ("core", "serving", "retrieval", "training", "evaluation")


def clean_env() -> dict[str, str]:
    """The environment without a PYTHONPATH (a checkout on it would count as installed)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def pip(*args: str | Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_env(),
    )
    assert r.returncode == 0, r.stdout + r.stderr


def other_project(root: Path) -> Path:
    """A project that owns the five generic names, as some other distribution might."""
    root.mkdir()
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"
            [project]
            name = "generic-names"
            version = "1.0"
            [tool.setuptools]
            packages = ["core", "serving", "retrieval", "training", "evaluation"]
            """
        )
    )
    for name in NAMES:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"OWNER = 'generic-names'\nNAME = {name!r}\n")
    return root


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("coexist")
    env_dir = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env_dir], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    # First the other package, then ragtune, each from a wheel built here (no index needed).
    wheels = tmp / "wheels"
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", wheels, other_project(tmp / "other"))
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", wheels, REPO)
    (other,) = wheels.glob("generic_names-*.whl")
    (ours,) = wheels.glob("ragtune-*.whl")
    pip("--python", python, "install", "--no-deps", "--no-index", other)
    pip("--python", python, "install", "--no-deps", "--no-index", ours)
    # ragtune's dependencies, from this environment, as a plain path: its .pth files do not run.
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "zz-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir


def run(env_dir: Path, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = list(map(str, args))
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=clean_env(), timeout=300)


def test_both_import_from_where_pip_put_them(venv: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import core, serving, retrieval, training, evaluation
        import ragtune.serving.app, ragtune.retrieval.collection, ragtune.training.train
        import ragtune.core.errors, ragtune.evaluation.cli
        for m in (core, serving, retrieval, training, evaluation):
            print(m.OWNER, m.NAME)
        print(ragtune.serving.app.__file__)
        print(ragtune.training.train.__file__)
        print(ragtune.evaluation.cli.__file__)
        """
    )
    r = run(venv, venv / "bin" / "python", "-c", code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:5] == [f"generic-names {name}" for name in NAMES]
    for path in lines[5:]:
        assert Path(path).is_relative_to(venv), path  # the installed copy, not the repository's


def test_the_command_works_beside_them(venv: Path, tmp_path: Path) -> None:
    r = run(venv, venv / "bin" / "ragtune", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for command in ("serve", "ingest", "train", "models", "eval"):
        assert command in r.stdout
    r = run(venv, venv / "bin" / "ragtune", "models", "available", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "smollm2-135m-instruct" in r.stdout
    r = run(venv, venv / "bin" / "python", "-m", "ragtune", "collections", "list", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
