"""The runtime's commands, ``edgernn run`` and ``edgernn bench`` (added to the ``edgernn`` group by ``cli.py``).

Thin: each calls one library function. Importing this module imports neither torch nor onnxruntime, and
``run`` works on a device where torch is not installed (``bench --ckpt`` needs torch for the comparison).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any

import click
import numpy as np

from ..errors import ConfigError
from .common import echo_json, handle_errors, provider_options, session_kwargs

STATE_HELP = (
    "A state input->output pair and the initial state's shape, for models without an edgernn manifest: "
    "IN:OUT:SHAPE, e.g. h_in:h_out:2x1x64; write the batch axis as b (2xbx64) when the graph does not name it. "
    "Repeat for each state (h and c of an LSTM)."
)
LAYOUT_HELP = "Axes of the data input for models without an edgernn manifest, one letter each: btf, tbf, bf."
CONST_HELP = (
    "With --stream: the value of an input that is neither a state nor the data input, fed to every call "
    "(e.g. a sample rate): NAME=VALUE, VALUE a number or a comma list for a 1-D input. Repeat for each."
)


@click.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--input",
    "input_path",
    type=click.Path(),
    help=".npy (the data input; a 2-D array is one sequence), .npz (arrays by input name) or .csv "
    "(one sequence: rows are time steps, columns features); or a directory of .npy/.npz shards, each run as a "
    "file is, with --output DIR.",
)
@click.option(
    "--random",
    "random_steps",
    type=click.IntRange(min=1),
    is_flag=False,
    flag_value=20,
    default=None,
    help="Instead of --input: a seeded random input at the model's shapes (batch 1; T steps, default 20).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="With --random.")
@click.option("--lengths", "lengths_path", type=click.Path(dir_okay=False), help=".npy of sequence lengths (batch,).")
@click.option(
    "--output",
    "output_path",
    type=click.Path(),
    help=".npy (the first output), .npz (every output by name, final states included), .csv, or - to print every "
    "output, each under a '# NAME SHAPE' line; a directory for an input directory (one output per shard, same name).",
)
@click.option(
    "--no-header",
    is_flag=True,
    help="With --output -: print only the first output's numbers, without the '# NAME SHAPE' lines.",
)
@click.option(
    "--stream",
    is_flag=True,
    help="Read frames from stdin (one per line: comma- or space-separated floats) and write each output "
    "as it comes (one line per time step), for pipelines on a device. Needs a stateful model.",
)
@click.option("--binary", is_flag=True, help="With --stream: raw little-endian float32 frames in and out.")
@click.option("--state", "states", multiple=True, metavar="IN:OUT:SHAPE", help=STATE_HELP)
@click.option("--layout", default=None, help=LAYOUT_HELP)
@click.option("--const", "consts", multiple=True, metavar="NAME=VALUE", help=CONST_HELP)
@click.option(
    "--ray",
    "use_ray",
    is_flag=True,
    help="With an input directory: run the shards on Ray Data, in a pool of actors each holding one session (a local "
    "Ray cluster, or the one RAY_ADDRESS names). Needs edgernn[ray].",
)
@click.option(
    "--actors",
    type=click.IntRange(min=1),
    default=None,
    help="With --ray: actors in the pool (default 1); each reserves --threads CPUs.",
)
@click.option(
    "--ray-timeout",
    type=float,
    default=None,
    help="With --ray: seconds to wait for Ray to start (or for the cluster to answer); default 120, at most 3600.",
)
@provider_options
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report (stderr with --stream).")
@handle_errors
def run(
    model: str,
    input_path: str | None,
    random_steps: int | None,
    seed: int,
    lengths_path: str | None,
    output_path: str | None,
    stream: bool,
    binary: bool,
    states: tuple[str, ...],
    layout: str | None,
    consts: tuple[str, ...],
    use_ray: bool,
    actors: int | None,
    ray_timeout: float | None,
    as_json: bool,
    no_header: bool,
    **session: Any,
) -> None:
    """Run an ONNX model (edgernn's, or any other) with onnxruntime on a file, a directory of shards or a live
    stream.

    \b
    edgernn run model.onnx --input x.npy --output y.npy
    edgernn run model.onnx --input shards/ --output out/ --ray --actors 4
    edgernn run model.onnx --input x.csv --output y.csv --provider cuda --fallback cpu
    sensor | edgernn run step.onnx --stream
    edgernn run their.onnx --stream --state initial_h:Y_h:1x1x64 --layout tbf
    edgernn run vad.onnx --stream --state state:stateN:2xbx128 --const sr=16000
    """
    from ..runtime import io
    from ..runtime.model import Model
    from ..runtime.stream import parse_constant

    if input_path and os.path.isdir(input_path):
        if stream or random_steps or lengths_path or consts or binary:
            raise ConfigError(
                "an input directory runs each shard as a file; drop --stream/--random/--lengths/--const (a shard's "
                "lengths go in it: a .npz with x and lengths)"
            )
        if ray_timeout is not None:
            if not use_ray:
                raise ConfigError("--ray-timeout goes with --ray")
            from ..serve.ray import check_ray_timeout

            check_ray_timeout(ray_timeout)
        _run_directory(model, input_path, output_path, use_ray, actors, states, layout, as_json, session, ray_timeout)
        return
    if use_ray or actors is not None or ray_timeout is not None:
        raise ConfigError("--ray, --actors and --ray-timeout run a directory of shards: --input DIR --output DIR")
    if stream and (input_path or output_path or lengths_path or random_steps):
        raise ConfigError("--stream reads stdin and writes stdout; drop --input/--random/--output/--lengths")
    if no_header and output_path != "-":
        raise ConfigError("--no-header goes with --output - (printed output)")
    if binary and not stream:
        raise ConfigError("--binary goes with --stream")
    if consts and not stream:
        raise ConfigError("--const goes with --stream (a run on --input takes its inputs from the file)")
    constants = dict(parse_constant(c) for c in consts)
    if len(constants) != len(consts):
        raise ConfigError("--const names an input twice; give each constant once")
    if input_path and random_steps:
        raise ConfigError("give --input or --random, not both")
    for given in (input_path, lengths_path, model):
        if given and output_path and output_path != "-" and os.path.realpath(given) == os.path.realpath(output_path):
            raise ConfigError(f"--output {output_path!r} is an input of this command; write the output elsewhere")
    if not stream and (not (input_path or random_steps) or not output_path):
        raise ConfigError(
            "give --input FILE (or --random) and --output FILE (or --output - to print), or --stream to read stdin"
        )
    # the frame check (x . 0 is NaN for NaN/inf) makes numpy warn about an inf just before the InputError says so
    warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
    m = Model(model, **session_kwargs(**session))
    if stream:
        sm = io.streaming_model(m, list(states), layout, constants)
        if sm is None:
            raise ConfigError(
                "--stream needs a stateful model: export with --strategy step, or name its states with --state"
            )
        fed = "".join(f", {k}={v.tolist()}" for k, v in sm.constants.items())
        click.echo(
            f"edgernn: streaming on {m.choice.describe()}; {sm.chunk or 1} step(s) per call, "
            f"{sm.features or '?'} features per frame{fed}",
            err=True,
        )
        out = sys.stdout.buffer if binary else sys.stdout
        src = sys.stdin.buffer if binary else sys.stdin
        frames = io.run_stream(sm, src, out, binary=binary, notes=sys.stderr)
        if as_json:
            click.echo(json.dumps({"provider": m.choice.to_dict(), "frames": frames, "streaming": True}), err=True)
        return
    if not output_path:  # checked above; tells the type checker
        raise ConfigError("give --output")
    result = io.run_file(
        m, input_path, lengths_path, states=list(states), layout=layout, random_steps=random_steps, seed=seed
    )
    if output_path == "-":  # CSV rows on stdout: every output under a header line, or the primary one bare
        names = [result.primary] if no_header else [result.primary, *(n for n in result.outputs if n != result.primary)]
        for name in names:
            y = np.asarray(result.outputs[name])
            if not no_header:
                click.echo(f"# {name} {tuple(y.shape)}")
            for row in y.reshape(-1, y.shape[-1]) if y.ndim > 1 else y.reshape(1, -1):
                click.echo(io.format_row(row))
        return
    io.write_outputs(output_path, result.outputs, result.primary)
    if as_json:
        echo_json({**result.to_dict(), "output_path": output_path})
    else:
        y = result.outputs[result.primary]
        click.echo(
            f"wrote {result.primary} {tuple(y.shape)} to {output_path} "
            f"({result.seconds * 1e3:.2f} ms on {m.choice.describe()})"
        )


@click.command("bench")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--ckpt", type=click.Path(), default=None, help="The checkpoint: also time torch eager on the same inputs."
)
@provider_options
@click.option("--steps", type=click.IntRange(min=1), default=500, show_default=True, help="Timed single-step calls.")
@click.option("--seq-len", type=click.IntRange(min=1), default=100, show_default=True, help="Steps per sequence.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Sequences per call.")
@click.option("--repeats", type=click.IntRange(min=1), default=20, show_default=True, help="Timed sequences.")
@click.option(
    "--rounds",
    type=click.IntRange(min=1, max=100),
    default=None,
    help="Rounds for the spread: the calls split into this many (default 5); with --against, turns of each file "
    "(default 3).",
)
@click.option("--state", "states", multiple=True, metavar="IN:OUT:SHAPE", help=STATE_HELP)
@click.option("--layout", default=None, help=LAYOUT_HELP)
@click.option(
    "--against",
    type=click.Path(dir_okay=False),
    default=None,
    help="Another file of the same model (e.g. its int8 version): both timed in turns, sizes and speeds as ratios.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def bench(
    model: str,
    ckpt: str | None,
    against: str | None,
    steps: int,
    seq_len: int,
    batch: int,
    repeats: int,
    rounds: int | None,
    states: tuple[str, ...],
    layout: str | None,
    as_json: bool,
    **session: Any,
) -> None:
    """Latency per step and per sequence (p50, p95), throughput and peak memory of MODEL on onnxruntime; with
    --ckpt, torch eager on the same inputs in the same run, as ratios. Each figure comes with its spread (the
    fastest and slowest round) and the machine's load: timings belong to this machine at this moment."""
    from ..manifest import json_text
    from ..verify.bench import ROUNDS, bench_against, format_against
    from ..verify.bench import bench as run_bench

    if against is not None:
        if ckpt is not None:
            raise ConfigError("--against compares two files; drop --ckpt (or bench each file with it)")
        result = bench_against(
            model,
            against,
            **session_kwargs(**session),
            steps=steps,
            seq_len=seq_len,
            batch=batch,
            repeats=repeats,
            states=list(states),
            layout=layout,
            **({"rounds": rounds} if rounds else {}),
        )
        click.echo(json_text(result, indent=2, sort_keys=True) if as_json else format_against(result))
        return
    report = run_bench(
        model,
        ckpt=ckpt,
        **session_kwargs(**session),
        steps=steps,
        seq_len=seq_len,
        batch=batch,
        repeats=repeats,
        states=list(states),
        layout=layout,
        rounds=rounds or ROUNDS,
    )
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.format())


def _run_directory(
    model: str,
    input_dir: str,
    output_dir: str | None,
    use_ray: bool,
    actors: int | None,
    states: tuple[str, ...],
    layout: str | None,
    as_json: bool,
    session: dict[str, Any],
    ray_timeout: float | None = None,
) -> None:
    """``edgernn run --input DIR --output DIR [--ray]``: every shard, one output each, a progress bar on a terminal;
    shards the model refuses are listed and the command exits with the first one's code (the others are written)."""
    if not output_dir or output_dir == "-":
        raise ConfigError("an input directory needs --output DIR (one output file per shard, same name)")
    if os.path.splitext(output_dir)[1].lower() in io_formats() and not os.path.isdir(output_dir):
        raise ConfigError(f"--output {output_dir!r} looks like a file; an input directory needs an output directory")
    if actors is not None and not use_ray:
        raise ConfigError("--actors goes with --ray (without it, shards run one after the other in this process)")
    if session.get("save_optimized"):
        raise ConfigError("--save-optimized takes one model file; run a single --input to write it")
    from ..batch.shards import list_shards

    kwargs = session_kwargs(**session)
    from ..progress import quieted

    total = len(list_shards(input_dir)[0])
    tty = not as_json and sys.stderr.isatty() and not quieted()  # --quiet: no bar either
    sink: Any = sys.stderr if tty else _Null()
    bar = click.progressbar(length=total, label="shards", file=sink)
    with bar:

        def advance(entry: dict[str, Any]) -> None:
            bar.update(1)

        if use_ray:
            import logging

            from ..batch.ray import run_directory_ray
            from ..serve.ray import require_ray

            require_ray("data")  # its import sets up Ray Data's loggers, which log every dataset's plan and progress
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            result = run_directory_ray(
                model,
                input_dir,
                output_dir,
                concurrency=actors or 1,
                session=kwargs,
                states=states,
                layout=layout,
                progress=advance,
                **({} if ray_timeout is None else {"ray_timeout_s": ray_timeout}),
            )
        else:
            from ..batch.shards import run_directory

            result = run_directory(
                model, input_dir, output_dir, session=kwargs, states=states, layout=layout, progress=advance
            )
    if as_json:
        echo_json({**result.to_dict(), "output_dir": output_dir})
    else:
        written = len(result.shards) - len(result.failed)
        rate = len(result.shards) / result.seconds if result.seconds > 0 else float("inf")
        skipped = f"; skipped {len(result.skipped)} other file(s)" if result.skipped else ""
        click.echo(
            f"wrote {written} of {len(result.shards)} shard output(s) to {output_dir} in {result.seconds:.2f} s "
            f"({rate:.1f} shards/s, {result.where}){skipped}"
        )
    for entry in sorted(result.failed, key=lambda e: e["name"]):
        click.echo(f"error: {entry['name']}: {entry['error']}", err=True)
    if result.failed:
        raise click.exceptions.Exit(min(e["code"] for e in result.failed))


def io_formats() -> tuple[str, ...]:
    from ..runtime.io import OUTPUT_FORMATS

    return OUTPUT_FORMATS


class _Null:
    """A sink for the progress bar off a terminal."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


# what `edgernn.cli` adds to the `edgernn` group
COMMANDS: list[click.Command] = [run, bench]
