"""`fluxhook batch FILE`: many jobs from a JSON Lines or CSV file, resumable, with a progress display.

One job a line. JSON Lines: an object with `provider`, `model`, `prompt`, and optionally `params`
(an object), `metadata` (an object) and `events` (a list, Replicate shapes). CSV: a header row
naming those columns; `params` and `metadata` cells hold JSON objects, `events` a comma list.
Blank lines and JSON Lines starting with `#` are skipped. `"@path"` values of image fields send a
local image (receiver.cli.inputs); relative paths are relative to the batch file's folder.
Validation checks each image file's type, size and first bytes and keeps none of it; a line's
images are read and encoded only as its job is recorded, and dropped after.

Every line is validated first; a file with any bad line submits nothing (exit 2, each bad line
named). Then every line becomes a job under an idempotency key, sha256(file path + line number +
line content): running the same file again (after Ctrl-C, a crash, a timeout) finds the jobs it
already recorded and submits only the lines it never did; a line that was edited is a new job.
Keys live FLUXHOOK_IDEMPOTENCY_TTL (default 24 h): resume within it.

Jobs are recorded queued and submitted by the sweep, which reserves the provider's active-job
slots in the ledger (settings.cap_for: BFL 24, flux-kontext-max 6...): the concurrency bound
holds across every process sharing the database. While waiting, this command sweeps, like
`submit --wait`, and shows queued / running / stored / failed counts, rate and ETA.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from receiver.cli import remote_batch
from receiver.cli.common import EXIT_FAILED, EXIT_USAGE, CLIError
from receiver.cli.inputs import InputError, check_params, resolve_params
from receiver.cli.progress import follow, outcomes
from receiver.config.settings import Settings, SettingsError
from receiver.engine.jobs import create_api_job, submit_options
from receiver.engine.runtime import Runtime
from receiver.store import IdempotencyConflict
from submitter.status import TERMINAL, Status

__all__ = ["BatchLine", "attempt_key", "line_key", "read_lines", "run", "sent_params", "validate"]

FIELDS = ("provider", "model", "prompt", "params", "metadata", "events")


@dataclass
class BatchLine:
    number: int  # 1-based line number in the file (CSV: the data row's physical line)
    text: str  # the line as read (CSV: the row re-joined), part of its idempotency key
    provider: str = ""
    model: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # as written: `@path` images are read when sent
    shape: str = ""  # the provider's body shape (which fields take images, and how), set by validate
    metadata: dict[str, Any] = field(default_factory=dict)
    events: list[str] | None = None
    job_id: str | None = None


def _object(value: Any, name: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object")
    return value


def _fields(number: int, text: str, data: Any) -> BatchLine | str:
    """A parsed line, or the problem with it."""
    if not isinstance(data, dict):
        return "expected a JSON object"
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)} (fields: {', '.join(FIELDS)}; request fields go in params)"
    line = BatchLine(number, text)
    for name in ("provider", "model", "prompt"):
        if not isinstance(data.get(name), str) or not data[name].strip():
            return f"{name} is missing or not a non-empty string"
    line.provider, line.model = data["provider"], data["model"]
    try:
        params = _object(data.get("params"), "params")
        line.metadata = _object(data.get("metadata"), "metadata")
    except ValueError as exc:
        return str(exc)
    if "prompt" in params:
        return "prompt is given twice (column and params)"
    line.params = {"prompt": data["prompt"], **params}
    events = data.get("events")
    if isinstance(events, str) and events.strip():
        line.events = [e.strip() for e in events.split(",") if e.strip()]
    elif isinstance(events, list) and all(isinstance(e, str) for e in events):
        line.events = list(events)
    elif events not in (None, ""):
        return "events must be a list of strings (CSV: a comma list)"
    return line


def read_lines(path: Path) -> Iterator[BatchLine | tuple[int, str]]:
    """Each job line of the file: a BatchLine, or (line number, problem)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CLIError(f"no such file {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read {str(path)!r}: {exc}") from None
    if path.suffix.lower() == ".csv":
        yield from _csv_lines(text)
        return
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            yield number, f"not valid JSON: {exc}"
            continue
        parsed = _fields(number, stripped, data)
        yield parsed if isinstance(parsed, BatchLine) else (number, parsed)


def _csv_lines(text: str) -> Iterator[BatchLine | tuple[int, str]]:
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return
    unknown = sorted(set(header) - set(FIELDS))
    if unknown:
        yield 1, f"unknown column(s) {', '.join(unknown)} (columns: {', '.join(FIELDS)})"
        return
    while True:
        number = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield number, f"bad CSV: {exc}"
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield number, f"{len(row)} cells, the header has {len(header)}"
            continue
        data = {k: v for k, v in zip(header, row, strict=True) if v != ""}
        parsed = _fields(number, json.dumps(row), data)
        yield parsed if isinstance(parsed, BatchLine) else (number, parsed)


def validate(settings: Settings, path: Path) -> tuple[list[BatchLine], list[str]]:
    """Every line checked (provider, model, events, image files by type and size, not read):
    (lines, problems naming the line)."""
    lines, problems = [], []
    for item in read_lines(path):
        if isinstance(item, tuple):
            problems.append(f"{path}:{item[0]}: {item[1]}")
            continue
        try:
            provider = settings.provider(item.provider)
            submit_options(provider.dialect, item.model, item.events)
            item.shape = provider.dialect.shape.name
            check_params(item.params, shape=item.shape, base_dir=path.parent)
        except (SettingsError, InputError, ValueError, KeyError) as exc:
            problems.append(f"{path}:{item.number}: {str(exc).strip(chr(39))}")
            continue
        lines.append(item)
    return lines, problems


def line_key(path: Path, line: BatchLine) -> tuple[str, str]:
    """(idempotency key, fingerprint) of a line: the file's identity, the line's number and content."""
    identity = str(path.resolve())
    key = hashlib.sha256(f"{identity}\n{line.number}\n{line.text}".encode()).hexdigest()
    fingerprint = hashlib.sha256(line.text.encode()).hexdigest()
    return f"batch:{key}", fingerprint


def sent_params(path: Path, line: BatchLine) -> dict[str, Any]:
    """The line's params as sent: its `@path` images read (relative to the file's folder) and encoded."""
    try:
        return resolve_params(line.params, shape=line.shape, base_dir=path.parent)
    except InputError as exc:  # the file changed since validation
        raise CLIError(f"{path}:{line.number}: {exc} (the lines before it are recorded: fix it and run the "
                       "batch again to resume)") from None


def attempt_key(path: Path, line: BatchLine, attempt: int) -> tuple[str, str]:
    """The idempotency key of a line's `attempt`: 0 is the line's own (:func:`line_key`); each
    `--retry-failed` run that finds the latest attempt ended otherwise than stored makes the next."""
    key, fingerprint = line_key(path, line)
    return (key if attempt == 0 else f"{key}:retry{attempt}"), fingerprint


async def _record_line(rt: Runtime, path: Path, line: BatchLine, retry_failed: bool = False) -> tuple[bool, bool]:
    """Create the line's job once (a repeat finds the job its key names); with `retry_failed`, a line whose
    latest job ended otherwise than stored gets a new attempt. (new, retried). Its encoded images live only
    for this call."""
    attempt = 0
    params = sent_params(path, line)  # read and encoded once, whatever the number of attempts
    while True:
        metadata = {**line.metadata, "batch_line": line.number, **({"batch_attempt": attempt} if attempt else {})}
        try:
            job, created = await create_api_job(
                rt, line.provider, line.model, params, events=line.events,
                metadata=metadata, idempotency=attempt_key(path, line, attempt),
            )
        except IdempotencyConflict as exc:  # cannot happen: the fingerprint is part of the key
            raise CLIError(f"{path}:{line.number}: {exc}") from None
        if created or not retry_failed or job.status not in TERMINAL - {Status.STORED}:
            break
        attempt += 1  # this one failed: find (or make) the next attempt
    line.job_id = job.id
    return created, created and attempt > 0


async def _record(rt: Runtime, path: Path, lines: list[BatchLine], retry_failed: bool = False) -> tuple[int, int]:
    """Each line's job, one line at a time; returns how many are new, and how many of those re-run a failed line."""
    new = retried = 0
    for line in lines:
        created, again = await _record_line(rt, path, line, retry_failed)
        new, retried = new + created, retried + again
    return new, retried


async def run(args: argparse.Namespace, settings: Settings) -> int:
    path = Path(args.file)
    lines, problems = validate(settings, path)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"fluxhook batch: {len(problems)} bad line(s); nothing submitted", file=sys.stderr)
        return EXIT_USAGE
    if not lines:
        raise CLIError(f"{path}: no job lines")
    if not settings.integrations.api_url:  # through the API, the service's keys count: it checks them
        missing = settings.missing_credentials(line.provider for line in lines)
        for variable, message in missing.items():
            needing = [n.number for n in lines if settings.provider(n.provider).dialect.key_env == variable]
            print(f"{path}: {message} ({len(needing)} line(s) need it, the first is line {needing[0]})",
                  file=sys.stderr)
        if missing:
            print("fluxhook batch: nothing submitted", file=sys.stderr)
            return EXIT_USAGE
    if args.check:
        print(f"{path}: {len(lines)} job line(s), all valid")
        return 0
    if settings.integrations.api_url:
        return await remote_batch.run(args, settings, path, lines, key=lambda line: line_key(path, line)[0],
                                      params=lambda line: sent_params(path, line))
    settings.require_public()
    async with Runtime.open(settings) as rt:
        new, retried = await _record(rt, path, lines, args.retry_failed)
        print(f"{path}: {len(lines)} job(s), {new - retried} new, {len(lines) - new} already recorded (resumed)"
              + (f", {retried} failed line(s) run again" if args.retry_failed else ""), file=sys.stderr)
        ids = [line.job_id for line in lines if line.job_id]
        try:
            await follow(rt, ids, interval=args.interval, again=f"fluxhook batch {path}",
                         within=args.timeout or settings.job_deadline + settings.download_window)
        except asyncio.CancelledError:
            print(f"interrupted; the {len(ids)} recorded job(s) go on. `fluxhook batch {path}` again resumes "
                  "(no line is submitted twice)", file=sys.stderr)
            raise
        jobs = {job_id: await rt.store.get_job(job_id) for job_id in ids}
    failed = outcomes(lines, jobs, as_json=args.json)
    if failed:
        print(f"`fluxhook batch {path} --retry-failed` runs the {len(failed)} line(s) not stored again",
              file=sys.stderr)
    return EXIT_FAILED if failed else 0
