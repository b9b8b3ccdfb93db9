"""Errors raised when an API object cannot be normalised."""

from __future__ import annotations


class ModelError(ValueError):
    """An object is malformed.  The message names the object and the field."""

    def __init__(self, kind: str, ref: str, field: str, problem: str) -> None:
        self.kind = kind
        self.ref = ref  # "namespace/name" or "name"; "?" when even the name is missing
        self.field = field  # a JSON path such as "spec.ingress[0].ports[1].port"
        self.problem = problem
        super().__init__(f"{kind} {ref}: {field}: {problem}")
