"""The knobs of ``sgdlab testbed up | down | status``: each field's
:func:`~sgdlab.run.config.option` metadata is its command-line option, and each default is the
one :meth:`Testbed.up <sgdlab.testbed.netns.Testbed.up>` itself has (read from its signature,
so it is written once)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

from sgdlab.run.config import option
from sgdlab.testbed.links import DEFAULT_NAME
from sgdlab.testbed.netns import DEFAULT_STATE_DIR, Testbed

_UP = inspect.signature(Testbed.up).parameters


@dataclass(kw_only=True)
class TestbedConfig:
    """A testbed to build (``up``); ``down`` and ``status`` take its ``name`` and ``state_dir``."""

    __test__ = False  # not a test class, whatever pytest makes of the name

    hosts: int = field(metadata=option("Number of hosts (namespaces)."))
    rate: str = field(default=_UP["rate"].default,
                      metadata=option("Link rate, tc bit units: 200mbit, 1gbit; none."))
    burst: int | None = field(default=_UP["burst"].default,
                              metadata=option("tbf bucket, bytes (default: 1 ms, >= 96 KiB)."))
    latency_ms: float = field(default=_UP["latency_ms"].default,
                              metadata=option("tbf queue bound, ms."))
    # Testbed.up's limit_ingress, turned round: the flag says what it changes.
    egress_only: bool = field(default=not _UP["limit_ingress"].default,
                              metadata=option("Shape only what hosts send."))
    delay_ms: float = field(default=_UP["delay_ms"].default,
                            metadata=option("One-way delay, ms (needs netem)."))
    name: str = field(default=DEFAULT_NAME,
                      metadata=option("Testbed name (namespaces sgdl-NAME-*)."))
    state_dir: Path = field(default=DEFAULT_STATE_DIR, metadata=option("Folder of the state file."))
