"""Clean shutdown on SIGTERM: stop accepting, drain every partition, fsync the log, exit 0.

Two ways to run the service get it:

* ``python -m flowagg`` (``serve`` below) stops accepting connections, lets the requests in
  flight finish and their answers go out, then closes the store. Use it in production.
* ``waitress-serve ... wsgi:app`` (or ``--call flowagg:create_app``) has no shutdown hook, so
  ``create_app`` calls ``exit_on_sigterm`` for a durable store: SIGTERM stops waitress's loop at
  once (requests in flight get no answer; none of them was acknowledged) and the store is closed
  as the interpreter exits.

``serve`` also has waitress answer the requests it refuses itself (a body or headers over the
limit, a malformed head) as the app answers errors, in JSON, and before the body also when the
client asked ``Expect: 100-continue`` (``RefusingChannel``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import threading
import time
import weakref
from typing import Any

from flask import Flask
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ErrorTask

log = logging.getLogger(__name__)

# How long closing the store at interpreter exit may take before the exit code says it failed.
EXIT_CLOSE_TIMEOUT_S = 60.0


def exit_on_sigterm(store: Any) -> None:
    """While ``store`` is open, make SIGTERM exit 0 after closing it (for ``waitress-serve``).

    Installs a handler only from the main thread and only over the default action, so a program
    that handles SIGTERM itself (``python -m flowagg``, a test runner) keeps its own. Once the
    store is closed, SIGTERM has its default effect again.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    store_ref = weakref.ref(store)

    def on_sigterm(signum: int, frame: Any) -> None:
        store = store_ref()
        if store is None or store.closed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        log.info("SIGTERM: stopping; the store is closed on exit")
        raise SystemExit(0)  # waitress's run() stops its loop and its threads on SystemExit

    signal.signal(signal.SIGTERM, on_sigterm)
    atexit.register(_close_at_exit, store_ref)


def _close_at_exit(store_ref: weakref.ref) -> None:
    store = store_ref()
    if store is None or store.closed:
        return
    if not store.close(EXIT_CLOSE_TIMEOUT_S):
        log.error("store did not close cleanly; exiting with status 1")
        os._exit(1)


class JsonErrorTask(ErrorTask):
    """waitress's answer to a request it refuses itself, as JSON ``{"error": ...}`` naming the
    limit, like the app's errors (waitress's own is text, and states each limit plus one)."""

    def execute(self) -> None:
        error, adj = self.request.error, self.channel.server.adj
        if error.code == 413:  # waitress refuses sizes >= its setting: the limit is one less
            message = f"request body exceeds the limit of {adj.max_request_body_size - 1} bytes"
        elif error.code == 431:
            message = f"request headers exceed the limit of {adj.max_request_header_size - 1} bytes"
        else:  # a malformed request line or header, an unsupported Transfer-Encoding
            message = str(error.body)
        body = json.dumps({"error": message}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class RefusingChannel(HTTPChannel):
    """waitress's connection, except that it refuses with ``JsonErrorTask``, and a request refused
    from its headers alone (a Content-Length over the limit, headers too large, a malformed head)
    is answered at once also when it asked ``Expect: 100-continue``: waitress 3.0.2 sends such a
    client "100 Continue" first, then reads the body it refuses, up to the limit."""

    error_task_class = JsonErrorTask

    def send_continue(self) -> None:
        if self.request.error is not None:
            self.request.expect_continue = False  # the error is the final answer
            return
        super().send_continue()


def serve(app: Flask, shutdown_timeout: float = 30.0, **adjustments: Any) -> int:
    """Serve ``app`` with waitress until SIGTERM or SIGINT, then shut down cleanly.

    Returns the exit status: 0, or 1 if requests or the store did not finish within
    ``shutdown_timeout`` seconds.
    """
    socket_map: dict = {}
    server = create_server(app, map=socket_map, **adjustments)
    for dispatcher in socket_map.values():  # one listener per address served
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = RefusingChannel
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()
        with contextlib.suppress(OSError):  # a repeated signal after the trigger was closed
            server.pull_trigger()  # wake the loop

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    log.info("Serving on http://%s:%s", server.effective_host, server.effective_port)

    def poll_once() -> None:
        wasyncore.loop(
            timeout=server.adj.asyncore_loop_timeout,
            map=socket_map,
            use_poll=server.adj.asyncore_use_poll,
            count=1,
        )

    while not stopping.is_set():
        poll_once()

    log.info("stopping: no new connections; finishing the requests in flight")
    deadline = time.monotonic() + shutdown_timeout
    wasyncore.dispatcher.close(server)  # the listening socket only; the trigger stays
    closed = threading.Event()
    result: list[bool] = []

    def finish() -> None:
        # Worker threads end after their current request; requests not started are dropped
        # unanswered. Then the store drains and fsyncs.
        try:
            server.task_dispatcher.shutdown(timeout=max(0.0, deadline - time.monotonic()))
            result.append(app.extensions["flowagg"].close(max(0.0, deadline - time.monotonic())))
        finally:
            closed.set()
            server.pull_trigger()

    closer = threading.Thread(target=finish, name="flowagg-shutdown")
    closer.start()
    # Keep the loop turning meanwhile: it sends the answers of the requests finishing now.
    while not closed.is_set() or _unsent(socket_map, server):
        if time.monotonic() >= deadline:
            log.warning("shutdown timed out after %s s", shutdown_timeout)
            break
        poll_once()
    closer.join(max(0.0, deadline - time.monotonic()))
    for channel in list(socket_map.values()):
        channel.close()
    ok = bool(result and result[0]) and not closer.is_alive()
    log.info("stopped%s", "" if ok else " with errors (see above)")
    return 0 if ok else 1


def _unsent(socket_map: dict, server: Any) -> bool:
    """Whether any connection still has an answer to send."""
    return any(ch.writable() for ch in socket_map.values() if ch is not server.trigger)
