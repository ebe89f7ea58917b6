"""Async streaming load generator for vLLM's OpenAI-compatible ``/v1/completions``.

Each request streams (``stream: true`` with ``stream_options.include_usage`` and
``continuous_usage_stats``), greedy (``temperature: 0``) and exactly ``max_tokens`` long
(``ignore_eos: true``); the client stamps the arrival of every chunk that carries a choice, like
vLLM's own benchmark client, into a :class:`kvstack.stats.RequestResult`, with the tokens each chunk
carried (the growth of its running usage count), and takes the token counts from the final usage
chunk. Definitions of what is computed from them: :mod:`kvstack.stats`.

Two ways to offer load, both over :class:`kvstack.workloads.Conversation`:

- closed loop (``concurrency`` users): each user takes the next conversation from a shared queue and
  sends its turns one after another, each after the previous answer arrived; multi-round
  conversations build every prompt from their own history (the answers the model returned).
  With ``interleave`` the conversations take turns instead: a user sends one turn of the
  conversation at the head of the queue, which then goes to the back, so every conversation is
  active at once and its history must survive the turns of all the others in between (how
  multi-round QA benchmarks make a working set outgrow the engine's own cache);
- open loop (``qps``): conversations start at that rate (Poisson or evenly spaced arrivals, seeded),
  however many are already running; turns within a conversation stay sequential, so with
  single-turn workloads this is a request rate.

A run is bounded by ``max_requests`` (requests sent) and ``max_seconds`` (no request starts
later); a request in flight at the deadline may finish within ``request_timeout_s``. Failures (HTTP
errors, error events in the stream, timeouts, connection errors) become records with ``error`` set,
never exceptions; a conversation stops at its first failed turn, since its history is incomplete,
and the turns it did not send are counted (``turns_unsent``) so no denominator loses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import aiohttp

from kvstack import log
from kvstack.stats import RequestResult
from kvstack.workloads import Conversation

#: ``progress(completed, planned_total_or_None, latest_record)``, called after every request.
Progress = Callable[[int, int | None, RequestResult], None]


@dataclass
class LoadConfig:
    """Where to send load and how much; see the module docstring for the two modes."""

    base_url: str
    model: str
    mode: Literal["closed", "open"] = "closed"
    concurrency: int = 1
    qps: float | None = None
    arrival: Literal["poisson", "uniform"] = "poisson"
    seed: int = 0
    request_timeout_s: float = 300.0
    max_requests: int | None = None
    max_seconds: float | None = None
    api_key: str | None = None
    think_time_s: float = 0.0
    #: closed loop: conversations take turns (one turn each, round robin) instead of running to the end
    interleave: bool = False
    #: merged into every request body (e.g. ``{"top_k": 1}``); overrides the defaults
    extra_body: dict[str, Any] = field(default_factory=dict)
    #: set from another thread: no further request starts (a drill whose action has ended)
    stop: threading.Event | None = None
    #: keep every prompt as sent (``RunResult.sent``: for another client to replay them)
    keep_prompts: bool = False

    def __post_init__(self) -> None:
        if self.mode == "closed" and self.concurrency < 1:
            raise ValueError("closed loop needs concurrency >= 1")
        if self.mode == "open" and not (self.qps and self.qps > 0):
            raise ValueError("open loop needs qps > 0")

    @property
    def url(self) -> str:
        """The completions endpoint."""
        return self.base_url.rstrip("/") + "/v1/completions"

    def headers(self) -> dict[str, str]:
        """Request headers, with the bearer token when an API key is set."""
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def body(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        """The JSON body of one streaming completion request."""
        return {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            **self.extra_body,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings for a run's results, the API key left out."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("api_key", "stop")}
        d["api_key_set"] = bool(self.api_key)
        return d


@dataclass
class RunResult:
    """A run's records, when it started (epoch seconds) and how long it ran (seconds)."""

    records: list[RequestResult]
    started_at: float
    wall_time_s: float
    stopped_by: str
    conversations_started: int
    conversations_aborted: int
    #: turns of aborted conversations that were never sent
    turns_unsent: int = 0
    #: with ``keep_prompts``: each request as sent, in order (conversation, turn, prompt, max_tokens)
    sent: list[dict[str, Any]] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        """JSON-ready description of the run without its records (those go to JSONL)."""
        return {
            "started_at": self.started_at,
            "wall_time_s": self.wall_time_s,
            "stopped_by": self.stopped_by,
            "requests": len(self.records),
            "failed": sum(1 for r in self.records if not r.ok),
            "conversations_started": self.conversations_started,
            "conversations_aborted": self.conversations_aborted,
            "turns_unsent": self.turns_unsent,
        }


def merged(runs: Sequence[RunResult]) -> RunResult:
    """Runs one after another as one: records in order (each conversation prefixed with its run's
    index, ``p1/user0``, when there are several, so passes never share a conversation), wall
    times, starts, aborts and unsent turns summed; stopped by the last run's reason."""
    if len(runs) == 1:
        return runs[0]
    records = [
        replace(r, conversation=f"p{k}/{r.conversation}" if r.conversation else r.conversation)
        for k, run in enumerate(runs)
        for r in run.records
    ]
    return RunResult(
        records=records,
        started_at=runs[0].started_at,
        wall_time_s=sum(r.wall_time_s for r in runs),
        stopped_by=runs[-1].stopped_by,
        conversations_started=sum(r.conversations_started for r in runs),
        conversations_aborted=sum(r.conversations_aborted for r in runs),
        turns_unsent=sum(r.turns_unsent for r in runs),
        sent=[x for r in runs for x in r.sent],
    )


def split_passes(records: Sequence[RequestResult]) -> list[list[RequestResult]]:
    """The records of a :func:`merged` run, one list per run it merged (by the ``p<k>/`` prefix
    of their conversation; a run of one pass is one list)."""
    out: dict[str, list[RequestResult]] = {}
    for r in records:
        head, sep, _ = (r.conversation or "").partition("/")
        out.setdefault(head if sep and head.startswith("p") else "", []).append(r)
    return list(out.values())


def log_progress(label: str, every: int = 10) -> Progress:
    """A progress callback printing one line (``kvstack.log.progress``) every *every* requests and at
    the last planned one."""

    def report(done: int, total: int | None, rec: RequestResult) -> None:
        if done % every == 0 or done == total:
            failed = "" if rec.ok else f", last failed: {rec.error}"
            log.progress(f"{label}: {done}/{total if total is not None else '?'} requests{failed}")

    return report


async def _sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[float, str]]:
    """Yield ``(arrival time, data)`` of each server-sent event's ``data:`` field."""
    buf = b""
    data: list[str] = []
    async for chunk in resp.content.iter_any():
        now = time.perf_counter()
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode()
            if not line:
                if data:
                    yield now, "\n".join(data)
                    data = []
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
    if data:
        yield time.perf_counter(), "\n".join(data)


async def send_request(
    session: aiohttp.ClientSession,
    cfg: LoadConfig,
    prompt: str,
    max_tokens: int,
    *,
    conversation: str = "",
    turn: int = 0,
) -> tuple[RequestResult, str]:
    """Send one streaming completion; returns its record and the generated text. Never raises
    (except on cancellation)."""
    rec = RequestResult(start=time.perf_counter(), conversation=conversation, turn=turn)
    text: list[str] = []
    try:
        async with asyncio.timeout(cfg.request_timeout_s):
            async with session.post(
                cfg.url, json=cfg.body(prompt, max_tokens), headers=cfg.headers()
            ) as resp:
                if resp.status != 200:
                    body = (await resp.text())[:300]
                    rec.error = f"HTTP {resp.status}: {body}"
                else:
                    await _read_stream(resp, rec, text)
    except TimeoutError:
        rec.error = f"timeout after {cfg.request_timeout_s:g} s"
    except Exception as e:  # connection errors, bad JSON in the stream, ...: a failed record
        rec.error = f"{type(e).__name__}: {e}"
    rec.end = time.perf_counter()
    if rec.error is None and rec.first_token_time is None and max_tokens > 0:
        rec.error = "no token received"
    return rec, "".join(text)


async def _read_stream(resp: aiohttp.ClientResponse, rec: RequestResult, text: list[str]) -> None:
    """Fill *rec* and *text* from a completions event stream; sets ``rec.error`` on a bad stream."""
    done = False
    counted = 0  # the running completion-token count of the per-chunk usage
    async with contextlib.aclosing(_sse_events(resp)) as events:
        async for t, data in events:
            if data.strip() == "[DONE]":
                done = True
                break
            msg = json.loads(data)
            if "error" in msg:
                err = msg["error"]
                rec.error = f"stream error: {err.get('message', err) if isinstance(err, dict) else err}"
                return
            usage = msg.get("usage")
            if msg.get("choices"):
                if rec.first_token_time is None:
                    rec.first_token_time = t
                rec.token_times.append(t)
                text.append(msg["choices"][0].get("text") or "")
                if usage:
                    n = int(usage.get("completion_tokens") or 0)
                    rec.chunk_tokens.append(n - counted)
                    counted = n
            if usage:
                rec.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                rec.output_tokens = int(usage.get("completion_tokens") or 0)
    if not done:
        rec.error = "stream ended without [DONE]"
    elif not rec.output_tokens:
        rec.output_tokens = len(rec.token_times)  # no usage chunk: one token per chunk


class _Runner:
    """Shared state of one run: budget, deadline, records, progress."""

    def __init__(self, conversations: Sequence[Conversation], cfg: LoadConfig, progress: Progress | None):
        self.conversations = conversations
        self.cfg = cfg
        self.progress = progress
        self.records: list[RequestResult] = []
        self.sent = 0
        self.started = 0
        self.aborted = 0
        self.unsent = 0
        self.sent_prompts: list[dict[str, Any]] = []
        self.stopped_by = "workload done"
        planned = sum(len(c.turns) for c in conversations)
        self.planned = min(planned, cfg.max_requests) if cfg.max_requests is not None else planned
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + cfg.max_seconds if cfg.max_seconds is not None else None

    def over(self) -> bool:
        """True when no further request may start (budget spent or deadline passed)."""
        if self.cfg.max_requests is not None and self.sent >= self.cfg.max_requests:
            self.stopped_by = "max_requests"
            return True
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            self.stopped_by = "max_seconds"
            return True
        if self.cfg.stop is not None and self.cfg.stop.is_set():
            self.stopped_by = "stop"
            return True
        return False

    def may_send(self) -> bool:
        """Take one request from the budget; False once the run is over."""
        if self.over():
            return False
        self.sent += 1
        return True

    async def turn(self, session: aiohttp.ClientSession, conv: Conversation, answers: list[str]) -> bool:
        """Send *conv*'s next turn (``len(answers)``) built from the answers so far; True when it
        succeeded and the conversation may go on."""
        i = len(answers)
        if i and self.cfg.think_time_s:
            await asyncio.sleep(self.cfg.think_time_s)
        if not self.may_send():
            return False
        turn = conv.turns[i]
        prompt = conv.prompt(i, answers)
        if self.cfg.keep_prompts:
            self.sent_prompts.append(
                {"conversation": conv.id, "turn": i, "prompt": prompt, "max_tokens": turn.max_tokens}
            )
        rec, text = await send_request(
            session, self.cfg, prompt, turn.max_tokens, conversation=conv.id, turn=i
        )
        self.records.append(rec)
        if self.progress:
            self.progress(len(self.records), self.planned, rec)
        if not rec.ok:
            if i + 1 < len(conv.turns):
                self.aborted += 1
                self.unsent += len(conv.turns) - i - 1
            return False
        answers.append(text)
        return True

    async def conversation(self, session: aiohttp.ClientSession, conv: Conversation) -> None:
        """Send *conv*'s turns in order, each prompt built from the answers so far."""
        self.started += 1
        answers: list[str] = []
        while len(answers) < len(conv.turns) and await self.turn(session, conv, answers):
            pass

    async def interleaved(self, session: aiohttp.ClientSession) -> None:
        """``concurrency`` users sending one turn at a time of the conversation at the queue's head."""
        queue: deque[tuple[Conversation, list[str]]] = deque((c, []) for c in self.conversations)
        in_flight = 0

        async def user() -> None:
            nonlocal in_flight
            while not self.over():
                if not queue:
                    if not in_flight:
                        return
                    await asyncio.sleep(0.005)  # the others' conversations come back to the queue
                    continue
                conv, answers = queue.popleft()
                if not answers:
                    self.started += 1
                in_flight += 1
                try:
                    if await self.turn(session, conv, answers) and len(answers) < len(conv.turns):
                        queue.append((conv, answers))
                finally:
                    in_flight -= 1

        await asyncio.gather(*(user() for _ in range(self.cfg.concurrency)))

    async def closed(self, session: aiohttp.ClientSession) -> None:
        """``concurrency`` users, each running conversations from a shared queue until it is empty."""
        queue = list(reversed(self.conversations))

        async def user() -> None:
            while queue and not self.over():
                await self.conversation(session, queue.pop())

        await asyncio.gather(*(user() for _ in range(self.cfg.concurrency)))

    async def open(self, session: aiohttp.ClientSession) -> None:
        """Start conversations at ``qps`` (seeded Poisson or uniform arrivals)."""
        rng = random.Random(self.cfg.seed)
        qps = float(self.cfg.qps or 0)
        tasks = []
        next_t = time.perf_counter()
        for conv in self.conversations:
            if self.over():
                break
            delay = next_t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.over():
                break
            tasks.append(asyncio.create_task(self.conversation(session, conv)))
            next_t += rng.expovariate(qps) if self.cfg.arrival == "poisson" else 1.0 / qps
        await asyncio.gather(*tasks)


async def run_load(
    conversations: Sequence[Conversation],
    cfg: LoadConfig,
    progress: Progress | None = None,
    *,
    session: aiohttp.ClientSession | None = None,
) -> RunResult:
    """Offer *conversations* as load per *cfg*; returns every request's record."""
    runner = _Runner(conversations, cfg, progress)
    started_at = time.time()
    own = session is None
    if session is None:
        limit = cfg.concurrency if cfg.mode == "closed" else 0
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit), timeout=aiohttp.ClientTimeout(total=None)
        )
    try:
        if cfg.mode == "open":
            await runner.open(session)
        elif cfg.interleave:
            await runner.interleaved(session)
        else:
            await runner.closed(session)
    finally:
        if own:
            await session.close()
    return RunResult(
        records=runner.records,
        started_at=started_at,
        wall_time_s=time.perf_counter() - runner.t0,
        stopped_by=runner.stopped_by,
        conversations_started=runner.started,
        conversations_aborted=runner.aborted,
        turns_unsent=runner.unsent,
        sent=runner.sent_prompts,
    )


def run(
    conversations: Sequence[Conversation], cfg: LoadConfig, progress: Progress | None = None
) -> RunResult:
    """Blocking wrapper of :func:`run_load` for scripts and fab tasks."""
    return asyncio.run(run_load(conversations, cfg, progress))
