"""A loopback HTTP mirror for the benchmarks: one directory served on 127.0.0.1, on a free port.

``with LoopbackMirror(Path("/usr/share/datasets/fashion-mnist")) as url:`` gives the base URL (ending in
``/``) of a threaded ``http.server`` that answers GET and HEAD (Content-Length, Last-Modified) for the
files in that directory, and stops when the block ends. It logs nothing and counts GETs per path, so a
benchmark can check that each run really downloaded its files.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections import Counter
from pathlib import Path


class LoopbackMirror:
    def __init__(self, directory: Path):
        self.directory = directory
        self.gets: Counter[str] = Counter()
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                mirror.gets[self.path] += 1
                super().do_GET()

            def log_message(self, format, *args):  # noqa: A002 (the base class's name)
                pass

        handler = functools.partial(Handler, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="loopback-mirror", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def __enter__(self) -> LoopbackMirror:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
