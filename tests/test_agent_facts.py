"""A node's facts: its NodeClass, then the operator's placement on its Node object, then what
NVML found, then the agent's flags."""

from __future__ import annotations

import pytest

from infermesh.agent.agent import AgentConfig, FactOverrides, node_facts
from infermesh.model import Node, NodeClass

NODE_CLASS = NodeClass.model_validate(
    {
        "kind": "NodeClass",
        "metadata": {"name": "cloud-h100"},
        "spec": {
            "hardware": {"gpu": "H100-80G", "gpuCount": 8, "vramGB": 80, "mig": "enabled"},
            "environment": {"kind": "cloud", "provider": "aws", "region": "eu-west-1"},
            "network": {"linkClasses": ["intra-zone"]},
        },
    }
)
NODE = Node.model_validate(
    {
        "kind": "Node",
        "metadata": {"name": "n1"},
        "spec": {"nodeClassRef": "cloud-h100", "domain": "cloud-eu", "zone": "eu-west-1c"},
    }
)


def test_class_then_node_then_hardware_then_flags() -> None:
    facts = node_facts(NODE_CLASS, None, None, FactOverrides(), "cloud-h100")
    assert (facts.gpu, facts.gpuCount, facts.vramGB, facts.mig) == ("H100-80G", 8, 80, True)
    assert (facts.environment, facts.provider, facts.linkClasses) == (
        "cloud",
        "aws",
        ["intra-zone"],
    )

    placed = node_facts(NODE_CLASS, NODE, None, FactOverrides(), "cloud-h100")
    assert (placed.domain, placed.zone, placed.region) == ("cloud-eu", "eu-west-1c", "eu-west-1")

    found = node_facts(NODE_CLASS, NODE, ("NVIDIA H100 80GB HBM3", 4, 79.6), FactOverrides(), None)
    assert (found.gpu, found.gpuCount, found.vramGB) == ("H100-80G", 4, 79.6)

    flags = FactOverrides(gpu_count=2, zone="eu-west-1a", link_classes=("public",), spot=True)
    final = node_facts(NODE_CLASS, NODE, ("NVIDIA H100 80GB HBM3", 4, 79.6), flags, None)
    assert (final.gpuCount, final.zone, final.linkClasses, final.spot) == (
        2,
        "eu-west-1a",
        ["public"],
        True,
    )


def test_without_a_node_class_the_hardware_names_the_gpu() -> None:
    facts = node_facts(None, None, ("NVIDIA L4", 1, 22.5), FactOverrides(), "edge-l4")
    assert (facts.nodeClass, facts.gpu, facts.gpuCount) == ("edge-l4", "NVIDIA L4", 1)


def test_bad_names_are_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="node: 'GPU_Node!' is not a valid name"):
        AgentConfig(node="GPU_Node!")
    with pytest.raises(ValueError, match="project"):
        AgentConfig(node="n1", project="")
