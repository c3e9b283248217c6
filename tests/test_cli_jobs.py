"""`mesh` on training jobs against the real API: the status table, describe, logs (whole and
followed) and submit's hint. The scheduler's keys are written straight into etcd, as it does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from infermesh.client import MeshClient
from tests.fixtures_api import ApiServer
from tests.test_api_jobs import Scheduler, job, lines, running
from tests.test_api_objects import wait_until
from tests.test_cli import Streaming, failed, mesh, no_user_context, ok, table

__all__ = ["mesh", "no_user_context"]  # the CLI fixtures of test_cli.py, used here too

JOB_YAML = "apiVersion: v1\nkind: Job\nmetadata: {name: ft}\nspec: {parallelism: {dp: 2, tp: 2}}\n"


def submitted(mesh: Callable[..., Result], tmp_path: Path) -> Result:
    path = tmp_path / "job.yaml"
    path.write_text(JOB_YAML)
    return ok(mesh("job", "submit", "-f", str(path)))


def test_submit_prints_the_result_then_how_to_follow_the_job(
    mesh: Callable[..., Result], tmp_path: Path
) -> None:
    result = submitted(mesh, tmp_path)
    assert result.stdout == "job/ft created\n"
    assert "mesh job logs ft -f" in result.stderr and "mesh get jobs -w" in result.stderr


def test_get_jobs_shows_phase_gpus_step_checkpoint_and_gpu_hours(
    mesh: Callable[..., Result], api: ApiServer, project: str, tmp_path: Path
) -> None:
    submitted(mesh, tmp_path)
    pending = table(ok(mesh("get", "jobs")).stdout)
    assert pending[0] == [
        "NAME",
        "PHASE",
        "GPUS",
        "STEP",
        "STEP-P95",
        "LAST-CKPT",
        "GPU-HOURS",
        "RESTARTS",
        "AGE",
    ]
    assert pending[1][:8] == ["ft", "Pending", "0/4", "<none>", "<none>", "<none>", "0", "0"]

    Scheduler(api, project).status(running(project, step=120))
    rows: list[list[str]] = []

    def shows_running() -> bool:
        rows[:] = table(ok(mesh("get", "jobs")).stdout)
        return rows[1][1] == "Running"

    wait_until(shows_running)
    assert rows[1][:8] == ["ft", "Running", "4/4", "120/1000", "412ms", rows[1][5], "1.25/100", "1"]
    assert rows[1][5].startswith("100(") and rows[1][5].endswith("s)")  # step 100, seconds ago

    wide = table(ok(mesh("get", "jobs", "-o", "wide")).stdout)
    cells = dict(zip(wide[0], wide[1], strict=True))
    assert cells["NODES"] == "gpu-1:4"
    assert cells["TOPOLOGY"] == "hierarchical+compression"
    assert (cells["POOL"], cells["COST"]) == ("train-gold", "$3.50")


def test_describe_job_shows_its_status_and_events(
    mesh: Callable[..., Result], api: ApiServer, project: str, tmp_path: Path
) -> None:
    submitted(mesh, tmp_path)
    Scheduler(api, project).status(running(project, phase="Recovering", reason="NodeLost"))
    wait_until(lambda: "phase: Recovering" in ok(mesh("describe", "job", "ft")).stdout)
    out = ok(mesh("describe", "job", "ft")).stdout
    assert "reason: NodeLost" in out and "stepsLost: 20" in out
    assert "Job ft created" in out[out.index("Events:") :]


def test_job_logs_prints_rank_and_line_with_rank_and_tail_filters(
    mesh: Callable[..., Result], api: ApiServer, project: str, tmp_path: Path
) -> None:
    submitted(mesh, tmp_path)
    empty = ok(mesh("job", "logs", "ft"))
    assert empty.stdout == "" and "No log lines from job ft yet" in empty.stderr
    written = lines((-1, "--- attempt 1 ---"), (0, "loss 2.31"), (1, "loss 2.30"), (0, "loss 2.01"))
    Scheduler(api, project).logs(1, written)
    assert ok(mesh("job", "logs", "ft")).stdout.splitlines() == [
        "--- attempt 1 ---",  # the scheduler's own line
        "[rank 0] loss 2.31",
        "[rank 1] loss 2.30",
        "[rank 0] loss 2.01",
    ]
    assert ok(mesh("job", "logs", "ft", "--rank", "0", "--tail", "1")).stdout == (
        "[rank 0] loss 2.01\n"
    )
    assert "Job 'nope' not found" in failed(mesh("job", "logs", "nope"))


def test_job_logs_follow_prints_new_lines_until_ctrl_c(api: ApiServer, project: str) -> None:
    scheduler = Scheduler(api, project)
    with MeshClient(api.url, api.token, project=project) as client:
        client.create(job())
    written = lines((0, "step 1"))
    scheduler.logs(1, written)
    follow = Streaming(api, project, "job", "logs", "ft", "-f")
    try:
        assert follow.next_words(3) == ["[rank", "0]", "step"]
        scheduler.logs(1, [*written, *lines((1, "checkpoint written"))])
        assert follow.next_words(4) == ["[rank", "1]", "checkpoint", "written"]
        follow.interrupt()
    finally:
        follow.proc.kill()
