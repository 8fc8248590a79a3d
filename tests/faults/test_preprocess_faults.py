"""Fault injection for the data engine.

1. Every step (`python -m preprocess <step>`, a real process) is stopped three times at seeded random
   moments, by SIGKILL and by SIGINT (Ctrl-C), then run to the end; its outputs must equal an
   uninterrupted run's byte for byte, with every clip completed exactly once, no failure recorded,
   no temporary file or reply cache left. Ctrl-C must exit 130 with one last line saying what was
   kept and how to resume, and no traceback. For the LLM steps, the requests the service answered
   across the interrupted runs and the resume exceed an uninterrupted run's by at most one per
   interruption (the request in flight): replies already received are replayed, not paid for again.
2. A misbehaving LLM service (HTTP 429 and 500, a connection cut mid-reply, truncated JSON, replies
   slower than the client's timeout, slow replies) changes nothing in the outputs.
3. A service that echoes the API key (whole, its prefix, a middle part, URL-encoded, in JSON, in an
   error and in a reply): no run of 6 characters of the key reaches any file written or either stream.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from preprocess.arguments import STEPS
from preprocess.runner import StepState
from scripts.build_tiny_sam3 import write_tiny_sam3
from scripts.llm_server import serve
from scripts.make_demo_spatialvid import make_demo

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]
ORDER = list(STEPS)
NUM_CLIPS = 4
KEY = "sk-Fk3/Qz7+Xw9=Lp2_Vt5Mn8Hj4"  # '/', '+', '=': its URL-encoded form differs from it
LLM_STEPS = ("objects", "camera_qa", "object_qa")
# longest random wait after the chosen number of finished clips: about one clip's work
EXTRA_S = {"frames": 0.02, "masks": 0.15}


def start_server(truth, faults=None, tmp=None, delay=0.0, slow_seconds=1.0):
    faults_path = None
    if faults:
        faults_path = tmp / f"faults_{time.monotonic_ns()}.json"
        faults_path.write_text(json.dumps(faults))
    server = serve(str(truth), 0, str(faults_path) if faults_path else None, KEY, slow_seconds, delay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def step_argv(step: str, ctx: dict, out: Path, url: str | None = None) -> list[str]:
    llm = ["--llm_base_url", url or ctx["url"], "--llm_backoff", "0.01"]
    return {
        "frames": ["--input", str(ctx["src"]), "--out", str(out), "--workers", "1"],
        "objects": ["--out", str(out), "--workers", "1", *llm],
        "masks": ["--out", str(out), "--model", str(ctx["sam3"]), "--score_threshold", "0", "--batch_size", "12",
                  "--workers", "1", "--device", "cpu"],
        "camera_qa": ["--out", str(out), "--workers", "1", "--seed", "0", *llm],
        "object_qa": ["--out", str(out), "--workers", "1", "--seed", "0", *llm],
    }.get(step, ["--out", str(out)])


def run_in_process(step: str, argv: list[str]) -> int:
    return importlib.import_module(STEPS[step].module).main(argv)


def files(root: Path) -> dict[str, bytes]:
    """Every output file under `root` (the state folder apart), by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "state"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_torch_thread):
    """An uninterrupted run of every step, and a copy of the output folder before and after each."""
    root = tmp_path_factory.mktemp("preprocess-faults")
    src = make_demo(root / "src", num_clips=NUM_CLIPS, seed=0)
    server, url = start_server(src / "truth.json", delay=0.03)
    ctx = {"root": root, "src": src, "sam3": write_tiny_sam3(root / "sam3"), "url": url, "server": server,
           "before": {}, "after": {}, "requests": {}}
    saved_key = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = KEY
    out = root / "ref"
    out.mkdir()
    for step in ORDER:
        ctx["before"][step] = root / f"before_{step}"
        shutil.copytree(out, ctx["before"][step])
        served = server.requests
        assert run_in_process(step, step_argv(step, ctx, out)) == 0
        ctx["requests"][step] = server.requests - served
        ctx["after"][step] = root / f"after_{step}"
        shutil.copytree(out, ctx["after"][step])
    assert len((out / "dift_data.jsonl").read_text().splitlines()) == 4 * NUM_CLIPS
    yield ctx
    if saved_key is None:
        os.environ.pop("OPENAI_API_KEY", None)
    else:
        os.environ["OPENAI_API_KEY"] = saved_key
    server.shutdown()
    server.server_close()


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": KEY, "OMP_NUM_THREADS": "1"}


def interrupt_once(step: str, argv: list[str], out: Path, sig: int, rng: random.Random, ctx: dict,
                   paid: int) -> dict:
    """Start the step, wait for a seeded moment inside its work, send `sig`; what happened. The
    moment: an LLM step is stopped after a random number of the replies it still needs (`paid`: how
    many it has had since the test began), mostly inside a clip; other steps after a random number
    of further clips plus up to about one clip's work."""
    state = StepState(out, step)
    done_before = len(state.completed())
    server = ctx["server"]
    served = server.requests
    proc = subprocess.Popen([sys.executable, "-m", "preprocess", step, *argv], cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    started = "to do" if STEPS[step].per_clip else "reading"
    deadline = time.monotonic() + 300  # a bound on waiting, not a timed assertion
    try:
        while proc.poll() is None and time.monotonic() < deadline and not any(started in ln for ln in lines):
            time.sleep(0.005)
        if step in LLM_STEPS:
            target = rng.randrange(1, max(2, ctx["requests"][step] - paid))
            while proc.poll() is None and time.monotonic() < deadline and server.requests - served < target:
                time.sleep(0.002)
        elif STEPS[step].per_clip:
            target = done_before + rng.randrange(0, max(1, NUM_CLIPS - done_before - 1))
            while proc.poll() is None and time.monotonic() < deadline and len(state.completed()) < target:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, EXTRA_S.get(step, 0.3)))
        else:
            time.sleep(rng.uniform(0, 0.3))
        landed = proc.poll() is None
        proc.send_signal(sig)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=60)
    return {"landed": landed, "code": proc.returncode, "stderr": "".join(lines),
            "work_left": len(state.completed()) < NUM_CLIPS}


@pytest.mark.parametrize("step", ORDER)
def test_interrupted_then_resumed_equals_uninterrupted(step, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference["before"][step], out)
    argv = step_argv(step, reference, out)
    rng = random.Random(f"preprocess-faults/{step}")
    kinds = [signal.SIGKILL, signal.SIGINT] if ORDER.index(step) % 2 else [signal.SIGINT, signal.SIGKILL]
    server, served = reference["server"], reference["server"].requests
    landed = 0
    for sig in [*kinds, kinds[0]]:
        if STEPS[step].per_clip and len(StepState(out, step).completed()) == NUM_CLIPS:
            break
        got = interrupt_once(step, argv, out, sig, rng, reference, server.requests - served)
        assert "Traceback" not in got["stderr"], got["stderr"][-3000:]
        if STEPS[step].per_clip:  # a per-clip step is slow enough to be caught with work left
            assert got["landed"] and got["work_left"], got["stderr"][-2000:]
        if not got["landed"]:  # a whole-file step may finish before the signal
            assert got["code"] == 0, got["stderr"][-2000:]
            continue
        if not STEPS[step].per_clip and got["code"] in (0, -signal.SIGINT):
            # The signal came as the process was exiting after its work: its exit status was already 0
            # (seen with SIGKILL in CI), or Python's SIGINT handler was gone.
            continue
        landed += 1
        if sig == signal.SIGKILL:
            assert got["code"] == -signal.SIGKILL
        else:
            assert got["code"] == 130, got["stderr"][-2000:]
            last = got["stderr"].strip().splitlines()[-1]
            assert last.startswith(f"python -m preprocess {step}: interrupted: ") and "rerun the same command" in last
    assert run_in_process(step, argv) == 0  # the resume

    assert files(out) == files(reference["after"][step])
    assert not [p for p in out.rglob(".*")], "temporary files left behind"
    if STEPS[step].per_clip:
        state = StepState(out, step)
        lines = state.completed_path.read_text().splitlines()
        assert sorted(lines) == sorted(StepState(reference["after"][step], step).completed()) and len(lines) == NUM_CLIPS
        assert state.failed() == {} and not list(state.replies_dir.glob("*.jsonl"))
    if step in LLM_STEPS:
        paid, uninterrupted = server.requests - served, reference["requests"][step]
        assert uninterrupted <= paid <= uninterrupted + landed, (paid, uninterrupted, landed)


def test_a_misbehaving_service_changes_nothing(reference, tmp_path):
    """429, 500, a cut connection, truncated JSON, a reply past the timeout and slow replies in the QA
    steps: retried or asked again, and the outputs are an uninterrupted fault-free run's."""
    faults = [
        {"match": "demo0_000/camera_qa/0->6/verify", "faults": ["429", "500"]},
        {"match": "demo0_001/camera_qa/0->6/question", "faults": ["cutoff"]},
        {"match": "demo0_002/camera_qa/6->11/cot", "faults": ["truncated", "timeout"]},
        {"match": "demo0_003/camera_qa/0->6/cot", "faults": ["502", "truncated"]},
        {"match": "demo0_000/object_qa/direction", "faults": ["truncated", "cutoff"]},
        {"match": "demo0_002/object_qa/verify", "faults": ["timeout", "503"]},
    ]
    server, url = start_server(reference["src"] / "truth.json", faults, tmp_path, delay=0.05, slow_seconds=1.5)
    try:
        out = tmp_path / "out"
        shutil.copytree(reference["before"]["camera_qa"], out)
        for step in ("camera_qa", "object_qa"):
            assert run_in_process(step, [*step_argv(step, reference, out, url), "--workers", "4",
                                         "--llm_timeout", "1.0"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert all(not entry["faults"] for entry in server.faults.entries)  # every fault was served
    assert files(out) == files(reference["after"]["object_qa"])


def leaks(text: str) -> list[str]:
    """Every 6-character run of the key (or of its URL-encoded / JSON forms) found in `text`."""
    forms = {KEY, quote(KEY, safe=""), json.dumps(KEY)[1:-1]}
    return sorted({form[i:i + 6] for form in forms for i in range(len(form) - 5) if form[i:i + 6] in text})


def test_the_key_never_reaches_a_file_or_a_stream(reference, tmp_path):
    faults = [
        {"match": "demo0_000/objects", "faults": ["echokey"]},  # 400 echoing the key: the clip fails
        {"match": "demo0_001/objects", "faults": ["echokey500", "echokey500"]},  # retried, then answered
        {"match": "demo0_002/objects", "faults": ["echokey_reply"]},  # the reply itself holds the key
        {"match": "demo0_003/objects", "faults": ["cutoff", "truncated"]},
    ]
    server, url = start_server(reference["src"] / "truth.json", faults, tmp_path)
    out = tmp_path / "out"
    shutil.copytree(reference["before"]["objects"], out)
    streams = []
    try:
        for extra in ([], ["--retry_failed", "--llm_api_key", KEY]):  # the key from the variable, then the flag
            proc = subprocess.run([sys.executable, "-m", "preprocess", "objects", "--out", str(out), "--workers", "2",
                                   "--llm_base_url", url, "--llm_backoff", "0.01", "--log_level", "DEBUG", *extra],
                                  cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
            streams += [proc.stdout, proc.stderr]
    finally:
        server.shutdown()
        server.server_close()
    written = {str(p): p.read_bytes().decode("utf-8", "replace") for p in out.rglob("*") if p.is_file()}
    for name, text in [*written.items(), ("stdout/stderr", "".join(streams))]:
        assert not leaks(text), (name, leaks(text))
    assert all(not entry["faults"] for entry in server.faults.entries)  # every echo was served
    assert any("failed.jsonl" in p for p in written)  # the failure record was written, and scanned
    first = streams[1]
    assert "HTTP 400 (not retried)" in first and "Incorrect API key provided: ***" in first  # the echo, scrubbed
    assert json.loads((out / "clips" / "demo0_002" / "objects.json").read_text())["dynamic_object"] == "***"
    assert sorted(StepState(out, "objects").completed()) == [f"demo0_{i:03d}" for i in range(NUM_CLIPS)]
