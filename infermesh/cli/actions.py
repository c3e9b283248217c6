"""Verbs on one object (node cordon, endpoint traffic-split, job pause...) and the seed's
sugar (domain create, endpoint deploy, job submit, policy set, strategy register)."""

from __future__ import annotations

from typing import Any

import click
import yaml

from infermesh.cli.common import (
    CliState,
    confirm,
    files_option,
    load_manifests,
    pass_state,
    print_apply,
    warn,
    yes_option,
)
from infermesh.client import ApplyResult, LogLine
from infermesh.errors import BadRequest

reason_option = click.option("--reason", default="", help="Why (kept in events and audit).")


def _act(
    state: CliState, plural: str, name: str, verb: str, body: dict[str, Any], done: str
) -> None:
    obj = state.client.action(plural, name, verb, body)
    click.echo(f"{obj['kind'].lower()}/{name} {done}")


def _apply_only(
    state: CliState, files: tuple[str, ...], kind: str, dry_run: bool
) -> list[ApplyResult]:
    objects = load_manifests(files, state.context.project, only_kind=kind)
    results = state.client.apply(objects, dry_run=dry_run)
    print_apply(results)
    return results


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    """`key=value` arguments as a dict; a malformed one is a clear error."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise BadRequest(f"{what}: expected key=value, got {item!r}")
        out[key] = value
    return out


dry_run_option = click.option("--dry-run", is_flag=True, help="Validate and report only.")


# nodes -------------------------------------------------------------------------------------


@click.group()
def node() -> None:
    """Take nodes in and out of service."""


@node.command()
@click.argument("name")
@reason_option
@pass_state
def cordon(state: CliState, name: str, reason: str) -> None:
    """Place no new work on NAME; running work stays."""
    _act(state, "nodes", name, "cordon", {"reason": reason}, "cordoned")


@node.command()
@click.argument("name")
@reason_option
@pass_state
def uncordon(state: CliState, name: str, reason: str) -> None:
    """Let NAME take new work again (also ends a drain)."""
    _act(state, "nodes", name, "uncordon", {"reason": reason}, "uncordoned")


@node.command()
@click.argument("name")
@reason_option
@click.option(
    "--timeout",
    "timeout",
    type=click.IntRange(min=0),
    default=300,
    show_default=True,
    help="Seconds running work may take to finish.",
)
@click.option("--force", is_flag=True, help="Evict work still running when the timeout ends.")
@yes_option
@pass_state
def drain(state: CliState, name: str, reason: str, timeout: int, force: bool, yes: bool) -> None:
    """Cordon NAME and move its work away."""
    confirm(f"drain node {name}", yes=yes, type_to_confirm=name)
    _act(
        state,
        "nodes",
        name,
        "drain",
        {"reason": reason, "timeoutSeconds": timeout, "force": force},
        "draining",
    )


@node.command()
@click.argument("name")
@click.option("--reason", required=True, help="Why (required: it is kept in events and audit).")
@yes_option
@pass_state
def quarantine(state: CliState, name: str, reason: str, yes: bool) -> None:
    """Take NAME out of service at once (bad GPU, ECC errors, thermal trouble)."""
    confirm(f"quarantine node {name}", yes=yes, type_to_confirm=name)
    _act(state, "nodes", name, "quarantine", {"reason": reason}, "quarantined")


@node.command()
@click.argument("name")
@reason_option
@pass_state
def unquarantine(state: CliState, name: str, reason: str) -> None:
    """Return a quarantined NAME to service."""
    _act(state, "nodes", name, "unquarantine", {"reason": reason}, "unquarantined")


# endpoints ---------------------------------------------------------------------------------


@click.group()
def endpoint() -> None:
    """Deploy endpoints and steer their traffic."""


@endpoint.command()
@files_option
@dry_run_option
@pass_state
def deploy(state: CliState, files: tuple[str, ...], dry_run: bool) -> None:
    """Create or update Endpoints from YAML (apply, for Endpoints only)."""
    _apply_only(state, files, "Endpoint", dry_run)


@endpoint.command("traffic-split")
@click.argument("name")
@click.argument("weights", nargs=-1, required=True, metavar="REV=WEIGHT...")
@pass_state
def traffic_split(state: CliState, name: str, weights: tuple[str, ...]) -> None:
    """Split NAME's traffic between model revisions (weights add up to 100).

    A bare revision (q4_k_m=90) means that revision of the endpoint's model; a full
    reference (chat-70b@fp8=10) is taken as is."""
    pairs = _pairs(weights, "traffic split")
    base = None
    if any("@" not in ref for ref in pairs):
        base = state.client.get("endpoints", name)["spec"]["modelRef"].partition("@")[0]
    split = []
    for ref, weight in pairs.items():
        if not weight.isdigit():
            raise BadRequest(
                f"traffic split: weight of {ref!r} must be a whole number, got {weight!r}"
            )
        split.append({"modelRef": ref if "@" in ref else f"{base}@{ref}", "weight": int(weight)})
    shown = ", ".join(f"{s['modelRef']}={s['weight']}" for s in split)
    _act(state, "endpoints", name, "trafficSplit", {"split": split}, f"traffic split {shown}")


@endpoint.command()
@click.argument("name")
@click.option(
    "--revision",
    help="The canary to promote: a revision (fp8) or a model reference (chat-70b@fp8); "
    "default: the canary with the highest weight.",
)
@reason_option
@yes_option
@pass_state
def promote(state: CliState, name: str, revision: str | None, reason: str, yes: bool) -> None:
    """Make a canary NAME's model and send it all of NAME's traffic (ends the split)."""
    which = f"revision {revision}" if revision else "its leading canary"
    confirm(f"promote {which} to all of endpoint {name}'s traffic", yes=yes)
    obj = state.client.promote(name, revision, reason=reason)
    click.echo(f"endpoint/{name} promoted to {obj['spec']['modelRef']}")


@endpoint.command()
@click.argument("name")
@reason_option
@yes_option
@pass_state
def rollback(state: CliState, name: str, reason: str, yes: bool) -> None:
    """Drop NAME's traffic split: all traffic back to its model (spec.modelRef)."""
    confirm(f"roll back endpoint {name}: drop its traffic split", yes=yes)
    obj = state.client.rollback(name, reason=reason)
    click.echo(f"endpoint/{name} rolled back to {obj['spec']['modelRef']}")


@endpoint.command()
@click.argument("name")
@click.option("--node", "nodes", multiple=True, help="Serve only from this node; repeatable.")
@click.option("--domain", "domains", multiple=True, help="Serve only from this domain; repeatable.")
@click.option("--clear", is_flag=True, help="Remove every pin.")
@pass_state
def pin(
    state: CliState, name: str, nodes: tuple[str, ...], domains: tuple[str, ...], clear: bool
) -> None:
    """Pin NAME's placement to nodes or domains."""
    if clear == bool(nodes or domains):
        raise BadRequest("give --node/--domain pins, or --clear to remove them all")
    pins = [{"node": n} for n in nodes] + [{"domain": d} for d in domains]
    _act(state, "endpoints", name, "pin", {"pins": pins}, "unpinned" if clear else "pinned")


@endpoint.command("drain")
@click.argument("name")
@reason_option
@click.option(
    "--timeout",
    type=click.IntRange(min=0),
    default=300,
    show_default=True,
    help="Seconds in-flight requests may take to finish.",
)
@yes_option
@pass_state
def drain_endpoint(state: CliState, name: str, reason: str, timeout: int, yes: bool) -> None:
    """Stop sending NAME new requests; let in-flight ones finish."""
    confirm(f"drain endpoint {name}", yes=yes, type_to_confirm=name)
    _act(
        state, "endpoints", name, "drain", {"reason": reason, "timeoutSeconds": timeout}, "draining"
    )


@endpoint.command("quarantine")
@click.argument("name")
@click.option("--node", required=True, help="The node whose replica stops getting traffic.")
@click.option("--reason", required=True, help="Why (required: kept in events and audit).")
@yes_option
@pass_state
def quarantine_endpoint(state: CliState, name: str, node: str, reason: str, yes: bool) -> None:
    """Stop routing NAME's traffic to its replica on one node."""
    confirm(f"quarantine endpoint {name}'s replica on node {node}", yes=yes)
    _act(
        state,
        "endpoints",
        name,
        "quarantine",
        {"node": node, "reason": reason},
        f"replica on {node} quarantined",
    )


# jobs --------------------------------------------------------------------------------------


@click.group()
def job() -> None:
    """Submit training jobs and steer them."""


@job.command()
@files_option
@dry_run_option
@pass_state
def submit(state: CliState, files: tuple[str, ...], dry_run: bool) -> None:
    """Create or update Jobs from YAML (apply, for Jobs only)."""
    results = _apply_only(state, files, "Job", dry_run)
    if dry_run:
        return
    # A hint on stderr: stdout stays the kubectl-style lines scripts read.
    project = results[0].project
    mesh = "mesh" if project == state.context.project else f"mesh -p {project}"
    if len(results) == 1:
        warn(f"Follow it: {mesh} job logs {results[0].name} -f  (all jobs: {mesh} get jobs -w)")
    else:
        warn(f"Follow them: {mesh} get jobs -w")


def _echo_log_line(line: LogLine) -> None:
    # A line of no rank is the scheduler's own (such as where a new attempt starts).
    click.echo(f"[rank {line.rank}] {line.line}" if line.rank >= 0 else line.line)


@job.command()
@click.argument("name")
@click.option("--rank", type=click.IntRange(min=0), help="Only this rank's lines.")
@click.option(
    "--tail", type=click.IntRange(min=0), help="Only the last N lines (default: all kept)."
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@pass_state
def logs(state: CliState, name: str, rank: int | None, tail: int | None, follow: bool) -> None:
    """Print what NAME's ranks print, `[rank R] line`, oldest first.

    The mesh keeps the job's last few hundred lines."""
    client = state.client
    if not follow:
        got = client.job_logs(name, rank=rank, tail=tail)
        if not got.lines:
            warn(f"No log lines from job {name} yet.")
        for line in got.lines:
            _echo_log_line(line)
        return
    try:
        for line in client.follow_job_logs(name, rank=rank, tail=tail):
            _echo_log_line(line)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how -f ends


@job.command()
@click.argument("name")
@pass_state
def pause(state: CliState, name: str) -> None:
    """Ask the scheduler to pause NAME (it checkpoints first)."""
    _act(state, "jobs", name, "pause", {}, "pause requested")


@job.command()
@click.argument("name")
@pass_state
def resume(state: CliState, name: str) -> None:
    """Ask the scheduler to resume NAME."""
    _act(state, "jobs", name, "resume", {}, "resume requested")


@job.command()
@click.argument("name")
@click.option(
    "--gpus",
    type=click.IntRange(min=1),
    required=True,
    help="GPUs to run on, within the job's elastic range.",
)
@pass_state
def scale(state: CliState, name: str, gpus: int) -> None:
    """Scale NAME to a number of GPUs."""
    _act(state, "jobs", name, "scale", {"gpus": gpus}, f"scaling to {gpus} GPUs")


@job.command()
@click.argument("name")
@pass_state
def checkpoint(state: CliState, name: str) -> None:
    """Ask NAME to write a checkpoint now."""
    _act(state, "jobs", name, "checkpoint", {}, "checkpoint requested")


# models, domains, policies, strategies -----------------------------------------------------


@click.group()
def model() -> None:
    """Publish models."""


@model.command()
@click.argument("name")
@pass_state
def publish(state: CliState, name: str) -> None:
    """Mark model NAME (name@rev) as published."""
    _act(state, "models", name, "publish", {}, "published")


@click.group()
def domain() -> None:
    """Create domains."""


@domain.command("create")
@click.argument("name")
@click.option("--region", help="Residency region, e.g. EU.")
@click.option("--privacy", help="Privacy flag, e.g. edge-preferred.")
@click.option("--cell", "cells", multiple=True, help="Cell glob in scope (eu-west/*); repeatable.")
@click.option(
    "--link-class",
    "link_classes",
    multiple=True,
    help="Allowed WAN link class (intra-zone, inter-zone...); repeatable.",
)
@click.option("--rtt-budget-ms", type=float, help="RTT budget in milliseconds.")
@click.option("-l", "--label", "labels", multiple=True, help="key=value; repeatable.")
@pass_state
def domain_create(
    state: CliState,
    name: str,
    region: str | None,
    privacy: str | None,
    cells: tuple[str, ...],
    link_classes: tuple[str, ...],
    rtt_budget_ms: float | None,
    labels: tuple[str, ...],
) -> None:
    """Create domain NAME (fails if it exists; use apply to update)."""
    spec: dict[str, Any] = {}
    if cells:
        spec["scope"] = {"cells": list(cells)}
    net: dict[str, Any] = {}
    if link_classes:
        net["allowLinkClasses"] = list(link_classes)
    if rtt_budget_ms is not None:
        net["rttBudgetMs"] = rtt_budget_ms
    if net:
        spec["netPolicy"] = net
    residency = {k: v for k, v in (("region", region), ("privacy", privacy)) if v}
    if residency:
        spec["residency"] = residency
    obj = {
        "apiVersion": "v1",
        "kind": "Domain",
        "metadata": {
            "name": name,
            "project": state.context.project,
            "labels": _pairs(labels, "--label"),
        },
        "spec": spec,
    }
    state.client.create(obj)
    click.echo(f"domain/{name} created")


@click.group()
def policy() -> None:
    """Set policies."""


@policy.command("set")
@files_option
@dry_run_option
@pass_state
def policy_set(state: CliState, files: tuple[str, ...], dry_run: bool) -> None:
    """Create or update Policies from YAML (apply, for Policies only)."""
    _apply_only(state, files, "Policy", dry_run)


@click.group()
def strategy() -> None:
    """Register routing and placement strategies."""


@strategy.command()
@click.argument("name", required=False)
@click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    help="YAML file(s) of Strategy objects, instead of NAME and flags.",
)
@click.option(
    "--type",
    "type_",
    type=click.Choice(["inference", "training"]),
    help="What the strategy decides.",
)
@click.option(
    "--plugin",
    type=click.Choice(["builtin", "python", "cdylib", "wasm"]),
    default="builtin",
    show_default=True,
    help="How the strategy is loaded.",
)
@click.option(
    "--entry-point",
    help="python: module:attribute; cdylib/wasm: path or URI; "
    "builtin: the built-in this one tunes.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    help="key=value default parameter (value read as YAML); repeatable.",
)
@dry_run_option
@pass_state
def register(
    state: CliState,
    name: str | None,
    files: tuple[str, ...],
    type_: str | None,
    plugin: str,
    entry_point: str | None,
    params: tuple[str, ...],
    dry_run: bool,
) -> None:
    """Register strategy NAME (hybrid_mesh@1.0) from flags, or Strategies from -f files."""
    if files:
        if name or type_ or params or entry_point:
            raise BadRequest("give either -f files or NAME with flags, not both")
        _apply_only(state, files, "Strategy", dry_run)
        return
    if not name or not type_:
        raise BadRequest("give NAME and --type (or -f FILE)")
    spec: dict[str, Any] = {
        "kind": type_,
        "plugin": plugin,
        "params": {k: yaml.safe_load(v) for k, v in _pairs(params, "--param").items()},
    }
    if entry_point:
        spec["entryPoint"] = entry_point
    obj = {
        "apiVersion": "v1",
        "kind": "Strategy",
        "metadata": {"name": name, "project": state.context.project},
        "spec": spec,
    }
    print_apply(state.client.apply([obj], dry_run=dry_run))


COMMANDS = [node, endpoint, job, model, domain, policy, strategy]
