"""The console app served by uvicorn in a thread of the store process (``cli.service``).

The socket is bound here, before the thread starts, so a port in use fails at once with the
setting to change; :meth:`ConsoleServer.start` returns once uvicorn accepts connections.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from pipeline.infra.logs import fields

__all__ = ["ConsoleServer"]

log = logging.getLogger(__name__)
# uvicorn's start and stop lines repeat what "console listening" says, with terminal colours.
logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

_START_SECONDS = 30.0


class ConsoleServer:
    """``app`` on ``host:port`` (0: a free port); no socket until :meth:`start`."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._address = (host, port)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Bind and serve in a daemon thread; returns the bound ``(host, port)``."""
        if self._server is not None:
            raise RuntimeError("the console is already started")
        host, port = self._address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno,
                f"the console cannot listen on {host}:{port} ({exc.strerror}): set METERING_API_PORT to a free "
                "port (0 picks one) or METERING_API_HOST to an address of this machine",
            ) from exc
        sock.listen(128)
        sock.setblocking(False)
        config = uvicorn.Config(
            self.app,
            log_config=None,  # the process's logging (pipeline.infra.logs) stays as it is
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            server_header=False,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="console", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_SECONDS
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the console did not start; see the log above")
            time.sleep(0.01)
        bound = sock.getsockname()
        address = (str(bound[0]), int(bound[1]))
        log.info("console listening", extra=fields(url=f"http://{address[0]}:{address[1]}"))
        return address

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
