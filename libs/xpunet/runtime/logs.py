"""Logging set-up: one line per record, ``key=value`` fields, the service named on every line.

Several services may share one process (``xpunetctl up``), so the service name
comes from a context variable set by the task that runs the service rather
than from the logger name.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import TextIO

current_service: contextvars.ContextVar[str] = contextvars.ContextVar("xpunet_service", default="-")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _quote(text: str) -> str:
    # repr-style escaping keeps tracebacks and multi-line messages on one line.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LineFormatter(logging.Formatter):
    """``ts=... level=info svc=lb logger=xpunet.lb.x msg="..." [exc="..."]``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={stamp}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"svc={getattr(record, 'svc', '-')}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class _ServiceFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.svc = current_service.get()
        return True


def configure_logging(level: str, *, stream: TextIO | None = None) -> None:
    """Install the single-line handler on the root logger (replacing earlier ones)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LineFormatter())
    handler.addFilter(_ServiceFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # The NATS client logs every reconnect attempt at error level; our callbacks report them once.
    logging.getLogger("nats").setLevel(max(logging.WARNING, root.level))
