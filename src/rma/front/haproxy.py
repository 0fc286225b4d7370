"""HAProxy as the front door: its config, and how it is started beside the engine it relays to.

HAProxy (Debian's package) terminates TLS (HTTP/1.1 and HTTP/2 by ALPN), parses requests strictly
(smuggling shapes, bad chunk sizes and oversized heads are refused there, with a 400), closes
connections slow to send a head or idle too long, and relays each request to the engine on a unix
socket in a private folder. It is the front door wherever it is installed and no ACME name is
asked for: it relays at 60% of its own rate straight to a backend, where Caddy reaches 28%
(bench/front_door_tls.py). Its own answers are JSON, as the engine's are.
"""

from __future__ import annotations

import resource
from http import HTTPStatus
from pathlib import Path

from rma.files import write_private
from rma.front.relay import CLOSE_CLIENT_HEADER, RELAYED_HEADER, listen_address
from rma.front.settings import FrontSettings, haproxy_path

# HAProxy's own answers: a bad request, a head too slow (408), the engine gone (502, 503) or too slow (504).
OWN_ANSWERS = (400, 403, 408, 500, 501, 502, 503, 504)
# An answer may stream for long (chat tokens, a watch) or come late (a long completion on a CPU).
SERVER_IDLE_S = 900
MAX_REWRITE = 1024  # room HAProxy keeps in a buffer for the headers it adds
FD_RESERVE = 64  # of the open-file limit, kept for the listeners, the log and the engine's sockets


def haproxy_binary() -> str:
    found = haproxy_path()
    if found is None:
        raise RuntimeError("haproxy is not installed (apt-get install haproxy), and RMA_FRONT_ENGINE=haproxy")
    return found


def _seconds(value: float) -> str:
    return f"{int(value * 1000)}ms"


def haproxy_config(settings: FrontSettings, host: str, port: int, upstream: Path, folder: Path) -> str:
    """HAProxy's config: one frontend on host:port relaying everything to the unix socket `upstream`.

    A slow TLS handshake is bounded by `timeout client` (the idle timeout): HAProxy 2.6 has no
    timeout of its own for it. maxconn is what the open-file limit allows (a relayed request needs
    two files), and one client address holds at most `max_client_connections` of it: past that its
    new connections are closed at once, so one client's slow connections never take every slot.
    """
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    bind = f"bind {listen_address(host, port)}"
    if settings.tls:
        bind += f" ssl crt {folder / 'certificate.pem'} alpn h2,http/1.1"
    errors = "\n".join(f"  errorfile {status} {folder / f'{status}.http'}" for status in OWN_ANSWERS)
    return f"""global
  maxconn {max(128, (files - FD_RESERVE) // 2)}
  tune.bufsize {settings.max_header_bytes + MAX_REWRITE}
  tune.maxrewrite {MAX_REWRITE}
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout http-request {_seconds(settings.header_timeout_s)}
  timeout http-keep-alive {_seconds(settings.idle_timeout_s)}
  timeout client {_seconds(settings.idle_timeout_s)}
  timeout client-fin 1s
  timeout server {SERVER_IDLE_S}s
frontend front
  {bind}
{errors}
  stick-table type ipv6 size 100k expire 60s store conn_cur
  tcp-request connection track-sc0 src
  tcp-request connection reject if {{ sc0_conn_cur gt {settings.max_client_connections} }}
  http-request set-header {RELAYED_HEADER} %[req.fhdr(x-forwarded-for)]
  http-request set-header X-Forwarded-For %[src]
  http-request set-header X-Forwarded-Proto {settings.scheme()}
  http-response set-header Connection close if {{ res.hdr({CLOSE_CLIENT_HEADER}) -m found }}
  http-response del-header {CLOSE_CLIENT_HEADER}
  default_backend engine
backend engine
  server engine unix@{upstream}
"""


def own_answer(status: int) -> bytes:
    """One of HAProxy's own answers, whole (HAProxy sends an errorfile as it is): JSON, closing the connection,
    since a request body may be left half-read on it."""
    body = b'{"error": "front door: %s"}' % HTTPStatus(status).phrase.encode()
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nCache-Control: no-cache\r\n"
            b"Connection: close\r\n\r\n%s" % (status, HTTPStatus(status).phrase.encode(), len(body), body))


def haproxy_command(settings: FrontSettings, host: str, port: int, upstream: Path,
                    folder: Path) -> tuple[list[str], dict[str, str]]:
    """Write HAProxy's config, certificate file and own answers into `folder` (0700); its command line and
    environment (none of the worker's)."""
    for status in OWN_ANSWERS:
        (folder / f"{status}.http").write_bytes(own_answer(status))
    if settings.cert is not None and settings.key is not None:  # HAProxy reads the chain and the key from one file
        write_private(folder / "certificate.pem",
                      settings.cert.read_bytes().rstrip(b"\n") + b"\n" + settings.key.read_bytes())
    config = folder / "haproxy.cfg"
    write_private(config, haproxy_config(settings, host, port, upstream, folder))
    return [haproxy_binary(), "-db", "-f", str(config)], {"PATH": "/usr/bin:/bin", "HOME": str(folder)}
