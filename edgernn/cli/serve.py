"""``edgernn serve``: hand a streaming model to a serving engine (Triton Inference Server, Ray Serve).

Thin: each subcommand calls one library function in ``edgernn.serve``. Importing this module imports neither
torch, onnxruntime, tritonclient nor ray.
"""

from __future__ import annotations

import click

from .common import echo_json, handle_errors
from .serve_ray import ray_command


@click.group("serve")
def serve() -> None:
    """Serve a streaming (`step`) export on a serving engine: `triton` writes a model repository, `ray` runs a
    Ray Serve deployment."""


@serve.command("triton")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--repo", "repo", required=True, type=click.Path(file_okay=False), help="The model repository folder.")
@click.option("--name", default=None, help="The model's name in the repository (default: MODEL's file name).")
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Streams per model call (default 64, at most 65536).",
)
@click.option(
    "--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Model instances (at most 256)."
)
@click.option("--gpu", is_flag=True, help="Run the instances on GPUs (KIND_GPU) instead of CPUs.")
@click.option(
    "--strategy",
    type=click.Choice(["direct", "oldest"]),
    default="direct",
    show_default=True,
    help="direct: a batch slot per sequence; oldest: dynamic batches of the oldest sequences' requests.",
)
@click.option(
    "--idle-ms",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="A sequence idle this long is ended by Triton (its state is freed); at most one day (86400000).",
)
@click.option(
    "--max-queue-delay-us",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="How long a batch waits for more streams' requests (0: run what is there; at most 10000000).",
)
@click.option("--force", is_flag=True, help="Replace a model of the same name already in the repository.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@handle_errors
def triton(
    model: str,
    repo: str,
    name: str | None,
    max_batch_size: int | None,
    instances: int,
    gpu: bool,
    strategy: str,
    idle_ms: int,
    max_queue_delay_us: int,
    force: bool,
    as_json: bool,
) -> None:
    """Write MODEL (a `step` export made with --target triton) into Triton model repository REPO as
    REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx: Triton's sequence batcher keeps each stream's state
    (implicit state, zeros at a sequence's start) and batches the streams' steps. The config is validated
    against the model before anything is written; a model NAME already in REPO is kept unless --force. Needs
    tritonclient (pip install 'edgernn[triton]'; exit 10 without it).
    """
    from ..errors import ConfigError
    from ..serve.triton import MAX_IDLE_US, write_repository

    if idle_ms * 1000 > MAX_IDLE_US:
        raise ConfigError(f"--idle-ms is at most {MAX_IDLE_US // 1000:,} (one day); got {idle_ms:,}")
    written = write_repository(
        model,
        repo,
        name=name,
        max_batch_size=max_batch_size,
        instances=instances,
        kind="KIND_GPU" if gpu else "KIND_CPU",
        strategy=strategy,
        idle_us=idle_ms * 1000,
        max_queue_delay_us=max_queue_delay_us,
        force=force,
    )
    info = written.to_dict()
    if as_json:
        echo_json(info)
        return
    states = ", ".join(f"{s['input']}->{s['output']} {s['dims']}" for s in info["states"])
    click.echo(f"wrote {written.config_path} and {written.model_path}")
    click.echo(
        f"model {written.name!r}: max batch {info['max_batch_size']}, {info['instances']} instance(s) on "
        f"{info['kind']}, sequence batcher {info['strategy']}, implicit state {states}"
    )
    click.echo(
        f"serve it with: tritonserver --model-repository {written.repository} (the server container has the "
        "onnxruntime backend)"
    )


serve.add_command(ray_command)

COMMANDS = [serve]
