"""The streaming client's bookkeeping against an in-process fake of vLLM's /v1/completions stream.

The fake server (aiohttp.web on 127.0.0.1, a free port) waits TTFT_S, then streams one chunk per
token ITL_S apart (with a running usage count when ``continuous_usage_stats`` asks for it, as vLLM
does; a PAIRS prompt gets two events per write, so the client reads tokens two at a time), then the
usage chunk and [DONE]. Timing bounds are generous: this checks what
the client records, not how fast anything is.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kvstack.loadgen import LoadConfig, log_progress, run_load, send_request
from kvstack.stats import RequestResult, summarize
from kvstack.workloads import Conversation, Turn

TTFT_S = 0.15
ITL_S = 0.05
PROMPT_TOKEN_BONUS = 1000  # the fake's prompt_tokens: words + 1000, a number only the usage chunk gives


class FakeVLLM:
    """A tiny SSE server speaking the shape of vLLM's streaming completions."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.active = 0
        self.max_active = 0

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        idx = len(self.bodies)
        prompt: str = body["prompt"]
        if "ERROR" in prompt:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if "SLOW" in prompt:
                await asyncio.sleep(5)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)

            async def event(obj: Any) -> None:
                await resp.write(f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode())

            await asyncio.sleep(TTFT_S)
            n = body["max_tokens"]
            running = body.get("stream_options", {}).get("continuous_usage_stats")
            for i in range(n):
                if i and not ("PAIRS" in prompt and i % 2):
                    await asyncio.sleep(ITL_S)
                if "STREAMERR" in prompt and i == 1:
                    await event({"error": {"message": "engine died", "code": 500}})
                    return resp
                if "BADJSON" in prompt and i == 1:
                    await event("{not json")
                    return resp
                choice = {"index": 0, "text": f" w{idx}t{i}", "finish_reason": None}
                usage = {"prompt_tokens": 0, "completion_tokens": i + 1} if running else None
                chunk = {"id": "c", "object": "text_completion", "choices": [choice], "usage": usage}
                if "PAIRS" in prompt and i % 2 == 0:
                    pending = chunk  # written with the next token, in one write
                    continue
                if "PAIRS" in prompt:
                    await resp.write(f"data: {json.dumps(pending)}\n\ndata: {json.dumps(chunk)}\n\n".encode())
                    continue
                await event(chunk)
            usage = {
                "prompt_tokens": len(prompt.split()) + PROMPT_TOKEN_BONUS,
                "completion_tokens": n,
                "total_tokens": 0,
            }
            await event({"id": "c", "object": "text_completion", "choices": [], "usage": usage})
            await event("[DONE]")
            return resp
        finally:
            self.active -= 1


@asynccontextmanager
async def fake_server() -> AsyncIterator[tuple[FakeVLLM, str]]:
    fake = FakeVLLM()
    app = web.Application()
    app.router.add_post("/v1/completions", fake.completions)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def single(prompts: list[str], max_tokens: int = 4) -> list[Conversation]:
    return [Conversation(f"c{i}", p, 1, (Turn("q", 1, max_tokens),)) for i, p in enumerate(prompts)]


def test_one_request_timings_tokens_and_body():
    async def go():
        async with fake_server() as (fake, url), aiohttp.ClientSession() as s:
            cfg = LoadConfig(url, "tiny", api_key="sekret")
            rec, text = await send_request(s, cfg, "a b c", 5, conversation="x", turn=2)
            return fake, rec, text

    fake, rec, text = asyncio.run(go())
    assert rec.ok, rec.error
    assert (rec.conversation, rec.turn) == ("x", 2)
    assert TTFT_S * 0.8 < rec.ttft < TTFT_S + 1.0
    assert len(rec.token_times) == 5 and rec.token_times[0] == rec.first_token_time
    assert all(ITL_S * 0.6 < g < ITL_S + 0.5 for g in rec.itls), rec.itls
    assert rec.e2e >= rec.ttft + 4 * ITL_S * 0.8
    assert rec.end >= rec.token_times[-1]
    assert (rec.prompt_tokens, rec.output_tokens) == (3 + PROMPT_TOKEN_BONUS, 5)  # from the usage chunk
    assert text == "".join(f" w1t{i}" for i in range(5))
    body = fake.bodies[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert rec.chunk_tokens == [1] * 5 and rec.per_token  # one token per event, from the running usage
    assert rec.tpot == pytest.approx((rec.token_times[-1] - rec.first_token_time) / 4)
    assert body["temperature"] == 0 and body["ignore_eos"] is True
    assert (body["max_tokens"], body["model"], body["prompt"]) == (5, "tiny", "a b c")
    assert fake.headers[0]["Authorization"] == "Bearer sekret"


def test_failures_become_records():
    async def go():
        async with fake_server() as (fake, url), aiohttp.ClientSession() as s:
            cfg = LoadConfig(url, "tiny", request_timeout_s=0.4)
            out = {}
            for p in ("ERROR", "SLOW", "STREAMERR", "BADJSON"):
                out[p], _ = await send_request(s, cfg, p, 4)
            with socket.socket() as sock:  # a port with nothing listening
                sock.bind(("127.0.0.1", 0))
                closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
            out["refused"], _ = await send_request(s, LoadConfig(closed, "tiny"), "x", 4)
            return fake, out

    fake, out = asyncio.run(go())
    assert all(not r.ok for r in out.values())
    assert out["ERROR"].error.startswith("HTTP 500") and "boom" in out["ERROR"].error
    assert "timeout" in out["SLOW"].error and 0.3 < out["SLOW"].e2e < 3.0
    assert "engine died" in out["STREAMERR"].error and len(out["STREAMERR"].token_times) == 1
    assert out["BADJSON"].error.startswith("JSONDecodeError")
    assert out["refused"].error and out["refused"].end is not None
    assert "Authorization" not in fake.headers[0]
    s = summarize(list(out.values()))
    assert s.failed == 5 and s.completed == 0


def test_closed_loop_multi_round_builds_history_from_answers():
    convs = [
        Conversation(
            f"user{u}", f"sys{u}", 1, tuple(Turn(f"q{u}r{r}", 1, 2) for r in range(3)), keep_history=True
        )
        for u in range(2)
    ]
    seen: list[tuple[int, int | None]] = []

    async def go():
        async with fake_server() as (fake, url):
            cfg = LoadConfig(url, "tiny", concurrency=2)
            res = await run_load(convs, cfg, lambda done, total, rec: seen.append((done, total)))
            return fake, res

    fake, res = asyncio.run(go())
    assert len(res.records) == 6 and all(r.ok for r in res.records)
    assert res.stopped_by == "workload done" and res.conversations_started == 2
    assert seen == [(i, 6) for i in range(1, 7)]
    assert fake.max_active == 2  # two users in parallel
    # each prompt is the conversation's prompt built from the answers the server streamed before
    answers_by_prompt = {}
    for i, body in enumerate(fake.bodies, start=1):
        answers_by_prompt[body["prompt"]] = "".join(f" w{i}t{k}" for k in range(2))
    for c in convs:
        recs = [r for r in res.records if r.conversation == c.id]
        assert [r.turn for r in recs] == [0, 1, 2]
        assert all(a.end <= b.start for a, b in itertools.pairwise(recs))  # sequential turns
        answers: list[str] = []
        for r in range(3):
            p = c.prompt(r, answers)
            assert p in answers_by_prompt
            answers.append(answers_by_prompt[p])
        assert c.prompt(2, answers).startswith(f"sys{c.id[-1]} q{c.id[-1]}r0 w")


def test_interleave_takes_turns_round_robin():
    """Three 2-turn conversations, one user: u0r0 u1r0 u2r0 u0r1 u1r1 u2r1 (sequential would be
    u0r0 u0r1 u1r0 ...); with three users each conversation's turns still never overlap."""
    convs = [
        Conversation(
            f"u{u}", f"sys{u}", 1, tuple(Turn(f"q{u}r{r}", 1, 1) for r in range(2)), keep_history=True
        )
        for u in range(3)
    ]

    async def go(concurrency: int, interleave: bool):
        async with fake_server() as (fake, url):
            cfg = LoadConfig(url, "tiny", concurrency=concurrency, interleave=interleave)
            return fake, await run_load(convs, cfg)

    _, seq = asyncio.run(go(1, False))
    assert [(r.conversation, r.turn) for r in seq.records] == [
        ("u0", 0),
        ("u0", 1),
        ("u1", 0),
        ("u1", 1),
        ("u2", 0),
        ("u2", 1),
    ]
    _, res = asyncio.run(go(1, True))
    assert [(r.conversation, r.turn) for r in res.records] == [
        ("u0", 0),
        ("u1", 0),
        ("u2", 0),
        ("u0", 1),
        ("u1", 1),
        ("u2", 1),
    ]
    assert res.conversations_started == 3 and res.stopped_by == "workload done"
    fake, res = asyncio.run(go(3, True))
    assert len(res.records) == 6 and all(r.ok for r in res.records) and fake.max_active == 3
    for c in convs:
        a, b = (r for r in res.records if r.conversation == c.id)
        assert a.end <= b.start and (a.turn, b.turn) == (0, 1)


def test_failed_turn_stops_its_conversation():
    conv = Conversation(
        "u", "sys", 1, (Turn("a", 1, 2), Turn("ERROR", 1, 2), Turn("c", 1, 2)), keep_history=True
    )

    async def go():
        async with fake_server() as (fake, url):
            return fake, await run_load([conv], LoadConfig(url, "tiny"))

    fake, res = asyncio.run(go())
    assert [r.ok for r in res.records] == [True, False]
    assert res.conversations_aborted == 1 and len(fake.bodies) == 2
    meta = json.loads(json.dumps(res.meta()))
    assert (meta["requests"], meta["failed"], meta["conversations_aborted"]) == (2, 1, 1)
    assert meta["turns_unsent"] == 1  # turn c: never sent, and not lost from the denominators
    s = summarize(res.records, unsent=res.turns_unsent)
    assert (s.requests, s.failed, s.unsent, s.good) == (2, 1, 1, 1) and not s.clean
    assert s.goodput_fraction == pytest.approx(1 / 3)  # 1 good of 3 planned turns


def test_tokens_read_together_share_their_gap():
    """Two events per socket read: the client stamps them alike; each read's gap is spread over
    its two tokens, so ITL is per token and TPOT agrees with it."""

    async def go():
        async with fake_server() as (_, url), aiohttp.ClientSession() as s:
            return await send_request(s, LoadConfig(url, "tiny"), "PAIRS x", 6)

    rec, _ = asyncio.run(go())
    assert rec.ok, rec.error
    t = rec.token_times
    assert t[0] == t[1] and t[2] == t[3] and t[4] == t[5]  # one timestamp per read
    assert rec.chunk_tokens == [1] * 6 and rec.output_tokens == 6
    assert [k for _, k in rec.reads()] == [2, 2, 2]
    assert rec.multi_token_reads == (2, 2)
    itls = rec.itls
    assert len(itls) == 4 and itls[0] == itls[1] and itls[2] == itls[3]
    assert sum(itls) == pytest.approx(t[-1] - t[0])
    assert all(ITL_S * 0.3 < g < ITL_S / 2 + 0.25 for g in itls), itls  # half a gap each, never 0
    s = summarize([rec])
    assert s.itl_per == "token" and s.itl_multi_token_share == 1.0


def test_bounds_max_requests_and_max_seconds():
    async def go():
        async with fake_server() as (_, url):
            by_count = await run_load(
                single([f"p{i}" for i in range(10)], 2), LoadConfig(url, "tiny", max_requests=3)
            )
            t0 = time.perf_counter()
            by_time = await run_load(
                single([f"p{i}" for i in range(50)], 2),
                LoadConfig(url, "tiny", concurrency=2, max_seconds=0.5),
            )
            return by_count, by_time, time.perf_counter() - t0

    by_count, by_time, took = asyncio.run(go())
    assert len(by_count.records) == 3 and by_count.stopped_by == "max_requests"
    assert by_time.stopped_by == "max_seconds" and 2 <= len(by_time.records) < 50
    assert took < 3.0
    assert all(r.start - by_time.records[0].start < 0.5 + 0.1 for r in by_time.records)


def test_stop_event_ends_the_run_from_another_thread():
    """A drill sets the event once its action is over: no request starts after it."""
    stop = threading.Event()

    async def go():
        async with fake_server() as (_, url):
            asyncio.get_running_loop().call_later(0.4, stop.set)
            return await run_load(
                single([f"p{i}" for i in range(200)], 2),
                LoadConfig(url, "tiny", concurrency=2, max_seconds=30, stop=stop),
            )

    t0 = time.perf_counter()
    res = asyncio.run(go())
    assert res.stopped_by == "stop" and 2 <= len(res.records) < 200
    assert time.perf_counter() - t0 < 3.0


def test_open_loop_at_qps_overlaps_requests():
    async def go():
        async with fake_server() as (fake, url):
            cfg = LoadConfig(url, "tiny", mode="open", qps=20, arrival="uniform")
            return fake, await run_load(single([f"p{i}" for i in range(6)], 4), cfg)

    fake, res = asyncio.run(go())
    assert len(res.records) == 6 and all(r.ok for r in res.records)
    starts = sorted(r.start for r in res.records)
    assert starts[-1] - starts[0] >= 5 * 0.05 * 0.8  # arrivals 50 ms apart
    assert fake.max_active >= 2  # open loop does not wait for answers (each takes about 0.3 s)
    s = summarize(res.records, wall_time_s=res.wall_time_s)
    assert s.output_tokens == 24 and s.input_tokens == 6 * (2 + PROMPT_TOKEN_BONUS)


def test_config_validation_and_settings_dict():
    with pytest.raises(ValueError):
        LoadConfig("http://x", "m", mode="open")
    with pytest.raises(ValueError):
        LoadConfig("http://x", "m", concurrency=0)
    cfg = LoadConfig("http://x/", "m", api_key="k", extra_body={"top_k": 1})
    assert cfg.url == "http://x/v1/completions"
    assert cfg.body("p", 3)["top_k"] == 1
    d = cfg.to_dict()
    assert "api_key" not in d and d["api_key_set"] is True
    json.dumps(d)


def test_log_progress_prints_every_n_and_last(capsys):
    cb = log_progress("none/c1", every=2)
    ok, bad = RequestResult(0.0, 1.0), RequestResult(0.0, 1.0, error="HTTP 500: x")
    for done, rec in ((1, ok), (2, ok), (3, bad)):
        cb(done, 3, rec)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("none/c1: 2/3 requests")
    assert lines[1].endswith("none/c1: 3/3 requests, last failed: HTTP 500: x")
