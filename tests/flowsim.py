"""A simulated pool and service for `batchgen.adaptive.Flow`: no sleeping, any time scale.

Workers send through a `Flow` to a service with a token bucket (`rpm`, `burst`) and a cap
on requests in flight, each answered after `latency` x uniform(1 - jitter, 1 + jitter);
a refusal (429) comes back at once. A worker the flow tells to wait for an answer
(`delay()` is inf) is woken by the next answer; one told to wait seconds, then.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from batchgen.adaptive import Flow


@dataclass
class Outcome:
    seconds: float
    limit: float  # requests/s the service allows: min(rate, cap / latency)
    ok: int = 0
    sent: int = 0
    refused: int = 0
    done_at: list[float] = field(default_factory=list)
    in_flight: list[tuple[float, int]] = field(default_factory=list)  # (when, count)

    @property
    def achieved(self) -> float:
        """Successes per second over the run, as a share of the limit."""
        return self.ok / self.seconds / self.limit

    @property
    def share_429(self) -> float:
        return self.refused / max(self.sent, 1)

    def time_to(self, share: float, *, window: float) -> float:
        """When successes over the last `window` seconds first reach `share` of the limit."""
        need = share * self.limit * window
        times = self.done_at
        for n, when in enumerate(times):
            start = when - window
            if start < 0:
                continue
            if sum(1 for t in times[: n + 1] if t > start) >= need:
                return when
        return math.inf


def simulate(
    *,
    rate: float | None,
    latency: float,
    seconds: float | None = None,
    jobs: int | None = None,
    workers: int = 64,
    cap: int | None = None,
    burst: float = 2.0,
    jitter: float = 0.2,
    rpm: float | None = None,
    seed: int = 1,
    timer_tick: float = 0.0,
    make_flow: Callable[[Callable[[], float]], Flow] | None = None,
) -> Outcome:
    """Run until `seconds` of simulated time pass or `jobs` succeed. `rate`: the service's
    (None: unlimited); `rpm`: what the flow is told (None: it must find it)."""
    rng = random.Random(seed)
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    flow = make_flow(clock) if make_flow else Flow(rpm, clock=clock, max_in_flight=workers)
    limits = [rate if rate else math.inf]
    if cap:
        limits.append(cap / latency)
    outcome = Outcome(seconds=seconds or 0.0, limit=min(limits))
    tokens, refilled = burst, 0.0
    serving = 0
    events: list[tuple[float, int, int, str]] = []
    order = 0

    def push(when: float, worker: int, kind: str) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (when, order, worker, kind))

    for n in range(workers):
        push(0.0, n, "send")
    parked: list[int] = []
    sent_at = [0.0] * workers
    pending = jobs
    while events:
        when, _, worker, kind = heapq.heappop(events)
        now[0] = when
        if seconds is not None and when > seconds:
            break
        if kind == "send":
            if pending is not None and pending <= 0:
                continue
            delay = flow.delay()
            if math.isinf(delay):
                parked.append(worker)
                continue
            if delay > 0:
                if timer_tick:
                    delay = math.ceil(delay / timer_tick) * timer_tick
                push(when + delay, worker, "send")
                continue
            flow.take()
            outcome.sent += 1
            sent_at[worker] = when
            if rate:
                tokens = min(burst, tokens + (when - refilled) * rate)
                refilled = when
            if rate and tokens < 1:
                push(when, worker, "429")
            elif cap is not None and serving >= cap:
                tokens -= 1 if rate else 0  # the bucket counted it before the cap refused it
                push(when, worker, "429")
            else:
                tokens -= 1 if rate else 0
                serving += 1
                outcome.in_flight.append((when, flow.in_flight))
                push(when + latency * rng.uniform(1 - jitter, 1 + jitter), worker, "ok")
        elif kind == "ok":
            serving -= 1
            outcome.ok += 1
            outcome.done_at.append(when)
            flow.on_answer(sent_at[worker])
            if pending is not None:
                pending -= 1
            push(when, worker, "send")
            for parked_worker in parked:
                push(when, parked_worker, "send")
            parked.clear()
            if pending == 0:
                break
        else:
            outcome.refused += 1
            flow.on_throttle(sent_at[worker])
            push(when, worker, "send")
            if outcome.refused > 100_000:
                raise AssertionError("a storm of 429s")
    if seconds is None:
        outcome.seconds = now[0]
    return outcome
