"""A loopback OpenAI-compatible chat server that answers the data engine's LLM calls
deterministically from the demo clips' ground truth, and injects faults on request.

Serves POST /v1/chat/completions on 127.0.0.1 (stdlib http.server, one thread per request).
It tells the calls apart by the engine's trace header (X-Trace-Id: "<clip id>/<step>/.../<task>/<try>")
and answers:
    objects                 {"dynamic_object", "static_object"} from the clip's truth
    verify                  camera: {"answer": "YES"}; object: every highlighted frame valid
    direction / speed       the truth's direction + distance / speed labels
    question*               a question built from the times (and box) in the prompt
    cot*                    <thinking> with one <output_image> per helper image </thinking><answer>
                            with the correct answer the prompt states
Unknown clips get generic answers. Faults (--faults FILE, a JSON list of {"match": substring of the
trace header, "faults": [...]}) are consumed in order by matching requests:
    "500", "502", "503", "429"  that HTTP error (429 with Retry-After: 0)
    "timeout", "slow"           sleep --slow_seconds, then answer (a client with a shorter timeout gives up)
    "badjson"                   a reply that is not JSON
    "truncated"                 the right JSON reply cut in the middle (as a reply hitting max_tokens)
    "cutoff"                    the HTTP body cut in the middle and the connection closed
    "missing"                   JSON without the expected fields
    "wrongletter"               a CoT answering another option
    "echokey"                   HTTP 400 whose error echoes the API key it was sent: whole, its first
                                characters, a middle part, its end, URL-encoded and inside JSON
    "echokey500"                the same echo with HTTP 500 (retried by the client)
    "echokey_reply"             HTTP 200 whose reply text holds the key (whole and in parts)
`server.requests` counts the requests served (tests check that a resumed run does not pay twice).

    python scripts/llm_server.py --truth DEMO/truth.json --port 0 --port_file /tmp/llm.port
    # prints "LLM server listening on http://127.0.0.1:PORT/v1"
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger("llm_server")
TRACE_HEADER = "X-Trace-Id"
SEPARATOR_MARK = "images are Masked Frames"
DEFAULT_TRUTH = {"dynamic_object": "moving object", "static_object": "background", "direction": "Moving Right",
                 "distance": "Maintaining Roughly the Same Distance", "speed": "Maintaining a Constant Speed"}


class FaultSchedule:
    def __init__(self, entries: list[dict] | None = None):
        self.entries = [{"match": e["match"], "faults": list(e["faults"])} for e in entries or []]
        self.lock = threading.Lock()

    def next_fault(self, trace: str) -> str | None:
        with self.lock:
            for entry in self.entries:
                if entry["match"] in trace and entry["faults"]:
                    return entry["faults"].pop(0)
        return None


def _texts(messages: list[dict]) -> tuple[str, int, int]:
    """All text of the user message, the number of images, and the number after the separator."""
    texts, images, after = [], 0, None
    for msg in messages:
        content = msg.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for part in parts:
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
                if SEPARATOR_MARK in part.get("text", ""):
                    after = 0
            elif part.get("type") == "image_url":
                images += 1
                if after is not None:
                    after += 1
    return "\n".join(texts), images, after or 0


def key_echoes(key: str) -> str:
    """The key as careless services echo it: whole, its first characters, a middle part, its end,
    URL-encoded and inside JSON."""
    third = max(1, len(key) // 3)
    return (f"Incorrect API key provided: {key}. You sent {key[:8]}..., which contains {key[third:2 * third]} and "
            f"ends with ...{key[-7:]}; as a query: ?api_key={quote(key, safe='')}; as JSON: "
            f"{json.dumps({'api_key': key})}")


def answer(trace: str, messages: list[dict], truth: dict, fault: str | None) -> str:
    """The reply text for one request."""
    parts = trace.split("/")
    clip, task = parts[0], (parts[-2] if len(parts) >= 3 else parts[-1])
    step = parts[1] if len(parts) > 1 else ""
    gt = {**DEFAULT_TRUTH, **truth.get(clip, {})}
    text, n_images, n_helpers = _texts(messages)
    if fault == "badjson":
        return "Sure! Here is what I think: {not json"
    if fault == "missing":
        return "{}" if not task.startswith("cot") else "<thinking>too short</thinking>"
    if fault == "truncated":
        text = answer(trace, messages, truth, None)
        return text[:len(text) // 2]
    if task == "objects":
        return json.dumps({"dynamic_object": gt["dynamic_object"], "static_object": gt["static_object"]})
    if task == "verify":
        if step == "camera_qa":
            return json.dumps({"answer": "YES"})
        return json.dumps({"is_any_dynamic": True, "valid_frame_indices": list(range(n_images)),
                           "object_description": gt["dynamic_object"]})
    if task == "direction":
        return json.dumps({"direction": gt["direction"], "distance": gt["distance"]})
    if task == "speed":
        return json.dumps({"speed": gt["speed"]})
    question_part = text.split("Question:", 1)[-1]  # CoT prompts list every frame time before the question
    times = re.findall(r"(\d+(?:\.\d+)?)s\b", question_part)
    a, b = (times[0], times[1]) if len(times) >= 2 else ("0", "1")
    if task.startswith("question"):
        kind = task.removeprefix("question").lstrip("_")
        box = re.search(r"\[\d+,\d+,\d+,\d+\]", text)
        subject = {"": "How does the camera move",
                   "direct": f"In which direction does the {gt['dynamic_object']} move",
                   "bbox": f"In which direction does the object at {box.group(0) if box else '[0,0,1,1]'} move",
                   "distance": f"How does the distance between the {gt['dynamic_object']} and the camera change",
                   "speed": f"How does the speed of the {gt['dynamic_object']} change"}.get(kind, "What happens")
        return json.dumps({"question": f"{subject} from {a}s to {b}s?"})
    if task.startswith("cot"):
        m = re.search(r"The correct answer is ([A-D])\. ([^\n]*?)\.\n", text)
        letter, option = (m.group(1), m.group(2)) if m else ("A", "")
        if fault == "wrongletter":
            letter = "B" if letter != "B" else "C"
        tags = " to ".join(["<output_image>"] * n_helpers)
        return (f"<thinking>The question concerns {a}s to {b}s of the video. I look at the scene and keep the "
                f"highlighted region in mind. Picturing it from {tags}, I compare where it sits in each view and how "
                f"its pixels shift between them, which settles the answer.</thinking><answer>{letter}. {option}</answer>")
    return json.dumps({"error": f"unknown task {task!r}"})


def make_handler(truth: dict, faults: FaultSchedule, api_key: str | None, slow_seconds: float, delay: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # the default handler logs to stderr unconditionally
            log.debug(fmt, *args)

        def _send(self, status: int, body: dict, headers: dict | None = None, cut: bool = False):
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data[:len(data) // 2] if cut else data)
                if cut:  # the body ends early: the client sees a broken connection
                    self.wfile.flush()
                    self.close_connection = True
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if not self.path.rstrip("/").endswith("/chat/completions"):
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            if api_key and self.headers.get("Authorization") != f"Bearer {api_key}":
                # echo the key sent, as some services do: the engine must keep it out of its logs
                sent = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                return self._send(401, {"error": {"message": f"Incorrect API key provided: {sent}"}})
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                return self._send(400, {"error": {"message": "request body is not JSON"}})
            trace = self.headers.get(TRACE_HEADER, "unknown/unknown/0")
            with faults.lock:
                self.server.requests += 1
            fault = faults.next_fault(trace)
            log.info("%s%s", trace, f" fault={fault}" if fault else "")
            if delay:
                time.sleep(delay)
            if fault in ("500", "502", "503"):
                return self._send(int(fault), {"error": {"message": "injected server error"}})
            if fault == "429":
                return self._send(429, {"error": {"message": "injected rate limit"}}, {"Retry-After": "0"})
            sent = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if fault in ("echokey", "echokey500"):
                return self._send(400 if fault == "echokey" else 500, {"error": {
                    "message": key_echoes(sent), "param": sent, "code": f"invalid_api_key:{sent[:12]}"}})
            if fault in ("timeout", "slow"):
                time.sleep(slow_seconds)
            content = answer(trace, body.get("messages", []), truth, fault)
            if fault == "echokey_reply":
                content = json.dumps({"dynamic_object": sent, "static_object": key_echoes(sent)})
            self._send(200, {
                "id": "chatcmpl-loopback", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "loopback"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }, cut=fault == "cutoff")

    return Handler


def serve(truth_path: str | None, port: int = 0, faults_path: str | None = None, api_key: str | None = None,
          slow_seconds: float = 5.0, delay: float = 0.0) -> ThreadingHTTPServer:
    """A started-but-not-serving server bound to 127.0.0.1 (call serve_forever)."""
    truth = json.loads(Path(truth_path).read_text()) if truth_path else {}
    faults = FaultSchedule(json.loads(Path(faults_path).read_text()) if faults_path else [])
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(truth, faults, api_key, slow_seconds, delay))
    server.daemon_threads = True
    server.requests = 0
    server.faults = faults  # tests check that every scheduled fault was served
    return server


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--truth", help="truth.json written by scripts/make_demo_spatialvid.py")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port_file", help="write the chosen port here (atomically)")
    parser.add_argument("--faults", help="JSON fault schedule (see the module docstring)")
    parser.add_argument("--api_key", help="if given, requests must carry it as a Bearer token")
    parser.add_argument("--slow_seconds", type=float, default=5.0, help="sleep of a 'timeout' fault")
    parser.add_argument("--delay", type=float, default=0.0, help="sleep before every reply")
    parser.add_argument("--log_level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    server = serve(args.truth, args.port, args.faults, args.api_key, args.slow_seconds, args.delay)
    port = server.server_address[1]
    if args.port_file:
        tmp = Path(f"{args.port_file}.tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)
    print(f"LLM server listening on http://127.0.0.1:{port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
