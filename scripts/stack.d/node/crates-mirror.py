#!/usr/bin/env python3
"""crates.io mirror for image builds on the real node (scripts/stack.d/node.sh starts it; docs/stack.md).

Build steps of the node's dockerd have a network on the bridge only, so cargo in them cannot reach crates.io.
This serves, on the bridge address only:

  /index/config.json            its own: `dl` points at this mirror
  /index/<sparse path>          a proxy of https://index.crates.io/<path> with a disk cache: a cached entry is
                                served while fresh (--max-age), else fetched again (revalidated with its ETag);
                                when upstream fails, the cached entry is served however old
  /crates/NAME/VERSION/download the .crate: from the mirror's cache, else from the host's cargo cache
                                (~/.cargo/registry/cache/index.crates.io-*/NAME-VERSION.crate), else from
                                https://static.crates.io/crates/NAME/NAME-VERSION.crate, then cached (immutable)

Only this process fetches from the registry (like cargo on the host does); build containers only talk to it.
Python 3 standard library only; threaded. It refuses to listen anywhere but an address in 198.18.0.0/15.
"""
import argparse
import glob
import hashlib
import ipaddress
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALLOWED_NET = ipaddress.ip_network("198.18.0.0/15")
INDEX_PATH = re.compile(r"^(1/[a-z0-9_-]+|2/[a-z0-9_-]+|3/[a-z0-9_-]/[a-z0-9_-]+|[a-z0-9_-]{2}/[a-z0-9_-]{2}/[a-z0-9_-]+)$")
CRATE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CRATE_VERSION = re.compile(r"^[A-Za-z0-9.+-]{1,64}$")
USER_AGENT = "paygress-stack-crates-mirror/1"


def log(msg):
    sys.stderr.write("[crates-mirror %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def atomic_write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Mirror:
    def __init__(self, args):
        self.cache = args.cache
        self.upstream_index = args.upstream_index.rstrip("/")
        self.upstream_dl = args.upstream_dl.rstrip("/")
        self.host_caches = args.host_cache
        self.max_age = args.max_age
        self.timeout = args.timeout
        self.base = "http://%s:%d" % (args.listen, args.port)
        # One fetch per path at a time (parallel requests for the same entry wait for the first).
        self.locks = {}
        self.locks_guard = threading.Lock()

    def lock(self, key):
        with self.locks_guard:
            return self.locks.setdefault(key, threading.Lock())

    def config(self):
        return json.dumps({"dl": self.base + "/crates/{crate}/{version}/download"}).encode()

    def fetch(self, url, etag=None):
        """(status, body, etag); status 304 when etag still matches; raises on network failure or 5xx."""
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if etag:
            req.add_header("If-None-Match", etag)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, r.read(), r.headers.get("ETag")
        except urllib.error.HTTPError as e:
            if e.code in (304, 404, 410, 451):
                return e.code, b"", None
            raise

    def index(self, path):
        """(status, body, source)."""
        f = os.path.join(self.cache, "index", path)
        etag_file = f + ".etag"
        with self.lock("index/" + path):
            try:
                age = time.time() - os.stat(f).st_mtime
            except FileNotFoundError:
                age = None
            if age is not None and age < self.max_age:
                with open(f, "rb") as fh:
                    return 200, fh.read(), "hit"
            etag = None
            if age is not None:
                try:
                    with open(etag_file) as fh:
                        etag = fh.read().strip() or None
                except FileNotFoundError:
                    pass
            try:
                status, body, new_etag = self.fetch("%s/%s" % (self.upstream_index, path), etag)
            except Exception as e:  # network failure, timeout, 5xx: serve what we have
                if age is not None:
                    with open(f, "rb") as fh:
                        return 200, fh.read(), "stale (upstream: %s)" % e
                return 502, b"upstream failed\n", "error (upstream: %s)" % e
            if status == 304 and age is not None:
                os.utime(f)
                with open(f, "rb") as fh:
                    return 200, fh.read(), "revalidated"
            if status != 200:
                return 404, b"not found\n", "upstream %d" % status
            atomic_write(f, body)
            if new_etag:
                atomic_write(etag_file, new_etag.encode())
            return 200, body, "fetched"

    def crate(self, name, version):
        """(status, path or None, source)."""
        fname = "%s-%s.crate" % (name, version)
        f = os.path.join(self.cache, "crates", name, fname)
        if os.path.isfile(f):
            return 200, f, "hit"
        for d in self.host_caches:
            for h in sorted(glob.glob(os.path.join(os.path.expanduser(d), fname))):
                if os.path.isfile(h):
                    return 200, h, "host cache"
        with self.lock("crate/" + fname):
            if os.path.isfile(f):
                return 200, f, "hit"
            try:
                status, body, _ = self.fetch("%s/%s/%s" % (self.upstream_dl, name, fname))
            except Exception as e:
                return 502, None, "error (upstream: %s)" % e
            if status != 200:
                return 404, None, "upstream %d" % status
            atomic_write(f, body)
            return 200, f, "fetched (%d bytes, sha256 %s)" % (len(body), hashlib.sha256(body).hexdigest()[:12])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "paygress-crates-mirror"
    mirror = None  # set in main
    # A socket timeout per connection: a client that stalls (or idles on keep-alive) frees its thread.
    timeout = 60

    def log_message(self, fmt, *args):  # the access log is our own line per request (below)
        pass

    def send(self, status, body=b"", ctype="application/octet-stream", path=None, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in headers:
            self.send_header(k, v)
        if path is not None:
            size = os.stat(path).st_size
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command != "HEAD":
                with open(path, "rb") as fh:
                    while True:
                        chunk = fh.read(1 << 20)
                        if not chunk:
                            break
                        self.wfile.write(chunk)
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        m = self.mirror
        url = self.path.split("?", 1)[0]
        source = ""
        try:
            if url == "/index/config.json":
                status, source = 200, "own"
                self.send(200, m.config(), "application/json")
            elif url.startswith("/index/"):
                path = url[len("/index/"):]
                if not INDEX_PATH.match(path):
                    status, source = 404, "bad path"
                    self.send(404, b"not found\n", "text/plain")
                else:
                    status, body, source = m.index(path)
                    etag = '"%s"' % hashlib.sha256(body).hexdigest()[:32]
                    if status == 200 and self.headers.get("If-None-Match") == etag:
                        status = 304
                        self.send_response(304)
                        self.send_header("ETag", etag)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    elif status == 200:
                        self.send(200, body, "text/plain", headers=[("ETag", etag), ("Cache-Control", "max-age=0")])
                    else:
                        self.send(status, body, "text/plain")
            elif url.startswith("/crates/"):
                parts = url[len("/crates/"):].split("/")
                if len(parts) != 3 or parts[2] != "download" or not CRATE_NAME.match(parts[0]) \
                        or not CRATE_VERSION.match(parts[1]):
                    status, source = 404, "bad path"
                    self.send(404, b"not found\n", "text/plain")
                else:
                    status, path, source = m.crate(parts[0], parts[1])
                    if path:
                        self.send(200, path=path, headers=[("Cache-Control", "public, max-age=31536000, immutable")])
                    else:
                        self.send(status, b"unavailable\n", "text/plain")
            else:
                status, source = 404, "unknown"
                self.send(404, b"not found\n", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            status, source = 499, "client went away"
        log("%s %s %s %d %s" % (self.client_address[0], self.command, url, status, source))

    do_HEAD = do_GET


class BoundedServer(ThreadingHTTPServer):
    """At most `max_threads` connections served at once; further ones wait in the listen backlog."""

    daemon_threads = True
    request_queue_size = 128  # cargo opens many connections at once

    def __init__(self, address, handler, max_threads):
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(max_threads)

    def process_request(self, request, client_address):
        self.slots.acquire()
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, help="address (must be in 198.18.0.0/15)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cache", required=True, help="disk cache directory")
    p.add_argument("--host-cache", action="append", default=[],
                   help="directory of the host's cargo .crate files (glob); repeatable")
    p.add_argument("--upstream-index", default="https://index.crates.io")
    p.add_argument("--upstream-dl", default="https://static.crates.io/crates")
    p.add_argument("--max-age", type=int, default=86400, help="seconds an index entry is served without refetch")
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--max-threads", type=int, default=64, help="connections served at once")
    args = p.parse_args()
    addr = ipaddress.ip_address(args.listen)
    if addr not in ALLOWED_NET or addr.is_unspecified:
        p.error("refusing to listen on %s: only an address in %s (the stack's bridge)" % (addr, ALLOWED_NET))
    os.makedirs(args.cache, exist_ok=True)
    Handler.mirror = Mirror(args)
    server = BoundedServer((str(addr), args.port), Handler, args.max_threads)
    log("serving on http://%s:%d (cache %s, host caches %s)" % (addr, args.port, args.cache, args.host_cache))
    server.serve_forever()


if __name__ == "__main__":
    main()
