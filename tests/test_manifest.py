"""Strict manifest loading: what a user sees for good files and for each kind of mistake."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from infermesh.errors import BadRequest, Invalid
from infermesh.manifest import load_documents, load_paths, parse_manifest
from infermesh.model import Endpoint, Job, NodeClass

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SEED = Path("/work/shared/seeds/000_7ecb9dbe90e306d4.txt")


def cheatsheet_as_pasted() -> str:
    """The seed's cheatsheet exactly as a user copies it: no `---` between the objects."""
    return (EXAMPLES / "seed-cheatsheet.yaml").read_text().replace("---\n", "")


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    starts = [i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle)]
    return starts[occurrence - 1]


# the seed's examples ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [("seed-nodeclass.yaml", NodeClass), ("seed-endpoint.yaml", Endpoint), ("seed-job.yaml", Job)],
)
def test_each_long_seed_example_loads(name: str, kind: type) -> None:
    (obj,) = load_paths([EXAMPLES / name])
    assert isinstance(obj, kind)


def test_the_examples_are_the_seed_text_verbatim() -> None:
    if not SEED.exists():
        pytest.skip("seed documents are not on this machine")
    blocks = re.findall(r"```yaml\n(.*?)```", SEED.read_text(), re.S)
    assert (EXAMPLES / "seed-nodeclass.yaml").read_text() == blocks[0]
    assert (EXAMPLES / "seed-endpoint.yaml").read_text() == blocks[1]
    assert (EXAMPLES / "seed-job.yaml").read_text() == blocks[2]
    assert cheatsheet_as_pasted() == blocks[3]


def test_the_cheatsheet_with_separators_is_its_five_objects() -> None:
    objects = load_paths([str(EXAMPLES / "seed-cheatsheet.yaml")])
    assert [(o.kind, o.metadata.name) for o in objects] == [
        ("Domain", "edge-eu"),
        ("CapacityPool", "prod-gold"),
        ("Strategy", "hybrid_mesh@1.0"),
        ("Endpoint", "chat-pro"),
        ("Job", "ft-news-xxl"),
    ]


def test_the_cheatsheet_pasted_without_separators_says_where_to_put_them() -> None:
    text = cheatsheet_as_pasted()
    second = line_of(text, "apiVersion:", 2)
    with pytest.raises(BadRequest) as info:
        parse_manifest(text, "cheatsheet.yaml")
    message = info.value.message
    assert f"a second document starts at line {second}" in message
    assert f"put '---' before line {second}" in message
    assert message.startswith(f"cheatsheet.yaml:{second}:")
    assert info.value.details["line"] == second


def test_the_demo_mesh_and_the_seed_examples_apply_together() -> None:
    names = ["demo-mesh.yaml", "seed-nodeclass.yaml", "seed-endpoint.yaml", "seed-job.yaml"]
    objects = load_paths([EXAMPLES / n for n in names])
    kinds = {o.kind for o in objects}
    assert {"Domain", "NodeClass", "CapacityPool", "Model", "Endpoint", "Job"} <= kinds
    # edge-h100-eu is in both demo-mesh and seed-nodeclass: identical, so it counts once.
    assert [o.metadata.name for o in objects].count("edge-h100-eu") == 1


# mistakes -----------------------------------------------------------------------------------

ENDPOINT = """\
apiVersion: v1
kind: Endpoint
metadata:
  name: chat-pro
spec:
  modelRef: chat-70b@q4_k_m
  domains:
    - name: edge-eu
      weight: 60
    - name: cloud-eu
      weight: 40
  capacityPoolRef: prod-gold
"""


def invalid(text: str, source: str = "m.yaml") -> Invalid:
    with pytest.raises(Invalid) as info:
        parse_manifest(text, source)
    return info.value


def test_an_unknown_field_names_its_path_and_line() -> None:
    text = ENDPOINT.replace("  capacityPoolRef:", "  capacityPool:")
    err = invalid(text)
    assert err.message == (
        "m.yaml:12: spec.capacityPool: unknown field 'capacityPool' "
        "(did you mean 'capacityPoolRef'?)"
    )
    assert err.details["line"] == 12 and err.details["field"] == "spec.capacityPool"


def test_a_wrong_type_names_its_path_and_line() -> None:
    err = invalid(ENDPOINT.replace("weight: 40", "weight: forty"))
    assert err.message.startswith("m.yaml:11: spec.domains[1].weight: Input should be a valid")
    assert "'forty'" in err.message


def test_a_missing_field_points_at_its_parent() -> None:
    err = invalid(ENDPOINT.replace("  modelRef: chat-70b@q4_k_m\n", ""))
    assert err.message == "m.yaml:5: spec.modelRef: required field is missing"


def test_every_problem_of_every_document_is_reported_at_once() -> None:
    bad_job = "apiVersion: v1\nkind: Job\nmetadata: { name: j }\nspec:\n  parallelism: { dp: 0 }\n"
    text = ENDPOINT.replace("weight: 40", "weight: 400") + "---\n" + bad_job
    err = invalid(text)
    lines = err.message.splitlines()
    assert lines[0].startswith("m.yaml:11: spec.domains[1].weight:")
    assert lines[1].startswith("m.yaml:18: spec.parallelism.dp:")
    assert [(e["kind"], e["name"]) for e in err.details["errors"]] == [
        ("Endpoint", "chat-pro"),
        ("Job", "j"),
    ]


def test_a_duplicate_key_names_both_lines() -> None:
    text = ENDPOINT.replace("  modelRef: chat-70b@q4_k_m\n", "  modelRef: a\n  modelRef: b\n")
    with pytest.raises(BadRequest) as info:
        parse_manifest(text, "m.yaml")
    assert info.value.message == (
        "m.yaml:7:3: duplicate key 'modelRef' at line 7 (first defined at line 6)"
    )
    assert info.value.details == {"source": "m.yaml", "line": 7, "column": 3, "key": "modelRef"}


def test_malformed_yaml_gives_line_and_column() -> None:
    with pytest.raises(BadRequest) as info:
        parse_manifest("apiVersion: v1\nkind: Domain\nmetadata: { name: a\nspec: {}\n", "m.yaml")
    assert info.value.message.startswith("m.yaml:4:5: invalid YAML:")
    assert (info.value.details["line"], info.value.details["column"]) == (4, 5)


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(BadRequest, match=r"m.yaml:14: a document must be an object .* not a list"):
        parse_manifest(ENDPOINT + "---\n- a\n- b\n", "m.yaml")


def test_empty_documents_and_comments_are_skipped() -> None:
    text = "# nothing yet\n---\n---\n" + ENDPOINT + "---\n# trailing comment\n"
    assert [o.metadata.name for o in parse_manifest(text)] == ["chat-pro"]
    assert parse_manifest("") == []


def test_the_same_object_defined_twice_differently_is_refused() -> None:
    text = (
        ENDPOINT
        + "---\n"
        + ENDPOINT.replace("weight: 60", "weight: 50").replace("weight: 40", "weight: 50")
    )
    err = invalid(text)
    assert "Endpoint chat-pro is defined again, differently; first at m.yaml:1" in err.message
    assert err.message.startswith("m.yaml:17: metadata.name:")


def test_yaml_merge_keys_still_work() -> None:
    text = ENDPOINT.replace(
        "    - name: cloud-eu\n      weight: 40\n",
        "    - &base { name: cloud-eu, weight: 20 }\n    - <<: *base\n      name: cloud-us\n",
    )
    (ep,) = parse_manifest(text)
    assert [(d.name, d.weight) for d in ep.spec.domains] == [
        ("edge-eu", 60),
        ("cloud-eu", 20),
        ("cloud-us", 20),
    ]


def test_load_documents_reports_where_each_object_starts() -> None:
    docs = load_documents("# one\n" + ENDPOINT + "---\n\n" + ENDPOINT, "m.yaml")
    assert [(d.source, d.line) for d in docs] == [("m.yaml", 2), ("m.yaml", 16)]


# paths, stdin, JSON -------------------------------------------------------------------------


def test_a_directory_loads_its_manifests_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(ENDPOINT)
    (tmp_path / "a.yaml").write_text((EXAMPLES / "seed-nodeclass.yaml").read_text())
    (tmp_path / "notes.txt").write_text("not a manifest")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("this: is not read")
    assert [o.kind for o in load_paths([tmp_path])] == ["NodeClass", "Endpoint"]


def test_one_bad_file_and_nothing_is_returned(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(ENDPOINT)
    bad.write_text(ENDPOINT.replace("weight: 40", "weight: -1"))
    with pytest.raises(Invalid) as info:
        load_paths([good, bad])
    assert info.value.message.startswith(f"{bad}:11: spec.domains[1].weight:")


def test_missing_paths_and_empty_directories_are_errors(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="no such file or directory"):
        load_paths([tmp_path / "nope.yaml"])
    with pytest.raises(BadRequest, match=r"no \*\.yaml, \*\.yml or \*\.json files"):
        load_paths([tmp_path])


def test_dash_reads_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(ENDPOINT))
    assert [o.metadata.name for o in load_paths(["-"])] == ["chat-pro"]


def test_json_files_load_too(tmp_path: Path) -> None:
    ep = parse_manifest(ENDPOINT)[0].to_dict()
    one, many = tmp_path / "one.json", tmp_path / "many.json"
    one.write_text(json.dumps(ep, indent="\t"))
    many.write_text(json.dumps([ep, {**ep, "metadata": {"name": "other"}}]))
    assert [o.metadata.name for o in load_paths([one, many])] == ["chat-pro", "other"]


def test_json_mistakes(tmp_path: Path) -> None:
    broken, dup = tmp_path / "broken.json", tmp_path / "dup.json"
    broken.write_text('{"apiVersion": "v1",\n "kind": }')
    dup.write_text('{"kind": "Domain", "kind": "Job"}')
    with pytest.raises(BadRequest, match=r"broken.json:2:10: invalid JSON"):
        load_paths([broken])
    with pytest.raises(BadRequest, match="duplicate key 'kind'"):
        load_paths([dup])


def test_a_list_document_stands_for_its_items() -> None:
    items = [parse_manifest(ENDPOINT)[0].to_dict()]
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    assert [o.kind for o in parse_manifest(listing, "get.json")] == ["Endpoint"]
    text = (
        "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Domain\n"
        "    metadata: { name: Bad }\n"
    )
    assert invalid(text).message.startswith("m.yaml:6: metadata.name:")
