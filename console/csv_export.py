"""`ctrl+s`: the table on screen (filtered and sorted as shown) as a CSV file, in
`$INFERMESH_HOME` when it is set, else in the current directory."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path


def export_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    home = env.get("INFERMESH_HOME")
    return Path(home).expanduser() if home else Path.cwd()


def export_path(view: str, now: datetime, directory: Path) -> Path:
    """`infermesh-nodes-20261122-104207.csv`, with `-2`, `-3`... when that name is taken."""
    stem = f"infermesh-{view}-{now:%Y%m%d-%H%M%S}"
    path, n = directory / f"{stem}.csv", 1
    while path.exists():
        n += 1
        path = directory / f"{stem}-{n}.csv"
    return path


def write_csv(path: Path, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(headers)
        writer.writerows(rows)
    return path
