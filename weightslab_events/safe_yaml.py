"""Reading YAML from a root that may be damaged or crafted: no aliases, so no "billion laughs".

YAML's aliases (``*a``) share one node between many places: nine lines of nested aliases load
as a small graph that every walk over it (a hash, a dump, a table) expands into 10^9 items, and
a self-referencing alias never ends. The files this library writes (configs, manifests) never
use aliases, so a file that does is damaged or crafted: loading it is refused with a
:class:`yaml.YAMLError` (callers already treat that as "damaged"), never a hang in a command or
in training code. Libyaml's bounded nesting depth applies too (a deeper file is refused).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError

__all__ = ["AliasRefusedError", "load"]

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class AliasRefusedError(ConstructorError):
    """The YAML text refers to a node twice (an alias): refused, as no file of ours has one."""


class _NoAliasLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """The safe loader (libyaml's when present), refusing any node constructed a second time."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if node in self.constructed_objects or node in self.recursive_objects:
            raise AliasRefusedError(
                None, None, "it uses a YAML alias (*name), which files of weightslab-events never do", node.start_mark
            )
        return super().construct_object(node, deep)


def load(text: str | bytes) -> Any:
    """The YAML document in ``text`` with the safe loader; an alias raises :class:`AliasRefusedError`."""
    return yaml.load(text, Loader=_NoAliasLoader)
