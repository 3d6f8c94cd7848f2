"""Batching, several files per request, metrics, access logs, CORS and readiness detail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import TinyPipeline, launch_api

from api_service.batching import MicroBatcher
from api_service.model import ServedModel, load_served_model
from api_service.monitoring import DriftWindow, Metrics
from api_service.settings import ServingSettings as Settings
from common.registry import ModelRegistry


@pytest.fixture
def client(registry_copy: ModelRegistry) -> Iterator[TestClient]:
    with launch_api(registry_copy.root, model_poll_seconds=0, drift_window=50) as api:
        yield api.client


def files_of(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format."""
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head, value = line.rsplit(" ", 1)
            if head == name or head.startswith(name + "{"):
                return float(value)
    raise AssertionError(f"no sample {name} {labels}")


def new_batcher(model: ServedModel, **settings: Any) -> MicroBatcher:
    """A batcher for `model` with small test settings, any of them overridden."""
    defaults: dict[str, Any] = {
        "max_batch": 4,
        "max_wait_ms": 0,
        "max_queue": 10,
        "max_pixels": 10**6,
        "drift_window": 10,
        "metrics": Metrics(),
    }
    return MicroBatcher(model, **{**defaults, **settings})


def test_several_files_in_one_request(client: TestClient, tiny_pipeline: TinyPipeline) -> None:
    samples = tiny_pipeline.test_images()[:3]
    uploads = files_of([p for p, _ in samples])
    uploads.insert(1, ("files", ("notes.png", b"not an image", "image/png")))
    response = client.post("/v1/predict/batch", files=uploads)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "1"
    results = body["results"]
    assert [r["filename"] for r in results] == [u[1][0] for u in uploads]
    assert [r["status"] for r in results] == [200, 422, 200, 200]
    assert results[1]["error"]["code"] == "invalid_image" and results[1]["prediction"] is None
    single = client.post("/v1/predict", files={"file": uploads[0][1]}).json()
    assert results[0]["prediction"] == single


def test_too_many_files(tiny_pipeline: TinyPipeline) -> None:
    path, _ = tiny_pipeline.test_images()[0]
    with launch_api(tiny_pipeline.models, max_files_per_request=2, model_poll_seconds=0) as small:
        response = small.client.post("/v1/predict/batch", files=files_of([path] * 3))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_files"


def test_metrics(client: TestClient, tiny_pipeline: TinyPipeline) -> None:
    samples = tiny_pipeline.test_images()[:20]
    labels = []
    for path, _ in samples:
        labels.append(client.post("/v1/predict", files={"file": (path.name, path.read_bytes())}))
    client.post("/v1/predict", files={"file": ("x.png", b"", "image/png")})
    client.post("/v1/predict", content=b"{}", headers={"content-type": "application/json"})
    text = client.get("/metrics").text
    predicted = [r.json()["label"] for r in labels]
    for label in set(predicted):
        assert metric(text, "mega_predictions_total", label=label) == predicted.count(label)
    assert metric(
        text, "http_request_duration_seconds_count", handler="/v1/predict", status="200"
    ) == len(samples)
    assert metric(text, "http_requests_total", handler="/v1/predict", status="422") == 1
    # The upload guard answers before routing; its 415 still counts under the route.
    assert metric(text, "http_requests_total", handler="/v1/predict", status="415") == 1
    assert metric(text, "mega_inference_batch_size_sum") == len(samples)
    assert metric(text, "mega_inference_seconds_count") >= 1
    assert metric(text, "mega_model_info", version="1") == 1
    assert metric(text, "mega_model_version") == 1
    assert metric(text, "mega_model_load_failing") == 0
    assert metric(text, "mega_http_requests_in_flight") == 1  # the scrape itself
    assert metric(text, "mega_drift_window_predictions") == len(samples)
    drift = metric(text, "mega_prediction_drift")
    assert not math.isnan(drift) and 0 <= drift < 1


def test_drift_window_measures_distance() -> None:
    window = DriftWindow(["a", "b"], {"a": 50, "b": 50}, size=4)
    assert math.isnan(window.distance())
    window.add([0, 0, 0, 0])
    assert window.distance() == pytest.approx(0.5)
    window.add([1, 1])  # the window keeps the latest 4: a a b b
    assert window.distance() == pytest.approx(0.0)
    assert math.isnan(DriftWindow(["a"], None, size=4).distance())


def test_access_log_has_a_request_id(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="api_service.access"):
        given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        made = client.get("/readyz")
    assert given.headers["x-request-id"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", made.headers["x-request-id"])
    records = [r for r in caplog.records if r.name == "api_service.access"]
    assert [(r.path, r.status) for r in records] == [("/healthz", 200), ("/readyz", 200)]  # type: ignore[attr-defined]
    assert records[0].request_id == "abc-123"  # type: ignore[attr-defined]


def test_json_log_format(client: TestClient) -> None:
    from api_service.logs import JsonFormatter, request_id

    token = request_id.set("r-1")
    try:
        record = logging.LogRecord(
            "api_service.access", logging.INFO, "", 0, "GET / %s", (200,), None
        )
        record.status = 200  # an `extra=` field
        line = JsonFormatter().format(record)
    finally:
        request_id.reset(token)
    assert json.loads(line) == {
        "time": ANY,
        "level": "info",
        "logger": "api_service.access",
        "message": "GET / 200",
        "request_id": "r-1",
        "status": 200,
    }


def test_json_log_time_is_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `time` field is UTC whatever the host's zone (the docs promise UTC)."""
    import json
    import time

    from api_service.logs import JsonFormatter

    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30: a local time would differ
    time.tzset()
    try:
        record = logging.makeLogRecord({"msg": "x", "created": 0.0})
        stamp = json.loads(JsonFormatter().format(record))["time"]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert stamp == "1970-01-01T00:00:00Z"


def test_cors_only_for_allowed_origins(tiny_pipeline: TinyPipeline, client: TestClient) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    default = client.options("/v1/predict", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in default.headers
    with launch_api(
        tiny_pipeline.models, cors_allow_origins=["https://app.example"], model_poll_seconds=0
    ) as api:
        cors = api.client
        ok = cors.options("/v1/predict", headers={"Origin": "https://app.example", **preflight})
        bad = cors.options("/v1/predict", headers={"Origin": "https://evil.example", **preflight})
        simple = cors.get("/healthz", headers={"Origin": "https://app.example"})
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in bad.headers
    assert simple.headers["access-control-allow-origin"] == "https://app.example"


def test_cors_setting_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEGA_CORS_ALLOW_ORIGINS", "https://a.example, https://b.example")
    assert Settings().cors_allow_origins == ["https://a.example", "https://b.example"]
    monkeypatch.delenv("MEGA_CORS_ALLOW_ORIGINS")
    assert Settings().cors_allow_origins == []


def test_readiness_detail(client: TestClient) -> None:
    body = client.get("/readyz").json()
    assert body["model_version"] == "1" and body["alias_version"] == "1"
    assert body["load_error"] is None


def test_batcher_forms_batches(tiny_pipeline: TinyPipeline) -> None:
    """Images submitted together share batches; each gets its own row back."""
    settings = Settings(models_root=str(tiny_pipeline.models), max_batch=8)
    model = load_served_model(settings)
    metrics = Metrics()
    batcher = new_batcher(
        model, max_batch=8, max_wait_ms=20, max_queue=100, drift_window=100, metrics=metrics
    )
    batcher.start()
    paths = [p for p, _ in tiny_pipeline.test_images()[:20]]

    async def submit() -> list:
        return await asyncio.gather(*(batcher.predict_many([p.read_bytes()]) for p in paths))

    try:
        results = asyncio.run(submit())
    finally:
        batcher.close()
    batches = metrics.batch_size.collect()[0].samples
    count = next(s.value for s in batches if s.name.endswith("_count"))
    total = next(s.value for s in batches if s.name.endswith("_sum"))
    assert total == 20 and count <= 5, "20 images should need at most a few batches"
    from api_service.inputs import prepare
    from api_service.model import Engine

    engine = Engine(model.tflite, model.spec.shape, threads=1, max_batch=1)
    for path, (row,) in zip(paths, results, strict=True):
        alone = engine.predict(prepare(path.read_bytes(), model.spec, 10**6))
        np.testing.assert_allclose(row, alone, atol=1e-5)


def test_by_default_a_lone_image_goes_to_inference_without_waiting(
    tiny_pipeline: TinyPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CPU a wait for more images only idles the inference process (docs/serving.md):
    with the default settings the batcher never sets a timer before sending a batch
    (the wait is a `loop.call_later` in `MicroBatcher._dispatch`)."""
    from api_service.manager import ModelManager

    monkeypatch.delenv("MEGA_MAX_WAIT_MS", raising=False)  # the default, not the shell's
    settings = Settings(models_root=str(tiny_pipeline.models), _env_file=None)
    manager = ModelManager(settings, Metrics())
    manager.check()
    assert manager.active is not None
    batcher = manager.active.batcher
    waits: list[float] = []
    image = tiny_pipeline.test_images()[0][0].read_bytes()

    async def predict_three() -> None:
        loop = asyncio.get_running_loop()
        call_later = loop.call_later

        def spy(delay: float, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
            waits.append(delay)
            return call_later(delay, *args, **kwargs)

        loop.call_later = spy  # type: ignore[method-assign]
        for _ in range(3):
            await batcher.predict_many([image])

    try:
        asyncio.run(predict_three())
    finally:
        manager.close()
    assert waits == []


def test_the_event_loop_talks_to_the_inference_process_itself(
    tiny_pipeline: TinyPipeline,
) -> None:
    """No thread of the server sits between the loop and the process: each hop to one
    cost a GIL hand-off from the busy loop (docs/performance.md). Batches are answered
    from one loop after another (a test's `asyncio.run` each), and a batch cut off
    when its loop closes takes its process with it: the next gets a new one."""
    import os
    import signal
    import threading

    model = load_served_model(Settings(models_root=str(tiny_pipeline.models)))
    # Two images: a reply read for the wrong batch would show.
    samples = tiny_pipeline.test_images()
    image = samples[0][0].read_bytes()
    other = next(path for path, label in samples if label != samples[0][1]).read_bytes()
    batcher = new_batcher(model)
    before = set(threading.enumerate())
    batcher.start()
    try:
        started = {t.name for t in set(threading.enumerate()) - before}
        assert started == {f"{model.version}-stderr", f"{model.version}-watchdog"}
        from api_service.inputs import prepare
        from api_service.model import Engine

        engine = Engine(model.tflite, model.spec.shape, threads=1, max_batch=1)
        alone = {data: engine.predict(prepare(data, model.spec, 10**6)) for data in (image, other)}
        assert not np.allclose(alone[image], alone[other], atol=1e-6)
        [first] = asyncio.run(batcher.predict_many([image]))
        [second] = asyncio.run(batcher.predict_many([other]))  # another loop
        np.testing.assert_allclose(first, alone[image], atol=1e-5)
        np.testing.assert_allclose(second, alone[other], atol=1e-5)
        stopped = batcher.worker._process
        assert stopped is not None
        os.kill(stopped.pid, signal.SIGSTOP)  # its batch never comes back

        async def give_up() -> None:
            await asyncio.wait_for(batcher.predict_many([image]), timeout=0.5)

        with pytest.raises(TimeoutError):
            asyncio.run(give_up())  # closing the loop cancels the batch in flight
        assert stopped.poll() is not None, "the process of a cut-off batch is stopped"
        [fresh] = asyncio.run(batcher.predict_many([other]))
        np.testing.assert_allclose(fresh, alone[other], atol=1e-5)
        assert {t.name for t in set(threading.enumerate()) - before} <= started
        assert batcher.worker._process is not None
        assert batcher.worker._process.pid != stopped.pid
    finally:
        batcher.close()


def test_close_answers_what_is_queued_before_the_process_ends(
    tiny_pipeline: TinyPipeline,
) -> None:
    """A swap closes the old batcher from the manager's thread while the event loop
    still has its requests: each is answered, then the process ends."""
    import threading

    from api_service.batching import BatcherClosedError

    model = load_served_model(Settings(models_root=str(tiny_pipeline.models)))
    image = tiny_pipeline.test_images()[0][0].read_bytes()
    batcher = new_batcher(model, max_batch=2, max_queue=100)
    batcher.start()
    process = batcher.worker._process
    queued = threading.Event()
    answers: list[list] = []

    async def twelve_requests() -> None:
        requests = [asyncio.ensure_future(batcher.predict_many([image])) for _ in range(12)]
        await asyncio.sleep(0)  # each is queued now; the first batch is running
        queued.set()
        answers.extend(await asyncio.gather(*requests))

    loop_thread = threading.Thread(target=asyncio.run, args=(twelve_requests(),))
    loop_thread.start()
    try:
        assert queued.wait(10)
        batcher.close()  # several batches still to run
        loop_thread.join(10)
    finally:
        batcher.worker.kill()  # no-op once closed
    assert len(answers) == 12
    assert all(row.shape == (len(model.labels),) for [row] in answers)
    assert process is not None and process.returncode == 0, "closed, not killed"
    with pytest.raises(BatcherClosedError):
        asyncio.run(batcher.predict_many([image]))


def test_a_batch_logs_under_no_request_id(tiny_pipeline: TinyPipeline) -> None:
    """A batch serves many requests: its log lines name none of them (not the one
    whose arrival happened to start it)."""
    import logging

    from api_service.logs import request_id
    from api_service.worker import WorkerError

    model = load_served_model(Settings(models_root=str(tiny_pipeline.models)))
    image = tiny_pipeline.test_images()[0][0].read_bytes()
    batcher = new_batcher(model)
    batcher.start()
    seen: list[str | None] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(request_id.get())

    async def one_request() -> None:
        request_id.set("req-1")
        await batcher.predict_many([image])

    capture = Capture()
    logger = logging.getLogger("api_service.batching")
    logger.addHandler(capture)
    try:
        batcher.worker.kill()  # its batch fails, and the failure is logged
        with pytest.raises(WorkerError, match="died"):
            asyncio.run(one_request())
    finally:
        logger.removeHandler(capture)
        batcher.close()
    assert seen == [None]


def test_a_process_started_while_its_batcher_closes_is_stopped(
    tiny_pipeline: TinyPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() on the manager's thread can come while a batch loads a new process
    (after a crash): that process must not outlive the closed batcher."""
    from api_service.worker import InferenceWorker, WorkerError

    model = load_served_model(Settings(models_root=str(tiny_pipeline.models)))
    image = tiny_pipeline.test_images()[0][0].read_bytes()
    worker = InferenceWorker(model, threads=1, max_batch=4, max_pixels=10**6)
    started = []
    start = worker.start

    def start_during_close() -> None:
        start()
        started.append(worker._process)
        worker._closed = True  # what close() or kill() from another thread sets

    monkeypatch.setattr(worker, "start", start_during_close)
    with pytest.raises(WorkerError, match="stopped"):
        asyncio.run(worker.run([image]))
    [process] = started
    assert process is not None and process.poll() is not None
    assert worker._process is None


def test_a_wait_for_more_images_cut_off_by_its_loop_does_not_stall_the_next(
    tiny_pipeline: TinyPipeline,
) -> None:
    """With MEGA_MAX_WAIT_MS set, a loop can end while its batch waits for more images
    (the timer belongs to that loop, and never fires): the next loop's requests are
    answered all the same."""
    model = load_served_model(Settings(models_root=str(tiny_pipeline.models)))
    image = tiny_pipeline.test_images()[0][0].read_bytes()
    batcher = new_batcher(model, max_wait_ms=300)
    batcher.start()

    async def predict(timeout: float) -> list:
        return await asyncio.wait_for(batcher.predict_many([image]), timeout)

    try:
        with pytest.raises(TimeoutError):
            asyncio.run(predict(0.05))  # ends while the batch waits for more
        [row] = asyncio.run(predict(10.0))
        assert row.shape == (len(model.labels),)
    finally:
        batcher.close()


def test_a_reply_owed_to_an_ended_loop_is_not_read_as_the_next_loops(
    tiny_pipeline: TinyPipeline,
) -> None:
    """A loop can end with a batch sent and its reply never read (its task cancelled
    before it started): the next loop's batch must get its own answer, from a new
    process, not the reply the process still owes."""
    from api_service.inputs import prepare
    from api_service.model import Engine
    from api_service.worker import InferenceWorker

    model = load_served_model(Settings(models_root=str(tiny_pipeline.models)))
    samples = tiny_pipeline.test_images()
    image = samples[0][0].read_bytes()
    other = next(path for path, label in samples if label != samples[0][1]).read_bytes()
    engine = Engine(model.tflite, model.spec.shape, threads=1, max_batch=1)
    worker = InferenceWorker(model, threads=1, max_batch=4, max_pixels=10**6)
    worker.start()

    async def leave_a_reply_owed() -> None:
        await worker.run([image])  # this loop now has its streams
        worker.submit([image]).close()  # sent at once; its reply is never read

    try:
        asyncio.run(leave_a_reply_owed())
        first = worker._process
        [row], _, _ = asyncio.run(worker.run([other]))
        np.testing.assert_allclose(
            row, engine.predict(prepare(other, model.spec, 10**6)), atol=1e-5
        )
        assert first is not None and worker._process is not first
    finally:
        worker.close()


def test_a_reply_with_too_few_results_is_a_500_and_logged(
    tiny_pipeline: TinyPipeline, caplog: pytest.LogCaptureFixture
) -> None:
    from api_service.worker import WorkerError

    model = load_served_model(Settings(models_root=str(tiny_pipeline.models)))
    batcher = new_batcher(model)

    async def short_reply() -> tuple[list, float, float]:
        return [], 0.0, 0.0  # no row for the batch's one image

    batcher.worker.submit = lambda images: short_reply()  # type: ignore[method-assign]
    with pytest.raises(WorkerError, match="0 results for a batch of 1"):
        asyncio.run(batcher.predict_many([b"image"]))
    assert "0 results for a batch of 1" in caplog.text
    batcher.close()


def test_batcher_refuses_when_the_queue_is_full(tiny_pipeline: TinyPipeline) -> None:
    from api_service.inputs import InputError

    model = load_served_model(Settings(models_root=str(tiny_pipeline.models)))
    batcher = new_batcher(model, max_queue=2)  # not started: nothing drains the queue
    with pytest.raises(InputError) as refused:
        asyncio.run(batcher.predict_many([b"a", b"b", b"c"]))
    assert refused.value.status == 503


def test_queue_depth_counts_the_images_waiting_now(tiny_pipeline: TinyPipeline) -> None:
    """Regression: the gauge was set when a batch started, so images queued behind a
    running batch never showed (it read 0 here)."""
    import os
    import signal

    model = load_served_model(Settings(models_root=str(tiny_pipeline.models)))
    image = tiny_pipeline.test_images()[0][0].read_bytes()
    metrics = Metrics()
    batcher = new_batcher(model, max_batch=1, metrics=metrics)
    batcher.start()
    try:
        process = batcher.worker._process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)  # the first batch never comes back

        async def queue_behind_it() -> float | None:
            requests = [asyncio.ensure_future(batcher.predict_many([image])) for _ in range(4)]
            await asyncio.sleep(0.2)  # the first is in the stopped process, three wait
            depth = metrics.registry.get_sample_value("mega_inference_queue_depth")
            for request in requests:
                request.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
            return depth

        assert asyncio.run(queue_behind_it()) == 3
    finally:
        batcher.close()


@contextlib.contextmanager
def record_request_ids(logger: str) -> Iterator[list[tuple[str, str | None, bool]]]:
    """(message, request id current when it was logged, with a traceback) of each record
    `logger` gets meanwhile."""
    from api_service.logs import request_id

    seen: list[tuple[str, str | None, bool]] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), request_id.get(), record.exc_info is not None))

    handler, target = Recorder(logging.ERROR), logging.getLogger(logger)
    target.addHandler(handler)
    try:
        yield seen
    finally:
        target.removeHandler(handler)


def test_a_dead_inference_process_is_replaced(
    registry_copy: ModelRegistry, tiny_pipeline: TinyPipeline
) -> None:
    """A decoder crash kills the inference process, not the server: the batch in
    flight fails with a JSON 500 and the next request gets a new process."""
    upload = {"file": ("digit.png", tiny_pipeline.test_images()[0][0].read_bytes(), "image/png")}
    with launch_api(registry_copy.root, model_poll_seconds=0) as api:
        client = api.client
        worker = api.app.state.manager.active.batcher.worker
        process = worker._process
        process.kill()
        process.wait()
        with record_request_ids("api_service") as logged:
            first = client.post("/v1/predict", files=upload, headers={"X-Request-ID": "crash-1"})
        assert first.status_code == 500 and first.json()["error"]["code"] == "internal_error"
        # Regression: the 500 came from a layer outside the access log's, without the id
        # in its header or in its log record.
        assert first.headers["x-request-id"] == "crash-1"
        assert ("unhandled error", "crash-1", True) in logged
        second = client.post("/v1/predict", files=upload)
        assert second.status_code == 200, second.text
        assert worker._process is not None and worker._process.pid != process.pid


def test_a_hung_inference_process_is_killed_and_replaced(
    tiny_pipeline: TinyPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal
    import time

    from api_service import worker as worker_module
    from api_service.worker import InferenceWorker, WorkerError

    monkeypatch.setattr(worker_module, "BATCH_TIMEOUT_S", 1.0)
    model = load_served_model(Settings(models_root=str(tiny_pipeline.models)))
    image = tiny_pipeline.test_images()[0][0].read_bytes()
    worker = InferenceWorker(model, threads=1, max_batch=4, max_pixels=10**6)
    worker.start()
    try:
        hung = worker._process
        assert hung is not None
        os.kill(hung.pid, signal.SIGSTOP)  # as if a decoder never returned
        started = time.monotonic()

        async def twice() -> np.ndarray:
            with pytest.raises(WorkerError):
                await worker.run([image])
            assert time.monotonic() - started < 10
            [probabilities], _, _ = await worker.run([image])  # a new process answers
            return probabilities

        assert asyncio.run(twice()).shape == (len(model.labels),)
        assert worker._process is not None and worker._process.pid != hung.pid
    finally:
        worker.close()
