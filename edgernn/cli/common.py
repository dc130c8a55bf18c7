"""What every edgernn command shares: errors as one line and an exit code, and the provider/session options.

Imports click and edgernn's torch-free modules only, so runtime commands work on a device without torch.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import CheckpointError, ConfigError, EdgeRNNError, ModelFormatError
from ..runtime.providers import OPTIMIZATION_LEVELS, PROVIDERS

F = TypeVar("F", bound=Callable[..., Any])


# an optional package a command imports -> the extra that installs it
EXTRAS = {"torch": "torch", "onnxscript": "torch", "onnx_ir": "torch", "openvino": "openvino", "matplotlib": "plot",
          "tritonclient": "triton", "ray": "ray"}  # fmt: skip
MISSING_PACKAGE = 10  # exit code: the command needs a package this install lacks
INTERNAL_ERROR = 70  # exit code: an error edgernn did not foresee (EX_SOFTWARE); --debug shows the traceback


_DEBUG = {"flag": False}  # set by `edgernn --debug` for the command being run


def set_debug(on: bool) -> None:
    _DEBUG["flag"] = on


def debugging() -> bool:
    return _DEBUG["flag"] or os.environ.get("EDGERNN_DEBUG", "") not in ("", "0")


def handle_errors(f: F) -> F:
    """Every way a command can fail, as one line and an exit code, without a traceback:

    - an ``EdgeRNNError``: ``error: <message>`` and the error's own exit code;
    - a package the command needs and this install lacks: which extra installs it (exit 10);
    - a closed downstream pipe (``edgernn run --stream | head``): ends quietly;
    - anything else: ``edgernn: internal error: <one line>; rerun with --debug`` (exit 70); ``--debug`` or
      ``EDGERNN_DEBUG=1`` lets the traceback through instead.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except EdgeRNNError as e:
            click.echo(f"error: {e}", err=True)
            raise click.exceptions.Exit(e.exit_code) from None
        except BrokenPipeError:
            sys.stderr.close()  # nothing left to tell; keep Python from complaining at exit
            raise click.exceptions.Exit(0) from None
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except OSError as e:  # the environment: disk full, read-only, no permission, a path that vanished
            if debugging() or e.errno is None:
                raise
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"error: {where}{e.strerror or e}", err=True)
            raise click.exceptions.Exit(1) from None
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            if top not in EXTRAS or debugging():
                raise
            click.echo(
                f"error: this command needs {top}, which is not installed here: pip install 'edgernn[{EXTRAS[top]}]'",
                err=True,
            )
            raise click.exceptions.Exit(MISSING_PACKAGE) from None
        except Exception as e:
            if debugging():
                raise
            first = (str(e).strip().splitlines() or [""])[0][:300]
            click.echo(
                f"edgernn: internal error: {type(e).__name__}: {first}; rerun with --debug for the traceback "
                "(and report it)",
                err=True,
            )
            raise click.exceptions.Exit(INTERNAL_ERROR) from None

    return wrapper  # type: ignore[return-value]


CHECKPOINT_NAME = "model.ckpt"  # what a training directory holds (edgernn.model.checkpoint.DEFAULT_NAME)


def require_model_file(path: str | os.PathLike[str] | None) -> None:
    """ModelFormatError (exit 6) for a model file that is not there: checked before a command imports onnx,
    onnxruntime or torch, so a mistyped path fails at once."""
    if path is not None and not os.path.isfile(path):
        raise ModelFormatError(f"no model file at {os.fspath(path)!r}")


def require_checkpoint(path: str | os.PathLike[str] | None) -> None:
    """CheckpointError (exit 3) for a checkpoint that is not there (a file, or a training directory holding
    model.ckpt), before torch is imported; the checkpoint loader says the same."""
    if path is None:
        return
    p = os.fspath(path)
    if not (os.path.isfile(p) or os.path.isfile(os.path.join(p, CHECKPOINT_NAME))):
        raise CheckpointError(f"no checkpoint at {p!r} (expected a file, or a directory with {CHECKPOINT_NAME})")


def provider_options(f: F) -> F:
    """--provider, --fallback, --threads, --optimization, --save-optimized, --provider-option."""
    options = [
        click.option(
            "--provider",
            type=click.Choice(["auto", *PROVIDERS]),
            default="cpu",
            show_default=True,
            help="onnxruntime execution provider; auto takes the best one this build has. "
            "Asking for one that is missing is an error unless --fallback is given.",
        ),
        click.option(
            "--fallback",
            type=click.Choice(list(PROVIDERS)),
            default=None,
            help="Provider to use when --provider is missing or fails to start (reported, never silent).",
        ),
        click.option(
            "--threads",
            type=click.IntRange(min=0),
            default=1,
            show_default=True,
            help="Intra-op threads; 1 is fastest for batch-1 streaming. 0 lets onnxruntime decide.",
        ),
        click.option(
            "--optimization",
            type=click.Choice(list(OPTIMIZATION_LEVELS)),
            default="all",
            show_default=True,
            help="onnxruntime graph optimisation level.",
        ),
        click.option(
            "--save-optimized",
            type=click.Path(dir_okay=False),
            default=None,
            help="Write the model as onnxruntime optimised it to this path.",
        ),
        click.option(
            "--provider-option",
            "provider_option",
            multiple=True,
            metavar="KEY=VALUE",
            help="An option for the chosen provider, e.g. device_id=1 (repeatable).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def session_kwargs(
    provider: str,
    fallback: str | None,
    threads: int,
    optimization: str,
    save_optimized: str | None,
    provider_option: tuple[str, ...],
) -> dict[str, Any]:
    """The keyword arguments of ``edgernn.runtime.Model`` from the options above."""
    opts: dict[str, str] = {}
    for item in provider_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--provider-option {item!r} must be KEY=VALUE, e.g. device_id=1")
        opts[key.strip()] = value.strip()
    if opts and provider == "auto":
        raise ConfigError("--provider-option needs a named --provider (auto does not say which provider they are for)")
    return {
        "provider": provider,
        "fallback": fallback,
        "threads": threads or None,
        "optimization": optimization,
        "optimized_model_path": save_optimized,
        "provider_options": {provider: opts} if opts else None,
    }


def echo_json(data: Any) -> None:
    from ..manifest import json_text

    click.echo(json_text(data, indent=2, sort_keys=True))


def with_progress(command: click.Command, name: str | None = None, *, watch: bool = True) -> click.Command:
    """``--quiet`` and ``--verbose`` on ``command`` (a click command already made), and progress on stderr while
    it runs: stage lines prefixed with the command's ``name``, at least every 10 s off a terminal, a status line on
    one (``edgernn.progress``). ``watch`` (default) lets the heartbeat speak for the command as a whole before any
    stage (``still running (N s)``); a command that waits for its user (a server, a stream read from stdin) is not
    watched. stdout (the result, ``--json``) is never written to."""
    if any(p.name in ("quiet", "verbose") for p in command.params):
        return command  # already wrapped
    name = name or command.name or ""
    command.params.extend(
        [
            click.Option(["--quiet"], is_flag=True, help="Only errors and the result: no progress on stderr."),
            click.Option(["--verbose"], is_flag=True, help="More progress on stderr: each stage with its timing."),
        ]
    )
    callback = command.callback
    if callback is None:
        return command

    @functools.wraps(callback)
    def run(*args: Any, quiet: bool = False, verbose: bool = False, **kwargs: Any) -> Any:
        from .. import progress

        if quiet and verbose:
            raise click.UsageError("--quiet and --verbose contradict each other; give one of them")
        level = progress.level_for(quiet, verbose)
        if level is None:  # EDGERNN_PROGRESS=0: progress left off, as for a Python caller
            return callback(*args, **kwargs)
        with progress.reporting(level, prefix=f"{name}: " if name else "", label="running" if watch else None):
            return callback(*args, **kwargs)

    command.callback = run
    return command


def leaf_commands(group: click.Group, path: str = "") -> list[tuple[str, click.Command]]:
    """Every command under ``group`` that runs (not a group), with its name as typed (``serve triton``)."""
    out: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        full = f"{path} {name}".strip()
        if isinstance(command, click.Group):
            out.extend(leaf_commands(command, full))
        else:
            out.append((full, command))
    return out
