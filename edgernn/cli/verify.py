"""``edgernn verify``: check an exported model against its golden file on the device, without torch.

Imports click, numpy and edgernn's torch-free modules only; the golden file holds the torch outputs.
"""

from __future__ import annotations

from typing import Any

import click

from ..errors import ConfigError, ParityError
from ..manifest import json_text
from .common import echo_json, handle_errors, provider_options, require_model_file, session_kwargs


@click.command("verify")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--golden",
    "golden_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="The golden file `edgernn export --golden` wrote (default: MODEL.golden.npz beside MODEL).",
)
@provider_options
@click.option(
    "--atol", type=click.FloatRange(min=0), default=None, help="Absolute tolerance (default: the golden file's)."
)
@click.option(
    "--rtol", type=click.FloatRange(min=0), default=None, help="Relative tolerance (default: the golden file's)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def verify(
    model: str, golden_file: str | None, atol: float | None, rtol: float | None, as_json: bool, **session: Any
) -> None:
    """Run MODEL on onnxruntime on the inputs of its golden file and compare every output with the torch outputs
    recorded at export (a step export is streamed chunk by chunk). Needs numpy and onnxruntime only.

    Exits 0 when every case is within tolerance and 5 when any is not, or when the golden file was made from
    other weights than MODEL's. A task golden file (`edgernn quantize --golden`) judges a reduced file by its task
    instead: the metric computed here against the fp32 metric recorded at export, exit 5 when the loss is over the
    budget or the metric is not finite.

    \b
    edgernn verify model.onnx --golden model.golden.npz
    edgernn verify model.onnx --provider nnapi --fallback cpu --json
    """
    require_model_file(model)
    from ..runtime.model import Model
    from ..verify.golden import golden_path, read_golden, verify_golden
    from ..verify.task_golden import format_verdict, is_task_golden, verify_task

    where = golden_file if golden_file is not None else golden_path(model)
    if is_task_golden(where):  # a reduced file's task golden: the task metric here against the budget
        if atol is not None or rtol is not None:
            raise ConfigError("a task golden file is judged by its task metric and budget; drop --atol/--rtol")
        verdict = verify_task(Model(model, **session_kwargs(**session)), where)
        click.echo(
            json_text({**verdict, "model": model, "golden": str(where)}, indent=2, sort_keys=True)
            if as_json
            else format_verdict(verdict)
        )
        if not verdict["passed"]:
            raise click.exceptions.Exit(ParityError.exit_code)
        return
    golden = read_golden(where)
    m = Model(model, **session_kwargs(**session))
    report = verify_golden(m, golden, atol=atol, rtol=rtol)
    meta = golden.meta
    if as_json:
        echo_json(
            {
                **report.to_dict(),
                "model": model,
                "golden": str(golden.path),
                "provider": m.choice.to_dict(),
                "recorded": {k: meta.get(k) for k in ("edgernn_version", "strategy", "weights_sha256", "cases")},
            }
        )
    else:
        click.echo(
            f"golden {golden.path}: {len(golden.cases)} case(s) recorded by edgernn {meta.get('edgernn_version')} "
            f"from the {golden.strategy} export; {model} on {m.choice.describe()}"
        )
        click.echo(report.table())
    if not report.passed:
        raise click.exceptions.Exit(ParityError.exit_code)


# what `edgernn.cli.main` adds to the `edgernn` group
COMMANDS: list[click.Command] = [verify]
