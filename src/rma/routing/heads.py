"""An answer head that can go to the client as the replica wrote it, less its hop-by-hop lines.

The fast path relays answer bytes as they arrive; this decides, once per distinct head, whether
its head can pass that way or the answer needs re-framing.
"""

from __future__ import annotations

import re

from rma.routing.proxy import HOP_BY_HOP

# In a lowered answer head, what decides whether it passes as it is: (1) a hop-by-hop header line
# (Transfer-Encoding aside: the chunks pass as they are), (2) Transfer-Encoding, (3) Content-Length,
# or (no group) a folded line. One regex pass: each `in` or `find` over a head costs about as much.
MARKERS = re.compile(rb"\r\n(?:(" + b"|".join(sorted(HOP_BY_HOP - {b"transfer-encoding"})) +
                     rb")|(transfer-encoding)|(content-length))[ \t]*:|\r\n[ \t]")
CONNECTION_TOKENS = frozenset({b"keep-alive", b"close", b""})


def plain_head(head: bytes, complete: bool) -> bytes | None:
    """`head` (status line and header lines, without the blank line) less its hop-by-hop lines, when
    it can go to an HTTP/1.1 keep-alive client as it is: framed by length or by chunks (or
    `complete`: no body follows), no folded lines, no `Connection` header naming headers of its
    own. Else None."""
    low = head.lower()
    length = chunked = False
    cuts = []
    for marker in MARKERS.finditer(low):
        kind = marker.lastindex
        if kind is None:
            return None  # a folded line
        stop = low.find(b"\r\n", marker.end())
        stop = len(low) if stop < 0 else stop
        value = low[marker.end():stop].strip()
        if kind == 3:
            length = True
        elif kind == 2:
            if value != b"chunked":
                return None
            chunked = True
        else:
            if marker[1] == b"connection" and value not in CONNECTION_TOKENS and \
                    {token.strip() for token in value.split(b",")} - CONNECTION_TOKENS:
                return None
            cuts.append((marker.start(), stop))
    if (chunked and length) or not (chunked or length or complete):
        return None  # ambiguous, or delimited by the end of the connection: ParsedRelay re-frames it
    if not cuts:
        return head
    kept, start = [], 0
    for at, stop in cuts:
        kept.append(head[start:at])
        start = stop
    return b"".join(kept) + head[start:]
