"""Webhook receiver for Alertmanager: each POST is logged as one JSON line and kept; GET /alerts lists them.

Alertmanager's webhook payload: https://prometheus.io/docs/alerting/latest/configuration/#webhook_config
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECEIVED: list[dict[str, object]] = []  # one entry per alert of every notification, newest last
KEEP = 1000


class Receiver(BaseHTTPRequestHandler):
    """POST /: a notification; GET /alerts: what arrived; GET /health: 200."""

    def do_POST(self) -> None:  # http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        try:
            payload = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._answer(400, {"error": "body is not JSON"})
            return
        for alert in payload.get("alerts", []):
            entry = {
                "receiver": payload.get("receiver"),
                "status": alert.get("status"),
                "labels": alert.get("labels", {}),
                "annotations": alert.get("annotations", {}),
                "startsAt": alert.get("startsAt"),
            }
            RECEIVED.append(entry)
            sys.stdout.write(json.dumps({"event": "alert", **entry}) + "\n")
        del RECEIVED[:-KEEP]
        self._answer(200, {"received": len(payload.get("alerts", []))})

    def do_GET(self) -> None:
        if self.path == "/alerts":
            self._answer(200, RECEIVED)
        elif self.path == "/health":
            self._answer(200, {"status": "ok"})
        else:
            self._answer(404, {"error": "not found"})

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the alerts are the log."""


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "9099"))
    sys.stdout.write(json.dumps({"event": "listening", "port": port}) + "\n")
    ThreadingHTTPServer(("0.0.0.0", port), Receiver).serve_forever()  # noqa: S104  # nosec B104
