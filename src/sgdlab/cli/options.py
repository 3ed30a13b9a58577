"""What every command shares: options generated from the config dataclasses, the common
options (``--db``, ``--json``, ``--set``), and the one JSON line ``--json`` prints.

A config field becomes an option from its type, its default and the ``help`` of its metadata
(:func:`sgdlab.run.config.option`), so a knob is written once, in its dataclass, and
:func:`command` builds the typer command whose parameters those options are.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

Param = inspect.Parameter
DbOption = Annotated[Path, typer.Option("--db", help="Results database (SQLite).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]


def param(name: str, annotation: Any, default: Any = Param.empty) -> Param:
    """One command parameter: ``annotation`` is ``Annotated[type, typer.Option(...)]``."""
    return Param(name, Param.KEYWORD_ONLY, annotation=annotation, default=default)


def from_config(cls: type, *names: str) -> list[Param]:
    """The options of ``cls``'s fields ``names``, in that order (none: every field that has an
    option, in the class's order): the field's type and default, and its metadata's help,
    flags, parameter name, and command-line type and default.

    Each option remembers its field (:func:`option_field`), so a test can check them all."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = []
    for name in names or [f.name for f in fields.values() if "help" in f.metadata]:
        f = fields[name]
        meta = f.metadata
        default = meta.get("cli_default", Param.empty if f.default is dataclasses.MISSING
                           else f.default)
        option = typer.Option(*meta.get("flags", ()), help=meta["help"])
        option.config_field = (cls, name)
        params.append(param(meta.get("name") or name,
                            Annotated[meta.get("cli_type", hints[name]), option], default))
    return params


def option_field(parameter: Param) -> tuple[type, str] | None:
    """The config class and field a parameter of :func:`from_config` was made from, else None."""
    infos = getattr(parameter.annotation, "__metadata__", ())
    return next((info.config_field for info in infos if hasattr(info, "config_field")), None)


def config_values(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The command's values of ``cls``'s options, by field name (undoing :func:`from_config`'s
    parameter names, and parsing where the field's option says how)."""
    out = {}
    for f in dataclasses.fields(cls):
        key = f.metadata.get("name") or f.name
        if key in values:
            parse = f.metadata.get("parse")
            out[f.name] = values[key] if parse is None else parse(values[key])
    return out


def command(
    app: typer.Typer, name: str, doc: str, params: Sequence[Param], body: Callable[..., None]
) -> None:
    """Register ``body(**values)`` as command ``name`` of ``app`` with these parameters."""

    def run(**values: Any) -> None:
        body(**values)

    run.__signature__ = inspect.Signature(list(params))  # type: ignore[attr-defined]
    run.__doc__ = doc
    run.__name__ = name.replace("-", "_")
    app.command(name)(run)


def config_command(
    app: typer.Typer, name: str, cls: type, body: Callable[[Any, bool], None], *names: str
) -> None:
    """Register command ``name``: the options of ``cls``'s fields ``names`` (none: all of them)
    and ``--json``; it runs ``body(cls(...), json_)``, and its help is ``body``'s docstring."""

    def run(*, json_: bool, **values: Any) -> None:
        body(cls(**config_values(cls, values)), json_)

    command(app, name, body.__doc__ or "", [*from_config(cls, *names), json_option()], run)


def json_option() -> Param:
    return param("json_", JsonOption, False)


def set_option(help: str) -> Param:
    return param("set_", Annotated[list[str] | None, typer.Option("--set", help=help)], None)


def emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")


def show(obj: dict[str, Any], json_: bool, for_people: Callable[[dict[str, Any]], Any]) -> None:
    """``--json``: ``obj`` as the one JSON line; otherwise ``for_people(obj)``."""
    if json_:
        emit_json(obj)
    else:
        for_people(obj)


def parse_sets(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``key=value`` → optimizer hyperparameters; ``workload.key=value`` → workload options."""
    opt: dict[str, Any] = {}
    wl: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"--set takes key=value, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, list):
            value = tuple(value)
        if key.startswith("workload."):
            wl[key.removeprefix("workload.")] = raw
        else:
            opt[key] = value
    return opt, wl
