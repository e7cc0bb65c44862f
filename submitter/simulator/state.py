"""What the simulator knows: its settings, the fault rules, every job it accepted, its counters and
its background work. The BFL and Replicate parts share one :class:`SimState` and use only its public
methods."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from submitter.simulator.faults import OUTCOMES, Faults

__all__ = ["TOTALS", "Job", "Rule", "SimState"]

#: The counters `Simulator.stats()` totals (besides "tasks").
TOTALS = (
    "submit_requests",
    "submits_rejected",
    "polls",
    "cancels",
    "callbacks_sent",
    "callbacks_failed",
    "deliveries",
    "deliveries_refused",
)


@dataclass
class Rule:
    prompt_contains: str
    faults: Faults
    rejected: int = 0  # submits answered from faults.submit_errors so far


@dataclass
class Job:
    """One accepted BFL task (Replicate's predictions extend it); the counters are the simulator's record."""

    id: str
    model: str
    prompt: str
    faults: Faults
    base_url: str
    accepted_at: float
    webhook_url: str | None
    webhook_secret: str | None
    submits: int = 1
    polls: int = 0
    callbacks_sent: int = 0
    deliveries: int = 0
    urls_issued: int = 0

    @property
    def done_at(self) -> float:
        return self.accepted_at + self.faults.runtime

    def files(self, now: float) -> dict[str, str]:
        """The files its delivery URLs may name, each with the seed of its image."""
        return {f"sample.{self.faults.image_format}": self.id}

    def stats(self, now: float) -> dict[str, Any]:
        return {
            "kind": "bfl",
            "model": self.model,
            "prompt": self.prompt,
            "submits": self.submits,
            "polls": self.polls,
            "callbacks_sent": self.callbacks_sent,
            "deliveries": self.deliveries,
            "status": OUTCOMES[self.faults.outcome] if now >= self.done_at else "Pending",
        }


class SimState:
    """Settings (public attributes, reassignable: `replicate_secret` rotation), rules, jobs and counters."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        url_lifetime: float,
        callback_retries: tuple[float, ...],
        default_faults: Faults,
        replicate_secret: str,
        proxy_secret: str,
        replicate_url_lifetime: float,
        replicate_data_lifetime: float,
    ) -> None:
        self.clock = clock
        self.url_lifetime = url_lifetime
        self.callback_retries = callback_retries
        self.replicate_secret = replicate_secret
        self.proxy_secret = proxy_secret
        self.replicate_url_lifetime = replicate_url_lifetime
        self.replicate_data_lifetime = replicate_data_lifetime
        self._default_rule = Rule("", default_faults)
        self._rules: list[Rule] = []
        self._jobs: dict[str, Job] = {}
        self._rejected_by_prompt: Counter[str] = Counter()
        self._totals: Counter[str] = Counter()
        self._background: set[asyncio.Task[None]] = set()

    # -- rules --

    def add_rule(self, prompt_contains: str, faults: Faults) -> int:
        """Give jobs whose prompt contains `prompt_contains` these faults (first match wins); the rule count."""
        self._rules.append(Rule(prompt_contains, faults))
        return len(self._rules)

    def screen(self, prompt: str) -> Faults | int:
        """The faults of a new job with this prompt, or the HTTP status rejecting this submit
        (counted against the prompt: :meth:`submits_for` adds it to the job accepted next)."""
        rule = next((r for r in self._rules if r.prompt_contains in prompt), self._default_rule)
        if rule.rejected < len(rule.faults.submit_errors):
            status = rule.faults.submit_errors[rule.rejected]
            rule.rejected += 1
            self._rejected_by_prompt[prompt] += 1
            self.count("submits_rejected")
            return status
        return rule.faults

    def submits_for(self, prompt: str) -> int:
        """The submits an accepted job with this prompt took: itself and the rejected ones before it."""
        return 1 + self._rejected_by_prompt.pop(prompt, 0)

    # -- jobs and counters --

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job

    def job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def count(self, name: str) -> None:
        self._totals[name] += 1

    def stats(self) -> dict[str, Any]:
        """Per-task counters and totals. A task's `submits` includes the rejected
        attempts with the same prompt that preceded it."""
        now = self.clock()
        tasks = {job.id: job.stats(now) for job in self._jobs.values()}
        totals = {"tasks": len(tasks)} | {name: self._totals[name] for name in TOTALS}
        return {"tasks": tasks, "totals": totals}

    # -- background work --

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait until every callback and other background work has finished."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def cancel_background(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
