"""What a batch leaves out, and what it must not: a request with `options.progress: false` publishes no
per-stage progress events yet is stored, announced and answered like any other; a stage takes the
envelope its own process published only for byte-identical data; the embedded batch goes through the
gateway's intake and answers every line once; quick blocking calls run on the loop, slow ones in a
thread."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time

import aiohttp
import pytest

from services.batch import diagnose_batch_embedded
from shared.bus import PROGRESS_PREFIX, Published
from shared.natsserver import NatsServer
from shared.offload import Offload
from shared.schemas import DiagnosisRequest, StageEnvelope, new_id, now
from tests.foundation.helpers import REQUEST, TIMED_STAGES, run_to_end, sse_events, stack_on


async def test_progress_off_publishes_only_the_result_event(fresh_nats: NatsServer) -> None:
    async with stack_on(fresh_nats.url) as st, aiohttp.ClientSession() as http:
        quiet = await run_to_end(http, st.url, {**REQUEST, "options": {"progress": False}})
        loud = await run_to_end(http, st.url, REQUEST)
        assert quiet["status"] == loud["status"] == "completed"
        assert quiet["request"]["options"]["progress"] is False and "progress" not in loud["request"]["options"]
        assert set(quiet["timings_ms"]) == set(TIMED_STAGES)  # every stage ran all the same
        events = {i: [e for n, e in await sse_events(http, st.url, i) if n == "progress"]
                  for i in (quiet["id"], loud["id"])}
    assert [(e["stage"], e["state"]) for e in events[quiet["id"]]] == [("gateway", "result")]
    assert {e["stage"] for e in events[loud["id"]]} >= {*TIMED_STAGES, "gateway"}


def test_a_published_model_is_taken_once_and_only_for_identical_bytes() -> None:
    published = Published()
    env = StageEnvelope(id=new_id(), request=DiagnosisRequest.model_validate(REQUEST), created_at=now())
    data = env.model_dump_json().encode()
    published.add("a:topology", data, env)
    assert published.take("a:topology", data.replace(b"10.96.0.10", b"10.96.0.11")) is None  # changed: validate
    assert published.take("a:topology", data) is None  # gone after the first take, whatever it was
    published.add("a:topology", data, env)
    assert published.take("a:topology", data) is env
    assert published.take("b:topology", data) is None  # never published here
    for i in range(3):  # bounded by bytes: the oldest entries go
        published.MAX_BYTES = 2 * len(data)
        published.add(f"c{i}", data, env)
    assert published.take("c0", data) is None and published.take("c2", data) is env
    quiet = Published(enabled=False)  # a deployed service: nothing in this process consumes its output
    quiet.add("d:topology", data, env)
    assert quiet.take("d:topology", data) is None


@pytest.mark.parametrize("line_options", [None, {"progress": True}])
async def test_the_embedded_batch_answers_every_line_through_the_intake(
        fresh_nats: NatsServer, capsys: pytest.CaptureFixture[str], line_options: dict[str, bool] | None) -> None:
    lines = [json.dumps({**REQUEST, "port": 1000 + i, **({"options": line_options} if line_options else {})})
             for i in range(40)]
    lines.insert(7, '{"src": "10.244.1.5"}')
    async with stack_on(fresh_nats.url) as st:
        worst = await diagnose_batch_embedded(io.BytesIO(("\n".join(lines) + "\n").encode()), st, 4)
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert worst == 3 and len(out) == 41  # the invalid line's status is the worst; every line is answered
    assert out[7]["line"] == 8 and "dst" in out[7]["error"]
    answered = [d for d in out if "line" not in d]
    assert [d["request"]["port"] for d in answered] == list(range(1000, 1040))  # in input order
    assert {d["status"] for d in answered} == {"completed"} and len({d["id"] for d in answered}) == 40
    # a batch turns progress events off unless the line itself says otherwise
    assert {d["request"]["options"].get("progress", True) for d in answered} == {line_options is not None}


async def test_no_progress_subject_is_written_for_a_quiet_batch(fresh_nats: NatsServer,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    async with stack_on(fresh_nats.url) as st:
        assert st.gateway_bus is not None
        seen: list[str] = []

        async def record(msg: object) -> None:
            seen.append(str(getattr(msg, "subject", "")))

        sub = await st.gateway_bus.subscribe(f"{PROGRESS_PREFIX}.>", cb=record)
        lines = "\n".join(json.dumps({**REQUEST, "port": 2000 + i}) for i in range(10)) + "\n"
        await diagnose_batch_embedded(io.BytesIO(lines.encode()), st, 4)
        await asyncio.sleep(0.2)
        await sub.unsubscribe()
    ids = {json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()}
    assert sorted(seen) == sorted(f"{PROGRESS_PREFIX}.{i}" for i in ids)  # one `result` event each, nothing else


async def test_a_quick_call_runs_on_the_loop_and_a_slow_one_in_a_thread() -> None:
    offload = Offload(inline_below_s=0.005)
    loop_thread = threading.current_thread()

    def where(cpu_s: float) -> threading.Thread:
        end = time.thread_time() + cpu_s
        while time.thread_time() < end:
            pass
        return threading.current_thread()

    assert await offload(where, 0.0) is not loop_thread  # the first call, of unknown cost: a thread
    assert await offload(where, 0.0) is loop_thread  # quick: inline
    assert await offload(where, 0.05) is loop_thread  # its cost is known only afterwards
    assert await offload(where, 0.0) is not loop_thread  # now slow on average: a thread
    for _ in range(40):  # quick again: back on the loop
        last = await offload(where, 0.0)
    assert last is loop_thread
