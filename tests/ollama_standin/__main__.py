"""``python -m tests.ollama_standin --port N --store DIR``: run the Ollama stand-in in the foreground."""

from __future__ import annotations

import argparse
import sys
import tempfile

from .server import StandinServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.ollama_standin", description=__doc__)
    p.add_argument("--port", type=int, default=11434, help="port to listen on (0: any free port; default 11434)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, local only)")
    p.add_argument("--store", default=None, help="model store directory (default: a fresh temporary directory)")
    args = p.parse_args(argv)
    store = args.store or tempfile.mkdtemp(prefix="ollama-standin-")
    server = StandinServer((args.host, args.port), store)
    # One line on stdout with the real port, so a parent started with --port 0 can find it.
    print(f"ollama stand-in listening on {server.url} (store {store})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
