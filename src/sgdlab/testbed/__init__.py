"""A slow network on this machine for the distributed methods: network namespaces, veth pairs
and ``tc tbf`` (root only). Apart from the algorithms: a rank learns of it only through the
launch options :func:`launch_options` gives ``sgdlab dist --testbed``.

- :mod:`~sgdlab.testbed.links`: names, addresses, rates and the commands (pure);
- :mod:`~sgdlab.testbed.netns`: :class:`Testbed`, built, found and torn down;
- :mod:`~sgdlab.testbed.probe`: TCP and gloo measurements inside a built testbed.
"""

from sgdlab.errors import TestbedError
from sgdlab.testbed.links import parse_rate, tcp_goodput
from sgdlab.testbed.netns import Testbed, launch_options, teardown

__all__ = ["Testbed", "TestbedError", "launch_options", "parse_rate", "tcp_goodput", "teardown"]
