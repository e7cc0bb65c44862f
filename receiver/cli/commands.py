"""The `fluxhook` commands: each one's summary, example and where its code lives.

The code of a command is named "module:function" and imported only when that command runs
(:func:`receiver.cli.parser.command_function`): `fluxhook --help`, `--version` and parsing any
command line load none of it, and each command loads only its own module (cold start).
"""

from __future__ import annotations

__all__ = ["COMMANDS", "SIMULATE_HELP"]

SIMULATE_HELP = """\
what the simulator does to a job is chosen by its prompt: a rule (POST /_sim/rules with
{"prompt_contains": "lost", "drop": true, ...}: the text, then fault fields; first match wins)
gives jobs whose prompt contains the text these faults (submitter.simulator.Faults); other jobs
complete normally:

  drop            send no callbacks at all (the job is rescued by polling)
  duplicate N     send the terminal callback N times, concurrently
  delay S         extra seconds between completion and the terminal callback
  reorder         follow the terminal callback with a stale "Pending" one
  bad_signature   sign callbacks with a wrong secret
  signature       "hmac" (X-BFL-Signature), "echo" (X-Webhook-Secret) or "none"
  progress        send a "processing" callback before the terminal one
  submit_errors   reject the rule's first submits with these HTTP statuses, e.g. [429, 503]
  outcome         "ready", "error", "request_moderated", "content_moderated"
  webhook_shape   answer submits like webhook mode: no polling_url
  expired_url     the first signed URL handed out is already expired
  slow_download   serve downloads at this many bytes per second
  runtime S       seconds from accept to done (default 0.05)
  image_format    "png" or "jpeg";  image_size: pad the image to at least this many bytes
  outputs N, output_list, drop_completed   (Replicate shapes only)

GET /_sim/stats shows per-task counters (submits, polls, callbacks, downloads). e.g.
  curl -s 127.0.0.1:8900/_sim/rules -d '{"prompt_contains": "lost", "drop": true}'"""


#: name: (summary, example, "module:function": the command's code, imported only when it runs).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": (
        "run the receiver, with the polling sweep and downloads in-process",
        "FLUXHOOK_PUBLIC_URL=https://hooks.example.com FLUXHOOK_SECRET_KEY=... fluxhook serve --port 8000",
        "receiver.cli.serve:serve",
    ),
    "submit": (
        "record a job, send it to a provider with its own webhook, print our job id",
        'fluxhook submit --provider bfl --model flux-kontext-pro --prompt "make it snow" '
        "--param input_image=@photo.png --wait",
        "receiver.cli.jobs:submit",
    ),
    "batch": (
        "submit every line of a JSON Lines or CSV file (resumable), with a progress display; exit 1 if any failed",
        'fluxhook batch prompts.jsonl   # lines like {"provider": "bfl", "model": "flux-dev", "prompt": "a fox",'
        ' "params": {"seed": 1}}',
        "receiver.cli.batch:run",
    ),
    "status": ("show one job (prompt, params, how its result came) and its files",
               "fluxhook status fh_0123abcd... --json", "receiver.cli.jobs:status"),
    "list": ("list recent jobs", "fluxhook list --status failed --json", "receiver.cli.jobs:list_jobs"),
    "url": (
        "print a time-limited download URL for a stored result file (a local folder: its path)",
        "fluxhook url fh_0123abcd... 0 --expires 600",
        "receiver.cli.jobs:url",
    ),
    "events": (
        "a job's timeline: created, submitted, each callback (with its id and verdict), outbox events, deliveries",
        "fluxhook events fh_0123abcd...   # then: fluxhook replay 42",
        "receiver.cli.ops:events",
    ),
    "cancel": ("cancel a job (ours at once; the provider's task where it can)", "fluxhook cancel fh_0123abcd...",
               "receiver.cli.ops:cancel"),
    "retry": (
        "download again a job whose download failed or expired after the provider delivered (re-polls fresh URLs)",
        "fluxhook retry fh_0123abcd... --timeout 120",
        "receiver.cli.ops:retry",
    ),
    "replay": (
        "apply a kept callback again through the normal parse+apply path (harmless: the state machine decides)",
        "fluxhook replay 42   # ids from `fluxhook events JOB`",
        "receiver.cli.ops:replay",
    ),
    "report": (
        "reconciliation per provider: submitted, stored, failed, paid but not delivered, rescued by poll...",
        "fluxhook report --since 24h --csv > report.csv",
        "receiver.cli.ops:report",
    ),
    "sweep": (
        "one pass of the polling fallback, deferred submits and download retries, then exit (for cron)",
        "*/1 * * * * cd /srv/fluxhook && fluxhook sweep",
        "receiver.cli.jobs:sweep",
    ),
    "migrate": (
        "apply the database schema migrations and print the version (--check: exit 1 if not current)",
        "FLUXHOOK_DB=postgresql://fluxhook@db:5432/fluxhook fluxhook migrate   # before rolling out replicas",
        "receiver.cli.schema:migrate",
    ),
    "simulate": (
        "run the built-in provider simulator alone (BFL, DeerAPI, CometAPI and Replicate shapes)",
        "fluxhook simulate --port 8900   # prints the FLUXHOOK_* variables to point fluxhook at it",
        "receiver.cli.simulate:simulate",
    ),
    "dev": (
        "local development in one command: the simulator and the receiver together (Ctrl-C stops both), printing"
        " the exports a second shell pastes to submit against them",
        "fluxhook dev   # then, in another shell: paste the exports it prints, fluxhook submit ... --wait",
        "receiver.cli.dev:dev",
    ),
    "demo": (
        "run receiver and simulator on loopback in a throwaway folder, submit a few jobs, show the stored files",
        "fluxhook demo --keep ./demo-run",
        "receiver.cli.demo:demo",
    ),
    "deliveries": (
        "events owed to sinks, and how each delivery went",
        "fluxhook deliveries --failed --attempts   # dead deliveries with every attempt",
        "receiver.cli.outbox:deliveries",
    ),
    "redeliver": (
        "deliver an event again to every sink that takes it, or every dead delivery",
        "fluxhook redeliver evt_5f0c...   # or: fluxhook redeliver --failed --now",
        "receiver.cli.outbox:redeliver",
    ),
    "sinks": (
        "configured event sinks, their state, and --enable after a 410",
        "fluxhook sinks --enable webhook:1a2b3c4d5e6f",
        "receiver.cli.outbox:sinks",
    ),
}
