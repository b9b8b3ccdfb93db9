"""Keys of normalised objects in the ``xpunet-k8s`` bucket (pure).

``<kind>.<namespace>.<name>`` for namespaced kinds, ``<kind>.<name>`` for
cluster-scoped ones.  Namespaces cannot contain dots, so a name with dots
(a node or pod name) is everything after the second token.  The watcher
writes these keys; the compilers read them back.
"""

from __future__ import annotations

from typing import Final

from xpunet.model.objects import Kind

NAMESPACED: Final[frozenset[Kind]] = frozenset(
    {Kind.POD, Kind.SERVICE, Kind.ENDPOINT_SLICE, Kind.NETWORK_POLICY}
)
DEFAULT_NAMESPACE: Final = "default"


def object_key(kind: Kind, namespace: str | None, name: str) -> str:
    """``<kind>.<namespace>.<name>`` for namespaced kinds, ``<kind>.<name>`` otherwise."""
    if kind in NAMESPACED:
        return f"{kind.value}.{namespace or DEFAULT_NAMESPACE}.{name}"
    return f"{kind.value}.{name}"


def parse_object_key(key: str) -> tuple[Kind, str | None, str] | None:
    """The inverse of :func:`object_key`: (kind, namespace or None, name); None for any other key."""
    kind_text, _, rest = key.partition(".")
    try:
        kind = Kind(kind_text)
    except ValueError:
        return None
    if not rest:
        return None
    if kind not in NAMESPACED:
        return kind, None, rest
    ns, _, name = rest.partition(".")
    return (kind, ns, name) if ns and name else None
