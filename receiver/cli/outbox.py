"""`fluxhook deliveries`, `fluxhook redeliver` and `fluxhook sinks`: what the relay owes, and doing it again."""

from __future__ import annotations

import argparse
import json
from typing import Any

from receiver.cli.common import CLIError
from receiver.cli.ledger import local_only
from receiver.config.settings import Settings
from receiver.engine.runtime import Runtime
from receiver.store import Delivery, iso

__all__ = ["OutboxCLIError", "deliveries", "redeliver", "sinks"]


class OutboxCLIError(CLIError):
    """Reported on stderr with exit status 2, like the CLI's own errors."""


def _delivery_row(d: Delivery, sinks: dict[str, str]) -> dict[str, Any]:
    return {
        "event": d.event_id, "type": d.event_type, "job": d.job_id, "sink": sinks.get(d.sink, d.sink),
        "state": d.state, "attempts": d.attempts, "last_code": d.last_code, "last_error": d.last_error,
        "next_at": iso(d.next_at) if d.state == "pending" else None, "delivered_at": iso(d.delivered_at),
    }


#: Why `deliveries`, `redeliver` and `sinks` refuse FLUXHOOK_API_URL.
LOCAL = "the outbox's deliveries and sinks are the database's, and the API has no route for them"


async def deliveries(args: argparse.Namespace, settings: Settings) -> int:
    local_only(settings, "deliveries", LOCAL)
    async with Runtime.open(settings) as rt:
        sinks = {s.name: s.display for s in await rt.store.sinks()}
        rows = await rt.store.deliveries("dead" if args.failed else args.state, limit=args.limit,
                                         event_id=args.event)
        shown = [_delivery_row(d, sinks) for d in rows]
        if args.attempts:
            for row, d in zip(shown, rows, strict=True):
                row["attempts_log"] = [
                    {**a, "at": iso(a["at"])} for a in await rt.store.delivery_attempts(d.id)
                ]
    if args.json:
        print(json.dumps(shown, indent=2, sort_keys=True))
        return 0
    if not shown:
        print("no deliveries" + (" failed" if args.failed else ""))
    for row in shown:
        extra = f"  last={row['last_code'] or row['last_error'] or '-'}"
        when = f"  next={row['next_at']}" if row["next_at"] else ""
        print(f"{row['event']}  {row['type']}  {row['job']}  -> {row['sink']}  {row['state']}"
              f"  attempts={row['attempts']}{extra}{when}")
        for attempt in row.get("attempts_log", ()):
            print(f"    {attempt['at']}  {attempt['code'] or '-'}  {attempt['latency_ms']:.1f} ms"
                  f"  {attempt['error'] or ''}")
    return 0


async def redeliver(args: argparse.Namespace, settings: Settings) -> int:
    local_only(settings, "redeliver", LOCAL)
    if not args.event and not args.failed:
        raise OutboxCLIError("give an event id (evt_...) or --failed")
    async with Runtime.open(settings) as rt:
        await rt.relay.register()
        count = await rt.store.redeliver(args.event, failed=args.failed, sinks_for=rt.relay.sinks_for(),
                                         now=rt.clock())
        if count < 0:
            raise OutboxCLIError(f"no event {args.event!r} in the outbox (pruned after "
                                 f"FLUXHOOK_OUTBOX_RETENTION, or never written)")
        if args.event and count == 0 and not rt.relay.sinks:
            raise OutboxCLIError("no sinks are configured here (FLUXHOOK_FORWARD_URL, FLUXHOOK_REDIS_URL, "
                                 "FLUXHOOK_NATS_URL)")
        report = await rt.relay.run_once() if args.now else None
    print(f"{count} deliver{'y' if count == 1 else 'ies'} due again"
          + (f"; relayed: {report.as_dict()}" if report is not None else "; the relay sends them on its next pass"))
    return 0


async def sinks(args: argparse.Namespace, settings: Settings) -> int:
    local_only(settings, "sinks", LOCAL)
    async with Runtime.open(settings) as rt:
        await rt.relay.register()
        if args.enable:
            if not await rt.store.enable_sink(args.enable, now=rt.clock()):
                raise OutboxCLIError(f"no sink {args.enable!r}; `fluxhook sinks` lists them")
        configured = set(rt.relay.sinks)
        for sink in rt.relay.sinks.values():  # can each start here (reachable, a stream for the subject...)?
            await rt.relay.ready(sink)
        rows = [
            {"name": s.name, "kind": s.kind, "display": s.display, "position": s.after_seq,
             "configured": s.name in configured, "disabled": iso(s.disabled_at), "reason": s.disabled_reason,
             "error": rt.relay.errors.get(s.name)}
            for s in await rt.store.sinks()
        ]
        pending = await rt.store.deliveries("pending", limit=100_000)
    for row in rows:
        row["pending"] = sum(1 for d in pending if d.sink == row["name"])
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if not rows:
        print("no sinks (set FLUXHOOK_FORWARD_URL, FLUXHOOK_REDIS_URL or FLUXHOOK_NATS_URL)")
    for row in rows:
        state = f"disabled since {row['disabled']} ({row['reason']})" if row["disabled"] else "enabled"
        print(f"{row['name']}  {row['display']}  {state}  pending={row['pending']}"
              + ("" if row["configured"] else "  (not configured here)")
              + (f"\n    cannot start: {row['error']}" if row["error"] else ""))
    return 0
