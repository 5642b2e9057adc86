"""`persona serve`'s HTTP API over a real socket on loopback, with the tiny test backbone."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from persona_sdk.batching import Batcher
from persona_sdk.config import GenerationConfig
from persona_sdk.conversation import ASSISTANT, USER, Turn
from persona_sdk.prefix import Prefix
from persona_sdk.runtime import Engine
from persona_sdk.server import ServeLimits, create_app, ensure_token

TOKEN = "t" * 20 + "-test-token-1234567890"
GREEDY = dict(temperature=0, max_tokens=12)


@pytest.fixture(scope="module")
def server(tiny_onnx):
    import uvicorn

    engine = Engine(tiny_onnx)
    kv = np.random.default_rng(3).normal(size=(engine.layers, 2, engine.kv_heads, 4, engine.head_dim))
    prefix = Prefix(kv.astype(np.float32), engine.fingerprint, method="test")
    batcher = Batcher(engine, max_rows=4)
    submitted = []
    submit = batcher.submit

    def recording_submit(*args, **kwargs):
        reply = submit(*args, **kwargs)
        submitted.append(reply)
        return reply

    batcher.submit = recording_submit
    app = create_app(batcher, {"alice": prefix}, TOKEN, ServeLimits(max_tokens=400, default_max_tokens=16))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield SimpleNamespace(port=port, engine=engine, prefix=prefix, batcher=batcher, submitted=submitted)
    srv.should_exit = True
    thread.join(10)
    batcher.close()


def request(server, method, path, body=None, token=TOKEN, raw: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, payload


def chat(server, messages, model="persona/alice", **settings):
    status, payload = request(server, "POST", "/v1/chat/completions", {"model": model, "messages": messages,
                                                                       **settings})
    return status, json.loads(payload)


def _expected(server, turns, prefix, max_tokens):
    engine = server.engine
    gen = GenerationConfig(do_sample=False, temperature=0, max_new_tokens=max_tokens)
    ids = engine.prompt_ids(turns, prefix, gen)
    return "".join(engine.stream_text(ids, prefix, gen)), len(ids)


def test_every_request_needs_the_token(server):
    for path in ("/v1/models", "/v1/chat/completions", "/anything"):
        assert request(server, "GET", path, token=None)[0] == 401
        assert request(server, "GET", path, token="wrong-token-wrong-token")[0] == 401
    status, payload = request(server, "POST", "/v1/chat/completions", {"model": "backbone"}, token=TOKEN[:-1])
    assert status == 401 and json.loads(payload)["error"]["code"] == "invalid_api_key"
    status, payload = request(server, "GET", "/v1/models")
    assert status == 200
    assert [m["id"] for m in json.loads(payload)["data"]] == ["backbone", "persona/alice"]
    assert request(server, "GET", "/nothing-here")[0] == 404


def test_a_completion_is_the_library_reply(server):
    messages = [{"role": "user", "content": "hi there, how are you doing today?"},
                {"role": "assistant", "content": "i am fine thanks, and you?"},
                {"role": "user", "content": "what do you do on weekends?"}]
    turns = [Turn(m["role"], m["content"]) for m in messages]
    for model, prefix in (("persona/alice", server.prefix), ("backbone", None)):
        status, body = chat(server, messages, model=model, **GREEDY)
        assert status == 200, body
        text, n_prompt = _expected(server, turns, prefix, GREEDY["max_tokens"])
        assert body["choices"][0]["message"] == {"role": "assistant", "content": text}
        assert body["object"] == "chat.completion" and body["model"] == model
        assert body["usage"]["prompt_tokens"] == n_prompt
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
    sampled = dict(temperature=1.0, top_k=0, seed=3, max_tokens=12)
    status, alice = chat(server, messages[:1], **sampled)
    status, bare = chat(server, messages[:1], model="backbone", **sampled)
    assert alice["choices"][0]["message"]["content"] != bare["choices"][0]["message"]["content"]


def test_streaming_sends_server_sent_events(server):
    messages = [{"role": "user", "content": "hi there, how are you doing today?"}]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({"model": "persona/alice", "messages": messages,
                                                                  "stream": True, **GREEDY}),
                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    events = [line[len("data: "):] for line in resp.read().decode().split("\n") if line.startswith("data: ")]
    conn.close()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    text, _ = _expected(server, [Turn(USER, messages[0]["content"])], server.prefix, GREEDY["max_tokens"])
    assert streamed == text and len(chunks) > 3


@pytest.mark.parametrize("body, status, code", [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_body"),
    ({"model": "persona/bob", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "missing_model"),
    ({"model": "backbone", "messages": []}, 400, "invalid_messages"),
    ({"model": "backbone", "messages": [{"role": "system", "content": "be nice"},
                                        {"role": "user", "content": "hi"}]}, 400, "unsupported_role"),
    ({"model": "backbone", "messages": [{"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": "yo"}]}, 400, "invalid_messages"),
    ({"model": "backbone", "messages": [{"role": "user", "content": 5}]}, 400, "invalid_content"),
    ({"model": "backbone", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400,
     "too_many_tokens"),
    ({"model": "backbone", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400,
     "invalid_temperature"),
    ({"model": "backbone", "messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "invalid_n"),
    ({"model": "backbone", "messages": [{"role": "user", "content": "x" * (1 << 20)}]}, 413, "body_too_large"),
])
def test_bad_requests_get_a_4xx_json_error(server, body, status, code):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, payload = request(server, "POST", "/v1/chat/completions", raw=raw)
    assert got == status
    error = json.loads(payload)["error"]
    assert error["code"] == code and error["message"]
    assert "x" * 50 not in error["message"]  # errors never quote message text


def _slow_steps(server, monkeypatch, delay=0.01):
    step = server.batcher.cache.step

    def slow(*args, **kwargs):
        time.sleep(delay)
        return step(*args, **kwargs)

    monkeypatch.setattr(server.batcher.cache, "step", slow)
    monkeypatch.setattr(server.engine, "stop_ids", set())  # only the token budget ends a reply


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_row(server, monkeypatch, stream):
    _slow_steps(server, monkeypatch)
    body = json.dumps({"model": "persona/alice", "messages": [{"role": "user", "content": "hi there"}],
                       "stream": stream, "max_tokens": 400}).encode()
    before = len(server.submitted)  # counted before sending: the server may take the request at once
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    deadline = time.monotonic() + 30
    while len(server.submitted) == before or server.submitted[-1].times.tokens < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    if stream:
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    sock.close()  # walk away mid-reply
    reply = server.submitted[-1]
    while not reply.done:
        assert time.monotonic() < deadline, "the reply was not cancelled"
        time.sleep(0.01)
    assert reply.finish_reason == "cancelled" and reply.times.tokens < 400
    while server.batcher.active:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_concurrent_clients_share_decode_steps(server, monkeypatch):
    _slow_steps(server, monkeypatch, delay=0.002)
    steps_before = server.batcher.stats.decode_steps
    results = []

    def client(i):
        results.append(chat(server, [{"role": "user", "content": f"hi there {i}"}], model="backbone",
                            temperature=0, max_tokens=24))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r[0] for r in results] == [200] * 4
    assert all(r[1]["usage"]["completion_tokens"] == 24 for r in results)
    assert server.batcher.stats.decode_steps - steps_before < 4 * 24  # steps were shared
    assert server.batcher.stats.busiest >= 2


def test_the_token_file_is_private_and_kept(tmp_path):
    path = tmp_path / "data" / "serve-token"
    token = ensure_token(path)
    assert len(token) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(path) == token
    assert ensure_token(path, rotate=True) != token
    path.chmod(0o644)  # readable by others: not trusted any more
    again = ensure_token(path)
    assert again != token and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_persona_serve_end_to_end(tiny_onnx, persona_home):
    """The CLI unlocks profiles at start, binds loopback, writes the token 0600, logs no message text."""
    from persona_sdk.vault import Vault

    engine = Engine(tiny_onnx)
    kv = np.random.default_rng(4).normal(size=(engine.layers, 2, engine.kv_heads, 3, engine.head_dim))
    Vault().save("bob", Prefix(kv.astype(np.float32), engine.fingerprint, method="test"), "pw")
    env = {**os.environ, "PERSONA_PASSPHRASE": "pw", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "persona_sdk", "serve", "--backbone", str(tiny_onnx), "--port", "0",
                             "--log-level", "debug"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        lines = []
        port = None
        deadline = time.monotonic() + 120
        while port is None:
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            line = proc.stderr.readline()
            lines.append(line)
            found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if found and "Uvicorn running" in line:
                port = int(found.group(1))
        token_file = persona_home / "data" / "serve-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        srv = SimpleNamespace(port=port)
        token = token_file.read_text().strip()
        assert request(srv, "GET", "/v1/models", token=None)[0] == 401
        status, payload = request(srv, "GET", "/v1/models", token=token)
        assert [m["id"] for m in json.loads(payload)["data"]] == ["backbone", "persona/bob"]
        status, payload = request(srv, "POST", "/v1/chat/completions", {
            "model": "persona/bob", "messages": [{"role": "user", "content": "zebra-marker-4711 hi"}],
            "max_tokens": 4}, token=token)
        assert status == 200, payload
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=30)
    log = "".join(lines) + rest
    assert "model persona/bob" in log and "prompt tokens" in log and "4 tokens" in log, log  # it logged the request
    assert "zebra-marker" not in log and "4711" not in log


def test_serve_help_shows_an_example():
    out = subprocess.run([sys.executable, "-m", "persona_sdk", "serve", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "Example: " in out.stdout and "persona serve" in out.stdout


def test_the_client_example_talks_to_the_server(server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    example = Path(__file__).resolve().parent.parent / "examples" / "serve_client.py"
    out = subprocess.run([sys.executable, str(example), "--url", f"http://127.0.0.1:{server.port}/v1",
                          "--token-file", str(token_file)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    engine, prefix = server.engine, server.prefix
    first_q, second_q = "hi, what do you do on weekends?", "and what about during the week?"
    first, _ = _expected(server, [Turn(USER, first_q)], prefix, 32)
    turns = [Turn(USER, first_q), Turn(ASSISTANT, first), Turn(USER, second_q)]
    gen = GenerationConfig(temperature=0.7, seed=1, max_new_tokens=32)
    second = "".join(engine.stream_text(engine.prompt_ids(turns, prefix, gen), prefix, gen))
    assert out.stdout == f"models: backbone, persona/alice\npersona/alice> {first}\npersona/alice> {second}\n"
