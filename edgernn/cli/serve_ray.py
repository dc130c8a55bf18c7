"""``edgernn serve ray``: serve the streams of a ``step`` export on Ray Serve until Ctrl-C.

Thin: builds the application with ``edgernn.serve.ray.stream_deployment`` and runs it. Importing this module
imports neither onnxruntime nor ray; ray is imported when the command runs (missing: exit code 10, naming the extra).
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from ..errors import ConfigError
from .common import handle_errors


@click.command("ray")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True, help="Replicas of the model.")
@click.option(
    "--stateless",
    is_flag=True,
    help="Each request carries its stream's state and each response returns the next one; replicas keep nothing, "
    "so any replica serves any request and rescaling loses nothing.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP host (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="HTTP port.")
@click.option("--route", default="/", show_default=True, help="HTTP route prefix of the application.")
@click.option("--name", "app_name", default="edgernn", show_default=True, help="Ray Serve application name.")
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Most requests (from different streams) one replica runs in one onnxruntime call (at most 4096).",
)
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="How long a replica waits for more requests before running a batch that is not full.",
)
@click.option(
    "--ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds after which an idle stream's state is forgotten (stateful mode).",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=1, show_default=True, help="onnxruntime threads per replica."
)
@click.option(
    "--max-streams",
    type=int,
    default=10_000,
    show_default=True,
    help="Live streams one replica keeps (stateful mode; at most 10000000): a new stream beyond it is refused "
    "(HTTP 429), no live one is dropped for it.",
)
@click.option(
    "--max-id-chars",
    type=int,
    default=256,
    show_default=True,
    help="Characters of a stream id (at most 65536; integer ids: within 64 bits); a longer one is refused (HTTP 400).",
)
@click.option(
    "--max-body-bytes",
    type=int,
    default=1 << 20,
    show_default=True,
    help="Bytes of one HTTP request (1024 to 67108864); a larger one is refused (HTTP 413).",
)
@click.option(
    "--max-queued",
    type=int,
    default=64,
    show_default=True,
    help="Requests that may wait for a busy replica (1 to 65536); one more is refused with HTTP 503 and "
    "Retry-After (nothing ran, the stream's state is kept).",
)
@click.option(
    "--max-wait",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds a request may wait, from its arrival at the ingress until its replica takes it into a batch "
    "(0.01 to 600); one that waited longer is refused with HTTP 503 and Retry-After and never runs (the stream's "
    "state is kept). An accepted request takes at most this plus the run of one batch.",
)
@click.option(
    "--health-period",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds between health checks of each replica (the model run on a zero frame; 0.1 to 3600).",
)
@click.option(
    "--health-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds a health check may take before its replica is replaced (0.1 to 3600).",
)
@click.option(
    "--drain-timeout",
    type=float,
    default=20.0,
    show_default=True,
    help="Seconds a replica being stopped (scale-down, update) may take to finish the frames it holds (0.1 to "
    "3600); meanwhile it answers new frames with HTTP 421 and the stream's token, to resume on another replica.",
)
@click.option(
    "--state-tokens/--no-state-tokens",
    default=True,
    show_default=True,
    help="Stateful mode: each response carries the stream's state as a token that resumes it on any replica "
    "(a replica's death loses nothing for a client that sends it back); --no-state-tokens saves its bytes.",
)
@click.option(
    "--ray-timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to wait for Ray to start, or for the cluster of --address to answer (at most 3600).",
)
@click.option(
    "--address",
    default=None,
    help="A running Ray cluster to deploy on (e.g. auto, or ray://HOST:10001); default: start a local one. On a "
    "cluster, Ctrl-C deletes this application only.",
)
@click.option(
    "--num-cpus",
    type=click.IntRange(min=1),
    default=None,
    help="CPUs of the local Ray cluster this starts (default: all of this machine's).",
)
@handle_errors
def ray_command(
    model: str,
    replicas: int,
    stateless: bool,
    host: str,
    port: int,
    route: str,
    app_name: str,
    max_batch_size: int,
    batch_wait_ms: float,
    ttl: float,
    threads: int,
    max_streams: int,
    max_id_chars: int,
    max_body_bytes: int,
    max_queued: int,
    max_wait: float,
    health_period: float,
    health_timeout: float,
    drain_timeout: float,
    state_tokens: bool,
    ray_timeout: float,
    address: str | None,
    num_cpus: int | None,
) -> None:
    """Serve the streams of MODEL (a `step` export) on Ray Serve: each replica holds one onnxruntime session and
    batches frames of different streams into one call; a stream's frames all go to one replica (consistent
    hashing on its id), or with --stateless its state travels with each request. Runs until Ctrl-C. What a
    client sends is bounded (--max-streams, --max-id-chars, --max-body-bytes): beyond a bound a request gets an
    HTTP 4xx with a JSON error; beyond --max-queued waiting requests, or after --max-wait seconds of waiting, an
    HTTP 503 with Retry-After. Each stateful
    response carries a state token: send it back ("token") to resume the stream on any replica after a 503 or a
    replica's death (edgernn.serve.StreamClient does). A local cluster listens on 127.0.0.1 only.

    \b
    edgernn serve ray step.onnx --replicas 2
    edgernn serve ray step.onnx --replicas 4 --stateless --port 8080
    edgernn serve ray step.onnx --address auto          # on a cluster started with `ray start --head`
    """
    from ..serve.ray import (
        MAX_BATCH_LIMIT,
        check_bounds,
        check_ray_timeout,
        check_serving,
        check_stream_model,
        check_token_fits,
        init_ray,
        require_ray,
        stream_deployment,
    )

    if not route.startswith("/"):
        raise ConfigError(f"--route must start with /; got {route!r}")
    if address is not None and num_cpus is not None:
        raise ConfigError("--num-cpus sizes a local cluster; a cluster given with --address has its own")
    if max_batch_size > MAX_BATCH_LIMIT:
        raise ConfigError(f"--max-batch-size is at most {MAX_BATCH_LIMIT:,}; got {max_batch_size:,}")
    check_bounds(max_streams=max_streams, max_id_chars=max_id_chars, max_body_bytes=max_body_bytes)
    check_serving(
        max_queued=max_queued,
        health_period_s=health_period,
        health_timeout_s=health_timeout,
        drain_timeout_s=drain_timeout,
        max_wait_s=max_wait,
    )
    check_ray_timeout(ray_timeout)
    frame = check_stream_model(model)  # before Ray starts: a model that cannot stream is refused at once
    if state_tokens and not stateless:
        with open(model, "rb") as f:
            check_token_fits(f.read(), max_body_bytes)  # a token too large for the body bound: refused here too
    ray = require_ray("serve")
    from ray import serve

    own_cluster = address is None
    init_ray(
        ray, address=address, timeout_s=ray_timeout, num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING"
    )
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        app = stream_deployment(
            model,
            replicas=replicas,
            max_batch_size=max_batch_size,
            batch_wait_timeout_s=batch_wait_ms / 1000,
            ttl_s=ttl,
            stateless=stateless,
            threads=threads,
            max_streams=max_streams,
            max_id_chars=max_id_chars,
            max_body_bytes=max_body_bytes,
            max_queued=max_queued,
            health_period_s=health_period,
            health_timeout_s=health_timeout,
            drain_timeout_s=drain_timeout,
            max_wait_s=max_wait,
            state_tokens=state_tokens,
        )
        serve.run(app, name=app_name, route_prefix=route)
        url = f"http://{host}:{port}{route}"
        click.echo(_how_to(model, frame, replicas, stateless, ttl, url, app_name, state_tokens), err=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        click.echo("edgernn: stopping", err=True)
    finally:
        _stop(ray, serve, app_name, own_cluster)


def _stop(ray: Any, serve: Any, app_name: str, own_cluster: bool) -> None:
    """Take down what this command started: the whole local cluster, or only the application on a given one. A
    second Ctrl-C while it stops does not interrupt the stopping."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if own_cluster:
            serve.shutdown()
        else:
            serve.delete(app_name)
        ray.shutdown()
    finally:
        signal.signal(signal.SIGINT, previous)


def _how_to(
    model: str, frame: Any, replicas: int, stateless: bool, ttl: float, url: str, app_name: str, tokens: bool = True
) -> str:
    body = json.dumps({"stream": "mic-1", "frame": frame})
    mode = (
        "stateless: send the response's state back with the next frame"
        if stateless
        else f"stateful: each stream stays on one replica (consistent hash of its id); idle streams forgotten "
        f"after {ttl:g} s"
    )
    lines = [
        f"edgernn: serving {model} on {replicas} replica(s) at {url} ({mode})",
        "send a frame:",
        f"  curl -s {url} -H 'content-type: application/json' -d '{body}'",
    ]
    if stateless:
        lines.append('  then: {"stream": "mic-1", "frame": [...], "state": <the "state" of the last response>}')
    else:
        lines.append('  "reset": true starts a stream again; "close": true forgets it after this frame')
        if tokens:
            lines.append(
                '  after a 503 or a lost replica: resend the frame with "token": <the "token" of the last response>'
            )
            lines.append(f"  or from Python: edgernn.serve.StreamClient({url!r}, 'mic-1').step(frame)")
    lines += [
        "from Python on this cluster:",
        f"  serve.get_app_handle({app_name!r}).remote({body}).result()",
        "Ctrl-C stops it.",
    ]
    return "\n".join(lines)
