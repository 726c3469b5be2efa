"""Serves a bundle's web page on this machine: ``python -m tf_fusionnet.runtime.serve BUNDLE``.

The page (``BUNDLE/web/index.html``, written by ``export/to_tflite.py --web``) is static: any web
server works. This one adds what the page needs and a generic one lacks:

- the cross-origin isolation headers (``Cross-Origin-Opener-Policy: same-origin``,
  ``Cross-Origin-Embedder-Policy: require-corp``) without which browsers give a page no
  SharedArrayBuffer, so LiteRT.js's threaded WebAssembly cannot run (the page then falls back to
  the single-threaded build);
- ``application/wasm`` for the WebAssembly files (streaming compilation needs it);
- only the files the bundle's manifest lists (the manifest checked against its digest at start),
  each confined to the bundle as the Python runner opens them and checked against the manifest's
  sha256 before it is sent (the page checks the stages itself, but not LiteRT.js's files): no
  directory listing, no other file of the folder, no link out of it;
- 127.0.0.1 unless ``--host`` says otherwise (browsers give Web Crypto, which the page needs to check
  the bundle, only to https:// pages and to localhost; on a phone, see docs/export.md).
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import sys
import urllib.parse

from .manifest import MANIFEST, MANIFEST_DIGEST, BundleError, bundle_path, load_manifest

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".wasm": "application/wasm", ".json": "application/json", ".tflite": "application/octet-stream",
                 ".sha256": "text/plain; charset=utf-8", ".py": "text/plain; charset=utf-8"}
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}


def make_server(bundle: str, host: str = "127.0.0.1", port: int = 0, isolate: bool = True,
                quiet: bool = True) -> http.server.ThreadingHTTPServer:
    """A server of ``bundle``'s page (not yet serving: call ``serve_forever``); ``port`` 0 picks a free one.

    ``isolate=False`` leaves out the cross-origin isolation headers, as a plain static server
    would (the page then runs LiteRT.js single-threaded). Raises BundleError for a bundle without
    a web page or whose manifest does not check."""
    manifest = load_manifest(bundle)
    if "web" not in manifest:
        raise BundleError(f"{bundle}: no web page (export the run with --web)")
    served = set(manifest["sha256"]) | {MANIFEST, MANIFEST_DIGEST}
    page = "/" + manifest["web"].get("page", "web/index.html")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            self._respond(body=True)

        def do_HEAD(self):  # noqa: N802
            self._respond(body=False)

        def _respond(self, body: bool) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path in ("/", "/web", "/web/"):
                self.send_response(302)
                self.send_header("Location", page)
                self._headers(0)
                return
            name = urllib.parse.unquote(path).lstrip("/")
            try:
                if name not in served:
                    raise BundleError("not a file of the bundle")
                with open(bundle_path(bundle, name), "rb") as f:
                    data = f.read()
            except (BundleError, OSError):
                self.send_error(404)
                return
            expected = manifest["sha256"].get(name)
            if expected is not None and hashlib.sha256(data).hexdigest() != expected:
                self.send_error(409, "the file does not match the bundle's manifest (corrupt or modified bundle)")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPES.get(os.path.splitext(name)[1], "application/octet-stream"))
            self._headers(len(data))
            if body:
                self.wfile.write(data)

        def _headers(self, length: int) -> None:
            self.send_header("Content-Length", str(length))
            self.send_header("Cache-Control", "no-store")
            if isolate:
                for key, value in ISOLATION_HEADERS.items():
                    self.send_header(key, value)
            self.end_headers()

        def log_message(self, format, *args):  # noqa: A002 (the stdlib's signature)
            if not quiet:
                super().log_message(format, *args)

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.page_url = f"http://{'localhost' if host in ('127.0.0.1', 'localhost') else host}:{server.server_address[1]}{page}"
    return server


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tf_fusionnet.runtime.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="a bundle exported with --web")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; the page needs "
                             "localhost or https to check the bundle)")
    parser.add_argument("--no_isolation", action="store_true",
                        help="leave out the cross-origin isolation headers (LiteRT.js then runs single-threaded)")
    parser.add_argument("--log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"error: --port must be in 0..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        server = make_server(args.bundle, args.host, args.port, not args.no_isolation, quiet=not args.log)
    except BundleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port} ({error.strerror or error})", file=sys.stderr)
        return 1
    print(f"serving {args.bundle} at {server.page_url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
