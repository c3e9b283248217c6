"""`pip install .` (not only editable) must ship every folder as a subpackage of `infermesh`."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = set()
    for package, folder in tool["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_the_wheel_holds_the_subpackages(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    wheel = next(tmp_path.glob("infermesh-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "infermesh/store/api/server.py",
        "infermesh/store/etcd.py",
        "infermesh/model/registry.py",
        "infermesh/cli/__init__.py",
        "infermesh/router/__init__.py",
        "infermesh/console/__init__.py",
    ):
        assert module in names
    assert not any(n.startswith(("store/", "tests/")) for n in names)
