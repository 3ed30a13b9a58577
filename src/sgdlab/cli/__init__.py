"""The ``sgdlab`` command; the only place argv is parsed.

Every command takes ``--help``. ``--json`` prints one JSON object as the last line of stdout.
Bad input prints one line ``error: …`` on stderr and exits with status 2, leaving existing
results untouched.

One module per command: :mod:`~sgdlab.cli.train`, :mod:`~sgdlab.cli.catalogue` (``list``),
:mod:`~sgdlab.cli.report`, :mod:`~sgdlab.cli.theory`, :mod:`~sgdlab.cli.testbed`,
:mod:`~sgdlab.cli.dist`, :mod:`~sgdlab.cli.hogwild` and :mod:`~sgdlab.cli.bench`; every
command's options are generated from its config dataclass (:mod:`~sgdlab.cli.options`).
"""

from __future__ import annotations

import os
import sys

import typer
from typer.exceptions import Abort, Exit, TyperException

from sgdlab.cli import bench, catalogue, dist, hogwild, report, testbed, theory, train
from sgdlab.errors import SgdlabError

app = typer.Typer(
    name="sgdlab",
    help="Train with stochastic gradients, benchmark optimizers, and check convergence bounds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(bench.app, name="bench")
app.add_typer(theory.app, name="theory")
train.register(app)
catalogue.register(app)
report.register(app)
app.add_typer(testbed.app, name="testbed")
dist.register(app)
hogwild.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning every user error into ``error: …`` and exit 2."""
    try:
        rv = app(args=argv, standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except Exit as exc:
        return exc.exit_code
    except Abort:
        sys.stderr.write("error: aborted\n")
        return 130
    except TyperException as exc:
        sys.stderr.write(f"error: {exc.format_message().splitlines()[0]}\n")
        return 2
    except (SgdlabError, ValueError, OSError) as exc:  # OSError: a bad path (--out is a file)
        if os.environ.get("SGDLAB_DEBUG"):
            raise
        sys.stderr.write(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130

