"""Measure the two candidate server stacks of `srd web` on the work that matters to it: one large upload.

Each stack runs a minimal app that streams the request body into a file in 256 KB chunks (what
`srd web` does with each upload), in a fresh process; the script sends one upload of ``--mb`` MB and
reports the server's idle and peak RSS, the time to take the upload, and the most bytes the stack itself
spooled to its temp folder before the app saw them (a server that buffers a body to disk first fills a
disk with a refused upload, whatever the app's limit).

    python scripts/bench_web_stack.py --mb 300 --output /tmp/bench_web_stack.json

Flask and waitress are not srd dependencies: put them on a path of their own for the comparison
(``pip install --target /tmp/flaskpkgs flask waitress``; ``--flask-path /tmp/flaskpkgs``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STARLETTE_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def upload(request):
    with open(sys.argv[2], "wb") as out:
        async for chunk in request.stream():
            out.write(chunk)
    return PlainTextResponse("ok")

app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok")), Route("/up", upload, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""

FLASK_APP = """
import sys, waitress
from flask import Flask, request

app = Flask(__name__)

@app.get("/")
def index():
    return "ok"

@app.post("/up")
def upload():
    with open(sys.argv[2], "wb") as out:
        while chunk := request.stream.read(256 * 1024):
            out.write(chunk)
    return "ok"

waitress.serve(app, host="127.0.0.1", port=int(sys.argv[1]), max_request_body_size=1 << 40, _quiet=True)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _spooled_bytes(pid: int, folder: Path) -> int:
    """Bytes in files the server holds open in `folder`, unlinked ones included (`tempfile.TemporaryFile`)."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(str(folder)):
                total += os.stat(fd).st_size
        except OSError:
            pass
    return total


def measure(stack: str, megabytes: int, flask_path: str | None) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as work:
        spool = Path(work, "tmp")
        spool.mkdir()
        port = _free_port()
        env = {**os.environ, "TMPDIR": str(spool)}
        if flask_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [flask_path, env.get("PYTHONPATH")]))
        code = STARLETTE_APP if stack == "starlette" else FLASK_APP
        server = subprocess.Popen([sys.executable, "-c", code, str(port), str(Path(work, "upload.bin"))], env=env)
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            connection = http.client.HTTPConnection("127.0.0.1", port)
            connection.request("GET", "/")
            connection.getresponse().read()
            idle = _rss_kb(server.pid)
            peak, spooled, done = idle, 0, threading.Event()

            def watch() -> None:
                nonlocal peak, spooled
                while not done.is_set():
                    peak = max(peak, _rss_kb(server.pid))
                    spooled = max(spooled, _spooled_bytes(server.pid, spool))
                    time.sleep(0.02)

            watcher = threading.Thread(target=watch)
            watcher.start()
            block = os.urandom(1 << 20)
            started = time.perf_counter()
            connection.putrequest("POST", "/up")
            connection.putheader("content-length", str(megabytes << 20))
            connection.endheaders()
            for _ in range(megabytes):
                connection.send(block)
            connection.getresponse().read()
            seconds = time.perf_counter() - started
            done.set()
            watcher.join()
        finally:
            server.terminate()
            server.wait(timeout=10)
    return {"stack": stack, "upload_mb": megabytes, "idle_rss_mb": round(idle / 1024, 1),
            "peak_rss_mb": round(peak / 1024, 1), "seconds": round(seconds, 2),
            "mb_per_s": round(megabytes / seconds, 1), "spooled_by_server_mb": round(spooled / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=300, help="size of the upload in MB (default: 300)")
    parser.add_argument("--flask-path", help="folder holding flask and waitress (pip install --target)")
    parser.add_argument("--output", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    results = [measure(stack, args.mb, args.flask_path) for stack in ("starlette", "flask")]
    for row in results:
        print(json.dumps(row))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
