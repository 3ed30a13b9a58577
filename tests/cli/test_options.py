"""Every command's options come from a config dataclass: each option of each registered command
was made from a field (or is one of the few listed below that belong to no config), and its
default on the command line is that field's default."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from typing import Any

import typer
import typer.main

from sgdlab.cli import app, options

# Options that are no field of a config: the ones every command shares, and the smallbatch
# suite's folder and database (they go to run_smallbatch beside its plan).
SHARED = {"json_", "set_"}
OWN = {"bench smallbatch": {"db", "out"}}


def _commands(group: typer.Typer, path: str = "") -> Iterator[tuple[str, Any]]:
    for info in group.registered_commands:
        yield f"{path}{info.name}", info.callback
    for sub in group.registered_groups:
        assert sub.typer_instance is not None
        yield from _commands(sub.typer_instance, f"{path}{sub.name} ")


def _click_params(path: str) -> dict[str, Any]:
    cmd: Any = typer.main.get_command(app)
    for name in path.split():
        cmd = cmd.commands[name]
    return {p.name: p for p in cmd.params}


def _field_default(cls: type, name: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if "cli_default" in f.metadata:
        return f.metadata["cli_default"]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def test_every_option_is_a_config_field_with_its_default() -> None:
    commands = dict(_commands(app))
    assert len(commands) >= 17 and "bench quick" in commands and "testbed up" in commands
    wrong = []
    for path, callback in commands.items():
        clicked = _click_params(path)
        for param in inspect.signature(callback).parameters.values():
            if param.annotation is typer.Context:  # typer's context, handed in: no option
                continue
            origin = options.option_field(param)
            if origin is None:
                if param.name not in SHARED | OWN.get(path, set()):
                    wrong.append(f"{path} --{param.name}: written by hand, not from a config")
                continue
            cls, name = origin
            default, given = _field_default(cls, name), clicked[param.name]
            required = default is dataclasses.MISSING
            if given.required != required or (not required and given.default != default):
                wrong.append(f"{path} --{param.name}: default {given.default!r}, "
                             f"{cls.__name__}.{name} has {default!r}")
    assert not wrong, wrong


def test_a_hand_written_option_is_seen() -> None:
    extra = typer.Typer()
    options.command(extra, "x", "doc", [
        *options.from_config(options_probe(), "a"),
        options.param("b", Any, 1),
    ], lambda **values: None)
    (info,) = extra.registered_commands
    params = inspect.signature(info.callback).parameters  # type: ignore[arg-type]
    assert options.option_field(params["a"]) == (options_probe(), "a")
    assert options.option_field(params["b"]) is None


@dataclasses.dataclass
class _Probe:
    a: int = dataclasses.field(default=2, metadata={"help": "A knob."})


def options_probe() -> type:
    return _Probe


def test_a_config_and_the_function_it_calls_agree_on_defaults() -> None:
    """A function behind a command keeps defaults for its callers in Python; they are the
    config's (but where listed: the command draws its figure, the function only when asked)."""
    from sgdlab.cli import theory, theory_biased, theory_sgd
    from sgdlab.distributed.launch import launch
    from sgdlab.experiments import biased_practice, configs, hogwild, overlap
    from sgdlab.run import hogwild as run_hogwild
    from sgdlab.run.config import HogwildRunConfig, LaunchConfig
    from sgdlab.testbed.config import TestbedConfig
    from sgdlab.testbed.netns import Testbed

    pairs: list[tuple[type, Any, set[str]]] = [
        (theory.SgdBoundConfig, theory_sgd.sgd_bound_report, set()),
        (theory.BiasedSgdConfig, theory_biased.biased_sgd_report, set()),
        (theory.ScheduleConfig, theory_biased.schedule_report, set()),
        (configs.BiasedSgdBenchConfig, biased_practice.practice_report, {"plot"}),
        (configs.HogwildBenchConfig, hogwild.hogwild_bench, set()),
        (configs.OverlapBenchConfig, overlap.overlap_benchmark, set()),
        (HogwildRunConfig, run_hogwild.hogwild_once, {"workload_options"}),  # None or {}: none
        (TestbedConfig, Testbed.up, set()),
        (LaunchConfig, launch, set()),  # addr (launch's timeout_s is its bare API's, 300 s)
    ]
    wrong = []
    for cls, fn, differ in pairs:
        fields = {f.name for f in dataclasses.fields(cls)}
        for name, p in inspect.signature(fn).parameters.items():
            if name in fields and name not in differ and p.default is not p.empty:
                if p.default != _field_default(cls, name):
                    wrong.append(f"{cls.__name__}.{name}: {_field_default(cls, name)!r}, "
                                 f"{fn.__qualname__} {p.default!r}")
    assert not wrong, wrong
