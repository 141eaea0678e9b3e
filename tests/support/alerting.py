"""Local stand-ins for the alert receivers: an HTTP server that records what it is posted (PagerDuty's
events endpoint, Slack's webhook, or Alertmanager's v2 API for the outbox's unit tests), and an
SMTP server (aiosmtpd) that keeps every mail it is given."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Recorder:
    """An HTTP server on a free loopback port keeping every POST body (JSON) by path.

    ``fail_with`` set to a status makes it answer that status (Alertmanager "down" for a moment)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.fail_with: int | None = None
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if recorder.fail_with:
                    self.send_response(recorder.fail_with)
                    self.end_headers()
                    return
                try:
                    data = json.loads(body or b"null")
                except ValueError:
                    data = body.decode(errors="replace")
                with recorder.lock:
                    recorder.posts.append((self.path, data))
                self.send_response(202 if self.path.endswith("/enqueue") else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "success"}')

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, path: str) -> list[Any]:
        with self.lock:
            return [body for p, body in self.posts if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """An SMTP server on a free loopback port (aiosmtpd) keeping every message."""

    def __init__(self) -> None:
        from email import message_from_bytes, policy

        from aiosmtpd.controller import Controller

        from deploy_ops.slots.local import free_port

        self.messages: list[Any] = []
        box = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's naming
                box.messages.append(message_from_bytes(envelope.content, policy=policy.default))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    @property
    def smarthost(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.controller.stop()
