"""A gap report's reason in a few words, for an 80-column `rma status` and `rma up`'s ready line.

The gap report (placement/gaps.py) says, per group of healthy workers, why none of them runs an
uncovered service: "2 of 3 healthy workers: needs a worker of kind storage; 1 of 3 healthy
workers: engine chroma not available". Each group's why is one or more of the verdicts of
placement/feasible.py and planner.stand_in_reason, joined by "; ". The short form is the nearest
miss: the verdict of the worker that came closest (rank 0 can run it, 3 is the wrong kind).
"""

from __future__ import annotations

import re

# Of the states an assigned but unhealthy service can be in, the one its short reason names first.
WORST_FIRST = ("failed", "crashed", "unhealthy", "stopped", "starting")

_GROUP = re.compile(r"(\d+) of \d+ healthy workers: ")
_ASSIGNED = re.compile(r"assigned to \d+ worker\(s\), none healthy yet")
_VERDICTS: tuple[tuple[re.Pattern[str], str, int], ...] = tuple(
    (re.compile(pattern), short, rank) for pattern, short, rank in (
        (r"can run it: placed at its next heartbeat", "placed at next heartbeat", 0),
        (r"engine (\S+) not available", r"engine \1 missing", 1),
        (r"\S+ needs (\d+) MB of GPU memory, worker has \d+ MB", r"needs \1 MB VRAM", 1),
        (r"\S+ needs (\d+) MB of GPU memory, -?\d+ MB free", r"needs \1 MB VRAM free", 1),
        (r"\S+ needs (\d+) MB RAM, worker has \d+ MB", r"needs \1 MB RAM", 1),
        (r"\S+ needs (\d+) MB RAM, -?\d+ MB free", r"needs \1 MB RAM free", 1),
        (r"worker claims gpu but reports no GPU", "no GPU detected", 1),
        (r"crash-looped on this worker recently", "crash-looped", 1),
        (r"worker is down", "worker down", 1),
        (r"a (CPU|GPU) worker serves it", r"a \1 worker has it", 2),
        (r"\S+ needs a GPU worker", "needs gpu worker", 2),
        (r"\S+ runs tier-1 services on CPU workers only", "cpu engine: cpu workers only", 2),
        (r"worker reports no engine list, so only \w+ services", "no engine list", 2),
        (r"needs a worker of kind (\w+)", r"needs \1 worker", 3),
        (r"needs a shared store: .*", "needs a shared store", 3),  # the pool withholds it (a lone registry)
    ))
UNKNOWN_RANK = 1  # a verdict this table does not know yet is shown whole, as specific as any


def _verdict_gist(verdict: str) -> tuple[int, str]:
    for pattern, short, rank in _VERDICTS:
        match = pattern.fullmatch(verdict)
        if match:
            return rank, match.expand(short)
    return UNKNOWN_RANK, verdict


def groups(reason: str) -> list[tuple[int, str, str]]:
    """(how many workers, "k of n healthy workers", why) per group; empty when the reason is not per worker."""
    found = list(_GROUP.finditer(reason))
    if not found or found[0].start() != 0:
        return []
    ends = [m.start() for m in found[1:]] + [len(reason)]
    return [(int(m.group(1)), m.group(0).removesuffix(": "), reason[m.end():end].strip().removesuffix(";"))
            for m, end in zip(found, ends, strict=True)]


def short_reason(reason: str, states: list[str] | None = None) -> str:
    """A few words for a gap's `reason`: the nearest miss among the workers, or the replicas' state.

    `states` are the states the service's assigned workers report, when the caller knows them.
    """
    reason = reason.strip()
    if not reason:
        return ""
    if _ASSIGNED.fullmatch(reason):
        worst = next((s for s in WORST_FIRST if s in (states or [])), "starting")
        return f"assigned, {worst}"
    per_group = groups(reason)
    if not per_group:  # "no healthy workers", or a text this table does not know
        return _verdict_gist(reason)[1]
    best: tuple[int, int, str] | None = None
    for count, _, why in per_group:
        for verdict in why.split("; "):
            rank, gist = _verdict_gist(verdict.strip())
            if best is None or (rank, -count) < best[:2]:  # nearest miss, then most workers; first seen wins a tie
                best = (rank, -count, gist)
    return best[2] if best else reason
