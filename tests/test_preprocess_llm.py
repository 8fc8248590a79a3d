"""The LLM steps against the loopback OpenAI-compatible server: faults are retried, then recorded;
no crash; the API key never reaches the logs."""

from __future__ import annotations

import json
import threading

import pytest

from dift.core.cli import JobFailed
from preprocess import clip_frames, objects
from preprocess.runner import StepState
from scripts.llm_server import serve
from scripts.make_demo_spatialvid import make_demo

SECRET = "sk-Tq8Rw2Vn5Xj4Lc7"


@pytest.fixture()
def server_factory():
    servers = []

    def start(truth, faults=None, tmp=None, api_key=SECRET, slow_seconds=1.5):
        faults_path = None
        if faults is not None:
            faults_path = tmp / "faults.json"
            faults_path.write_text(json.dumps(faults))
        server = serve(str(truth), 0, str(faults_path) if faults_path else None, api_key, slow_seconds)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture()
def demo_frames(tmp_path):
    src = make_demo(tmp_path / "svid", num_clips=5, seed=0)
    out = tmp_path / "out"
    clip_frames.main(["--input", str(src), "--out", str(out), "--workers", "2"])
    return src, out


def _objects(out, url, *extra):
    return objects.main(["--out", str(out), "--llm_base_url", url, "--workers", "3", "--llm_timeout", "0.5",
                         "--llm_retries", "3", "--llm_backoff", "0.01", "--llm_tries", "2", "--log_level", "DEBUG", *extra])


def test_faults_are_retried_then_recorded_and_the_key_is_never_logged(demo_frames, server_factory, tmp_path,
                                                                      monkeypatch, caplog, capfd):
    src, out = demo_frames
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    truth = json.loads((src / "truth.json").read_text())
    url = server_factory(src / "truth.json", [
        {"match": "demo0_000/objects", "faults": ["500", "429", "timeout"]},  # 3 transient failures: retried
        {"match": "demo0_001/objects", "faults": ["badjson"]},  # one unusable reply: asked again
        {"match": "demo0_002/objects", "faults": ["missing", "missing"]},  # unusable every try: recorded
        {"match": "demo0_003/objects", "faults": ["503"] * 4},  # the service stays down: recorded
    ], tmp_path)
    with caplog.at_level("DEBUG"):
        assert _objects(out, url) == 0
    state = StepState(out, "objects")
    assert sorted(state.completed()) == ["demo0_000", "demo0_001", "demo0_004"]
    failed = state.failed()
    assert set(failed) == {"demo0_002", "demo0_003"}
    assert "no usable reply in 2 tries" in failed["demo0_002"] and "missing field" in failed["demo0_002"]
    assert "HTTP 503 after 4 attempts" in failed["demo0_003"]
    for cid in state.completed():
        got = json.loads((out / "clips" / cid / "objects.json").read_text())
        assert got == {k: truth[cid][k] for k in ("dynamic_object", "static_object")}
    summary = json.loads((out / "state" / "objects" / "summary.json").read_text())
    assert (summary["done"], summary["failed"]) == (3, 2)
    logs = caplog.text + "".join(capfd.readouterr())
    assert "retry" in logs and SECRET not in logs

    # a rerun skips what is done and what failed, unless told to retry the failures
    assert _objects(out, url) == 0
    assert json.loads((out / "state" / "objects" / "summary.json").read_text())["skipped_failed"] == 2
    assert _objects(out, url, "--retry_failed") == 0
    assert sorted(StepState(out, "objects").completed()) == [f"demo0_{i:03d}" for i in range(5)]
    assert StepState(out, "objects").failed() == {}
    assert len((out / "state" / "objects" / "completed.txt").read_text().splitlines()) == 5  # no duplicates


def test_wrong_key_is_not_retried_and_not_recorded(demo_frames, server_factory, tmp_path, monkeypatch):
    src, out = demo_frames
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-1234")
    url = server_factory(src / "truth.json", None, tmp_path)
    with pytest.raises(JobFailed, match="objects: every clip failed"):  # one clip asked, and it failed
        _objects(out, url, "--clips", "demo0_000")
    reason = StepState(out, "objects").failed()["demo0_000"]
    assert "HTTP 401 (not retried)" in reason and "Incorrect API key provided: ***" in reason
    assert "sk-wrong-key-1234" not in (out / "state" / "objects" / "failed.jsonl").read_text()  # the server echoed it


def test_frames_step_failures_are_recorded(tmp_path):
    src = make_demo(tmp_path / "svid", num_clips=2, seed=0)
    ann = src / "annotations" / "group_0000" / "demo0_000"
    (ann / "indexes.txt").write_text("# nothing\n")
    ann1 = src / "annotations" / "group_0001" / "demo0_001"
    (ann1 / "indexes.txt").write_text("".join(f"{i} {i % 20}\n" for i in range(51)))
    out = tmp_path / "out"
    with pytest.raises(JobFailed, match=r"frames: every clip failed \(2 of 2; reasons in state/frames/failed.jsonl"):
        clip_frames.main(["--input", str(src), "--out", str(out)])
    failed = StepState(out, "frames").failed()
    assert "no frames listed" in failed["demo0_000"] and "51 frames listed, more than 50" in failed["demo0_001"]
    (ann / "indexes.txt").write_text("0 0\nx 3\n")
    with pytest.raises(JobFailed, match="indexes.txt:2: expected two integers"):  # the first reason is in the line
        clip_frames.main(["--input", str(src), "--out", str(out), "--retry_failed", "--clips", "demo0_000"])
    assert "indexes.txt:2: expected two integers" in StepState(out, "frames").failed()["demo0_000"]
    # a third of the clips failing is a failure of the run only beyond --max_skip_fraction
    (ann / "indexes.txt").write_text("0 0\n1 2\n")
    assert clip_frames.main(["--input", str(src), "--out", str(out), "--retry_failed",
                             "--max_skip_fraction", "0.5"]) == 0
    with pytest.raises(JobFailed, match="1 of 2 clips failed, more than --max_skip_fraction 0.4"):
        clip_frames.main(["--input", str(src), "--out", str(out), "--max_skip_fraction", "0.4"])


def test_model_from_flag_else_env_else_default(monkeypatch):
    from preprocess.llm import DEFAULT_MODEL, LLMArguments, LLMClient

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("LLM_MODEL", "env-model")
    assert LLMClient(LLMArguments(llm_model="flag-model")).model == "flag-model"
    assert LLMClient(LLMArguments()).model == "env-model"
    monkeypatch.delenv("LLM_MODEL")
    assert LLMClient(LLMArguments()).model == DEFAULT_MODEL
