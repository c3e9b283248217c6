"""The node agent (meshd, `infermesh agent`) and what runs beside it on a node.

- `agent`: `Agent` (one node: register, report, guard), `AgentConfig`, `run_agent`.
- `report`: `NodeReport`, the JSON an agent writes at `{root}/status/nodes/{project}/{name}`.
- `gpu`: GPU telemetry through NVML, or simulated GPUs that follow the runtime's load.
- `runtime_adapter`, `runtime_http`: scraping vLLM, SGLang and TGI (`/metrics`, `/v1/models`)
  over one keep-alive connection per runtime.
- `conditions`: the decisions as pure functions (conditions, deadband, quarantine rules).
- `feed`, `lease`: the Node/Policy/NodeClass watch and the kept-alive lease, shareable by a fleet.
- `metrics`, `http`: Prometheus exposition and the agent's own `/metrics` and `/healthz`.
- `cli`: the `infermesh agent` command.
- `sim`: the vLLM-compatible runtime simulator; `fleet`: many simulated nodes in one process.
"""
