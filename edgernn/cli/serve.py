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
@click.option(
    "--state",
    "state_mode",
    type=click.Choice(["implicit", "control"]),
    default="implicit",
    show_default=True,
    help="implicit: the backend keeps the states (onnxruntime backend); control: a Python-backend model.py runs the "
    "ONNX file with onnxruntime and keeps them (servers without an onnxruntime backend, CPU-only hosts).",
)
@click.option(
    "--max-sequences",
    type=click.IntRange(min=1),
    default=None,
    help="--state control: sequences model.py holds per instance (default twice the batcher's; at most 1048576 "
    "and 16 GiB of state).",
)
@click.option(
    "--preserve-ordering", is_flag=True, help="--strategy oldest: responses leave in the order requests came."
)
@click.option(
    "--preferred-batch-size",
    "preferred",
    type=click.IntRange(min=1),
    multiple=True,
    help="--strategy oldest: a batch size to prefer (repeat; at most 16, each at most --max-batch-size).",
)
@click.option(
    "--min-slot-utilization",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="--strategy direct: the share of batch slots with a request before a batch runs early (0..1).",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Zero-frame warm-up requests the server runs when it loads the model (at most 1000).",
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
    state_mode: str,
    max_sequences: int | None,
    preserve_ordering: bool,
    preferred: tuple[int, ...],
    min_slot_utilization: float | None,
    warmup: int,
    force: bool,
    as_json: bool,
) -> None:
    """Write MODEL (a `step` export made with --target triton) into Triton model repository REPO as
    REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx: Triton's sequence batcher keeps each stream's state
    (implicit state, zeros at a sequence's start) and batches the streams' steps. With --state control the
    repository also holds REPO/NAME/1/model.py, a Python-backend model that keeps the states itself (for a
    server whose backend has no implicit state: the Python backend feeds zeros there). The config is validated
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
        state=state_mode,
        max_sequences=max_sequences,
        preserve_ordering=preserve_ordering,
        preferred_batch_sizes=list(preferred),
        minimum_slot_utilization=min_slot_utilization,
        warmup=warmup,
        force=force,
    )
    info = written.to_dict()
    if as_json:
        echo_json(info)
        return
    click.echo(f"wrote {written.config_path} and {written.model_path}")
    if info["state"] == "control":
        click.echo(
            f"model {written.name!r}: max batch {info['max_batch_size']}, {info['instances']} instance(s) on "
            f"{info['kind']}, sequence batcher {info['strategy']} with START/END/READY/CORRID controls; model.py "
            "(Python backend) keeps the states"
        )
        click.echo(
            f"serve it with: tritonserver --model-repository {written.repository} (needs the Python backend, "
            "numpy and onnxruntime in its Python)"
        )
        return
    states = ", ".join(f"{s['input']}->{s['output']} {s['dims']}" for s in info["states"])
    click.echo(
        f"model {written.name!r}: max batch {info['max_batch_size']}, {info['instances']} instance(s) on "
        f"{info['kind']}, sequence batcher {info['strategy']}, implicit state {states}"
    )
    click.echo(
        f"serve it with: tritonserver --model-repository {written.repository} (the server container has the "
        "onnxruntime backend; a server without it: --state control)"
    )


serve.add_command(ray_command)

COMMANDS = [serve]
