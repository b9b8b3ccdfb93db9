"""Intent-bucket key helpers shared by every compiler and the datapath (pure).

A node's intents live under ``node.<token>.`` where the token is the node name
with dots replaced by underscores.  Node names are DNS subdomains
(``[a-z0-9.-]``), so the mapping is one-to-one, and without it the prefix of
node ``a`` (``node.a.``) would also cover the keys of node ``a.b``.
"""

from __future__ import annotations


def node_token(node: str) -> str:
    """The single key token that stands for ``node``."""
    return node.replace(".", "_")


def node_prefix(node: str) -> str:
    """``node.<token>.``: the prefix of every intent key of one node."""
    return f"node.{node_token(node)}."
