"""The context file: precedence of flags, environment and file; private mode; unknown keys."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from infermesh.context import Context, context_path, infermesh_home, load_context, write_context
from infermesh.errors import BadRequest


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("INFERMESH_HOME", str(tmp_path / "home"))
    for var in ("INFERMESH_API", "INFERMESH_TOKEN", "INFERMESH_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


def test_home_comes_from_the_environment_else_the_user_directory(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert infermesh_home() == home
    monkeypatch.delenv("INFERMESH_HOME")
    assert infermesh_home() == Path.home() / ".infermesh"


def test_defaults_without_a_file(home: Path) -> None:
    ctx = load_context()
    assert (ctx.api_url, ctx.token, ctx.project) == ("http://127.0.0.1:8080", None, "default")


def test_flags_beat_environment_beats_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_context(
        Context(
            api_url="http://file:1",
            token="file-token",
            project="file-proj",
            etcd_endpoints=["127.0.0.1:2379"],
        )
    )
    ctx = load_context()
    assert (ctx.api_url, ctx.token, ctx.project) == ("http://file:1", "file-token", "file-proj")
    assert ctx.etcd_endpoints == ["127.0.0.1:2379"]

    monkeypatch.setenv("INFERMESH_API", "http://env:2/")
    monkeypatch.setenv("INFERMESH_TOKEN", "env-token")
    monkeypatch.setenv("INFERMESH_PROJECT", "env-proj")
    ctx = load_context()
    assert (ctx.api_url, ctx.token, ctx.project) == ("http://env:2", "env-token", "env-proj")

    ctx = load_context(api="http://flag:3", token="flag-token", project="flag-proj")
    assert (ctx.api_url, ctx.token, ctx.project) == ("http://flag:3", "flag-token", "flag-proj")


def test_file_is_private_and_replaced_atomically(home: Path) -> None:
    path = write_context(Context(token="secret"))
    assert path == context_path() == home / "context.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_context(Context(token="second"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["token"] == "second"
    assert [p.name for p in home.iterdir()] == ["context.json"]  # no temporary file left


def test_unknown_keys_survive_a_rewrite(home: Path) -> None:
    home.mkdir()
    (home / "context.json").write_text(
        json.dumps({"api_url": "http://x:1", "token": "t", "console_theme": "dark"})
    )
    ctx = load_context()
    ctx.project = "p2"
    write_context(ctx)
    data = json.loads((home / "context.json").read_text())
    assert data["console_theme"] == "dark"
    assert (data["project"], data["token"]) == ("p2", "t")
    for key in ("api_url", "router_url", "token", "etcd_endpoints", "dask_scheduler"):
        assert key in data


def test_a_broken_file_is_a_clear_error(home: Path) -> None:
    home.mkdir()
    (home / "context.json").write_text('{"api_url": ')
    with pytest.raises(BadRequest, match=r"context\.json:1: context file is not valid JSON"):
        load_context()
