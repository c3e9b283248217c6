"""`infermesh sim-runtime`: one vLLM-compatible runtime simulator, served until interrupted."""

from __future__ import annotations

import click

from infermesh.agent.sim.profiles import PROFILES


@click.command("sim-runtime")
@click.option("--model", required=True, help="The served model id, e.g. chat-8b@fp16.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--profile",
    type=click.Choice(list(PROFILES)),
    default="H100",
    show_default=True,
    help="Simulated GPU: sets prefill speed, inter-token latency and KV-cache capacity.",
)
@click.option("--max-num-seqs", type=click.IntRange(1), default=256, show_default=True)
@click.option("--max-model-len", type=click.IntRange(16), default=8192, show_default=True)
@click.option("--seed", type=int, help="Make generated text and lengths reproducible.")
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0.001),
    default=1.0,
    show_default=True,
    help="Multiply every simulated duration (0.1 runs ten times faster).",
)
def sim_runtime(
    model: str,
    host: str,
    port: int,
    profile: str,
    max_num_seqs: int,
    max_model_len: int,
    seed: int | None,
    time_scale: float,
) -> None:
    """Serve the OpenAI API (and vLLM's /metrics) with a latency model instead of a GPU."""
    from infermesh.agent.sim.server import serve  # the HTTP stack only when serving

    serve(
        model=model,
        host=host,
        port=port,
        profile=profile,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        seed=seed,
        time_scale=time_scale,
    )
