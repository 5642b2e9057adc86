"""Fuzzing what a user (or an attacker) can hand persona: chat exports for `inspect` and
`enroll`, export files for `import`, messages for `chat --message`.

The promise: only persona's own errors (one line, exit 1), never a hang, and bounded
memory -- peak RSS at most 4x the input plus a constant for chat text read by
`inspect` / `enroll` (JSON is parsed whole by the standard library, one dict per
message: ~6.5x for short messages, so 7x is the JSON ceiling).

- hypothesis, in process: many generated exports through the library's inspect path;
- hypothesis, real console script: each case in its own process under a timeout, with
  its peak RSS measured (a small wrapper process waits for it and reports ru_maxrss);
- generated hostile inputs from an attack run: big WhatsApp text, zip bombs with lying
  sizes, /dev/zero, /dev/urandom, FIFOs, a 4 MiB single message, a whitespace run.

Everything is derandomized and bounded (max_examples, deadlines, timeouts).
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import textwrap
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona_sdk.errors import PersonaError

PERSONA = Path(sys.executable).with_name("persona")
MiB = 2**20
CASE_TIMEOUT = 60.0  # seconds for one subprocess case; a hang is anything longer
SLACK = 16 * MiB  # on top of the measured baseline process

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=120,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def few(n: int) -> settings:
    return settings(FUZZ, max_examples=n)


# --- running the real console script, measured -----------------------------------------
_WRAPPER = r"""
import json, os, resource, signal, subprocess, sys, time
timeout, out, err = float(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(out, "wb") as o, open(err, "wb") as e:
    p = subprocess.Popen(sys.argv[4:], stdout=o, stderr=e, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        p.wait(timeout)
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        hung = True
print(json.dumps({"rc": p.returncode, "hung": hung,
                  "peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


class Run:
    def __init__(self, rc: int, hung: bool, peak: int, out: str, err: str) -> None:
        self.rc, self.hung, self.peak, self.out, self.err = rc, hung, peak, out, err

    def check_clean(self, allowed=(0, 1)) -> None:
        """Finished, exit code allowed, no traceback; a failure is one 'Error:' line at the end."""
        assert not self.hung, f"hung (killed after {CASE_TIMEOUT:.0f} s): {self.err[-300:]}"
        assert self.rc in allowed, (self.rc, self.err[-2000:])
        assert "Traceback" not in self.err and "Traceback" not in self.out, self.err[-2000:]
        if self.rc == 1:
            last = self.err.strip().splitlines()[-1] if self.err.strip() else ""
            assert last.startswith("Error: "), self.err[-2000:]


def persona(args: list[str], tmp: Path, env: dict | None = None, timeout: float = CASE_TIMEOUT) -> Run:
    """`persona ARGS` in its own process (timeout, peak RSS in bytes)."""
    assert PERSONA.exists(), f"the console script is not installed next to {sys.executable}"
    out, err = tmp / "case.out", tmp / "case.err"
    res = subprocess.run([sys.executable, "-c", _WRAPPER, str(timeout), str(out), str(err), str(PERSONA), *args],
                         capture_output=True, text=True, timeout=timeout + 60, env=env)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    return Run(info["rc"], info["hung"], info["peak"], out.read_text(errors="replace"),
               err.read_text(errors="replace"))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> int:
    """Peak RSS of `persona inspect` on a small export: the constant part of every ceiling."""
    tmp = tmp_path_factory.mktemp("baseline")
    fixture = Path(__file__).parent / "fixtures" / "chats" / "whatsapp_ios.txt"
    runs = [persona(["inspect", str(fixture), "--me", "alice"], tmp) for _ in range(2)]
    for run in runs:
        run.check_clean()
    return max(r.peak for r in runs)


# --- generated exports ---------------------------------------------------------------------
NAMES = ["Alice", "alice ", "Bob Stone", "Dr: Who", "\u200eAlice", "Bob\x1b[2J", "CON", "x" * 130, "é€😀",
         "", "  ", "Ana"]
TEXTS = ["hi", "<Media omitted>", "This message was deleted", "ok  <This message was edited>",
         "\u200eimage omitted", "null", "Missed voice call", " " * 3000 + "x", "a" * 2000, "12/31/23, 9:41 PM - x: y",
         "\u202e\u2066rtl", "line\nbreak", "\r\n", "\x00", "\x0b\x0c\x1c\u2028\u2029"]
# placeholders that become JSON no chat export holds (Python's json accepts them)
SPECIAL = {"@@NAN@@": "NaN", "@@INF@@": "-Infinity", "@@BIG@@": "9" * 5000, "@@1E400@@": "1e400",
           "@@SURR@@": '"\\ud800 lone"', "@@PAIR@@": '"\\ud83d\\ude00"', "@@DEEP@@": "[" * 3000 + "]" * 3000}

name_st = st.one_of(st.sampled_from(NAMES), st.text(max_size=12))
text_st = st.one_of(st.sampled_from(TEXTS), st.text(max_size=40))
scalar_st = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                      st.sampled_from(list(SPECIAL)), text_st)
value_st = st.recursive(scalar_st, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                     max_size=3), max_leaves=6)


def _maybe(draw, good, rate: float = 0.85):
    return draw(good) if draw(st.floats(0, 1)) < rate else draw(value_st)


@st.composite
def iso_time(draw):
    base = datetime(2021, 1, 1) + timedelta(minutes=draw(st.integers(0, 10**6)))
    return draw(st.sampled_from([base.isoformat(), base.isoformat() + "Z", "2021-13-45T99:99", "yesterday", ""]))


@st.composite
def chats_json(draw):
    convs = []
    for _ in range(draw(st.integers(0, 3))):
        msgs = [{"sender": _maybe(draw, name_st), "text": _maybe(draw, text_st), "time": _maybe(draw, iso_time()),
                 **({"kind": _maybe(draw, st.sampled_from(["text", "media", "system", "x"]))}
                    if draw(st.booleans()) else {})}
                for _ in range(draw(st.integers(0, 6)))]
        convs.append({"id": _maybe(draw, st.text(max_size=5)), "messages": msgs} if draw(st.booleans()) else msgs)
    return {"me": _maybe(draw, name_st), "conversations": convs} if draw(st.booleans()) else convs


@st.composite
def telegram_json(draw):
    def chat():
        msgs = [{"id": i, "type": _maybe(draw, st.sampled_from(["message", "service"])),
                 "date": _maybe(draw, iso_time()),
                 "date_unixtime": _maybe(draw, st.sampled_from(["1682935200", "@@INF@@", "@@1E400@@", "x", 5])),
                 "from": _maybe(draw, name_st), "from_id": _maybe(draw, st.sampled_from(["user1", "user2", ""])),
                 "text": _maybe(draw, st.one_of(text_st, st.lists(st.one_of(text_st, st.fixed_dictionaries(
                     {"type": st.just("bold"), "text": text_st})), max_size=3))),
                 **({"photo": "p.jpg"} if draw(st.booleans()) else {})}
                for i in range(draw(st.integers(0, 6)))]
        return {"name": "Bob", "type": "personal_chat", "id": 1, "messages": msgs}

    if draw(st.booleans()):
        return chat()
    return {"personal_information": {"user_id": _maybe(draw, st.integers(0, 3)), "first_name": _maybe(draw, name_st)},
            "chats": {"list": [chat() for _ in range(draw(st.integers(0, 2)))]}}


@st.composite
def discord_json(draw):
    msgs = [{"type": _maybe(draw, st.sampled_from(["Default", "Reply", "GuildMemberJoin", 0])),
             "timestamp": _maybe(draw, iso_time()), "content": _maybe(draw, text_st),
             "author": _maybe(draw, st.fixed_dictionaries({"name": name_st})),
             "attachments": _maybe(draw, st.lists(st.just({"url": "x"}), max_size=1))}
            for _ in range(draw(st.integers(0, 6)))]
    return {"guild": {"id": "1"}, "channel": {"id": _maybe(draw, st.text(max_size=4))}, "messages": msgs}


@st.composite
def chitchat_json(draw):
    return {draw(st.text(min_size=1, max_size=5)): {"messages": [
        [{"text": _maybe(draw, text_st), "timestamp": _maybe(draw, iso_time()), "sender": _maybe(draw, name_st)}
         for _ in range(draw(st.integers(0, 3)))] for _ in range(draw(st.integers(0, 3)))]}
        for _ in range(draw(st.integers(1, 3)))}


def _dump_json(obj, ensure_ascii: bool) -> str:
    text = json.dumps(obj, ensure_ascii=ensure_ascii)
    for placeholder, raw in SPECIAL.items():
        text = text.replace(json.dumps(placeholder), raw)
    return text


@st.composite
def whatsapp_text(draw):
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["android", "ios", "text", "android", "ios"]))
        d, m = draw(st.integers(0, 40)), draw(st.integers(0, 14))
        y = draw(st.sampled_from(["21", "2021", "0", "9999", "١٢"]))
        sep = draw(st.sampled_from(["/", ".", "-"]))
        hh, mm = draw(st.integers(0, 30)), draw(st.integers(0, 70))
        ampm = draw(st.sampled_from(["", " AM", " pm", "\u202fp.m."]))
        head = f"{d}{sep}{m}{sep}{y}, {hh}:{mm:02d}{ampm}"
        who, what = draw(name_st), draw(text_st)
        lines.append({"android": f"{head} - {who}: {what}", "ios": f"\u200e[{head}] {who}: {what}",
                      "text": what}[kind])
    return "\n".join(lines)


@st.composite
def chat_file(draw) -> bytes:
    """The bytes of one chat export: well-formed, mangled, or neither."""
    kind = draw(st.sampled_from(["whatsapp", "chats", "telegram", "discord", "chitchat", "bytes"]))
    if kind == "bytes":
        return draw(st.one_of(st.binary(max_size=300),
                              st.sampled_from([b"", b"   \n", b"\xef\xbb\xbf", b"\xff\xfe\x00\x00",
                                               b"PK\x03\x04junk", b"{" * 5000, b"\x00" * 10])))
    if kind == "whatsapp":
        text = draw(whatsapp_text())
    else:
        obj = draw({"chats": chats_json(), "telegram": telegram_json(), "discord": discord_json(),
                    "chitchat": chitchat_json()}[kind])
        text = _dump_json(obj, draw(st.booleans()))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-16-le"]))
    data = text.encode(encoding, "surrogatepass")
    cut = draw(st.integers(0, 2))
    if cut == 1 and data:  # truncated
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif cut == 2:  # bad bytes somewhere
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"])) + data[at:]
    return data


def _inspect_in_process(path: Path, me: str | None) -> None:
    from persona_sdk.chats import load_chats, who_is_me
    from persona_sdk.reply_examples import build_examples

    chats = load_chats(path)
    name, _ = who_is_me(chats, me)
    build_examples(chats, name, min_replies=0, keep=False)


# --- 1. in process: the inspect path on many generated exports ---------------------------
@FUZZ
@given(data=chat_file(), me=st.one_of(st.none(), name_st), suffix=st.sampled_from([".json", ".txt", ".zip", ""]))
def test_inspect_path_raises_only_persona_errors(tmp_path_factory, data, me, suffix):
    path = tmp_path_factory.mktemp("fz") / f"export{suffix}"
    if suffix == ".zip" and data[:4] != b"PK\x03\x04":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("_chat.txt" if data[:1] not in (b"{", b"[") else "result.json", data)
    else:
        path.write_bytes(data)
    try:
        _inspect_in_process(path, me)
    except PersonaError as exc:
        message = str(exc)
        assert "\n" not in message.strip() or "Traceback" not in message
        message.encode("utf-8")  # printable: no lone surrogates in an error


# --- 2. the real console script, one process per case --------------------------------------
@few(14)
@given(data=chat_file(), me=st.one_of(st.none(), st.sampled_from(NAMES[:6])))
def test_persona_inspect_fuzz(tmp_path_factory, baseline, data, me):
    tmp = tmp_path_factory.mktemp("cli")
    path = tmp / "export.txt"
    path.write_bytes(data)
    run = persona(["inspect", str(path), *(["--me", me] if me and me.strip() else [])], tmp)
    run.check_clean()
    assert run.peak <= baseline + 7 * len(data) + SLACK


@pytest.fixture(scope="module")
def export_file(tmp_path_factory, tiny_backbone) -> Path:
    import numpy as np

    from persona_sdk._crypto import KdfParams
    from persona_sdk.backbone import fingerprint, spec_of
    from persona_sdk.prefix import Prefix
    from persona_sdk.vault import Vault

    home = tmp_path_factory.mktemp("export-home")
    vault = Vault(home / "data", kdf=KdfParams.floor())
    spec = spec_of(tiny_backbone).prefix_spec(4)
    vault.save("me", Prefix(np.zeros(spec.shape, np.float32), fingerprint(tiny_backbone)), "pw")
    return vault.export("me", home / "me.persona", "pw", "export-pw")


@few(10)
@given(cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=3),
       tail=st.binary(max_size=64))
def test_persona_import_fuzz(tmp_path_factory, export_file, tiny_backbone, cut, flips, tail):
    tmp = tmp_path_factory.mktemp("imp")
    blob = bytearray(export_file.read_bytes())
    blob = blob[: len(blob) - cut] if cut < len(blob) else blob[:1]
    for at, bits in flips:
        if at < len(blob):
            blob[at] ^= bits
    path = tmp / "me.persona"
    path.write_bytes(bytes(blob) + tail)
    env = {**os.environ, "PERSONA_HOME": str(tmp / "home"), "PERSONA_EXPORT_PASSPHRASE": "export-pw",
           "PERSONA_PASSPHRASE": "pw"}
    run = persona(["import", str(path), "--backbone", str(tiny_backbone)], tmp, env=env)
    run.check_clean()
    if run.rc == 0:  # only an intact file imports (the tail is ignored by nothing: it must not be)
        assert not flips and not tail and cut == 0


@few(8)
@given(message=st.one_of(st.text(max_size=200), st.binary(min_size=1, max_size=50).map(
    lambda b: b.decode("utf-8", "surrogateescape")), st.sampled_from(["\udcff", "\x00", " " * 50_000, "😀" * 5000,
                                                                       "<|im_start|>user\nhi<|im_end|>"])))
def test_persona_chat_message_fuzz(tmp_path_factory, tiny_onnx, message):
    if "\x00" in message:  # an argv string cannot hold NUL
        message = message.replace("\x00", "0")
    tmp = tmp_path_factory.mktemp("chat")
    run = persona(["chat", "--backbone", str(tiny_onnx), "--message", message, "--max-new-tokens", "4"], tmp)
    run.check_clean()
    if not message.strip():
        assert run.rc == 1 and "empty" in run.err


@st.composite
def enroll_file(draw) -> bytes:
    """Mostly enough replies of Ana's to train, with hostile content mixed in."""
    if draw(st.integers(0, 3)) == 0:
        return draw(chat_file())
    rng = random.Random(draw(st.integers(0, 1000)))
    convs = []
    for c in range(12):
        msgs = []
        for i in range(6):
            msgs.append({"sender": "Bob", "text": rng.choice(["hey?", "what's up", draw(text_st)])})
            msgs.append({"sender": "Ana", "text": f"lol {c} {i} " + draw(text_st)})
        convs.append({"id": str(c), "messages": msgs})
    return _dump_json({"conversations": convs}, draw(st.booleans())).encode("utf-8", "surrogatepass")


@few(3)
@given(data=enroll_file())
def test_persona_enroll_fuzz(tmp_path_factory, tiny_backbone, data):
    tmp = tmp_path_factory.mktemp("enr")
    path = tmp / "chats.json"
    path.write_bytes(data)
    env = {**os.environ, "PERSONA_HOME": str(tmp / "home"), "PERSONA_PASSPHRASE": "pw", "OMP_NUM_THREADS": "1"}
    run = persona(["enroll", str(path), "--me", "Ana", "--backbone", str(tiny_backbone), "--source", "none",
                   "--epochs", "1"], tmp, env=env, timeout=240)
    run.check_clean()


# --- 3. generated hostile inputs (attack run), with memory ceilings -------------------------
WORDS = ("the of and to in is you that it was for on are as with they at be this have from or one had by word "
         "but not what all were we when your can said there use an each which do how their if will up").split()


def words(n_chars: int, seed: int = 0) -> str:
    """About ``n_chars`` of random words (an 8 KiB random block, repeated: fast to make)."""
    rng = random.Random(seed)
    block = " ".join(rng.choice(WORDS) for _ in range(2048))[:8192]
    return (block + " ") * (n_chars // (len(block) + 1)) + block[: n_chars % (len(block) + 1)]


def whatsapp_export(path: Path, size: int, emoji: bool = False, seed: int = 0) -> Path:
    rng = random.Random(seed)
    t, out, n = datetime(2021, 1, 1, 8, 0), [], 0
    while n < size:
        t += timedelta(minutes=rng.choice([0, 0, 1, 2, 5, 30, 400]))
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20)))
        if emoji and rng.random() < 0.1:
            text += " \U0001F600"
        line = f"{t.day:02d}/{t.month:02d}/{t.year}, {t.hour:02d}:{t.minute:02d} - {rng.choice(['Alice', 'Bob'])}: {text}\n"
        out.append(line)
        n += len(line.encode())
    path.write_text("".join(out), encoding="utf-8")
    return path


def chats_json_export(path: Path, size: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    convs, n, t = [], 0, datetime(2021, 1, 1)
    while n < size:
        msgs = []
        for i in range(rng.randint(5, 40)):
            t += timedelta(minutes=rng.randint(0, 5))
            m = {"sender": ["Alice", "Bob"][i % 2], "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20))),
                 "time": t.isoformat() + "Z"}
            msgs.append(m)
            n += len(json.dumps(m)) + 2
        convs.append({"id": str(len(convs)), "messages": msgs})
    path.write_text(json.dumps({"me": "Alice", "conversations": convs}))
    return path


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _declare(blob: bytes, sizes: list[int]) -> bytes:
    """Rewrite each member's declared uncompressed size (local header and central directory)."""
    blob = bytearray(blob)
    at = 0
    for size in sizes:
        at = blob.index(b"PK\x03\x04", at)
        struct.pack_into("<I", blob, at + 22, size)
        at += 4
    at = 0
    for size in sizes:
        at = blob.index(b"PK\x01\x02", at)
        struct.pack_into("<I", blob, at + 24, size)
        at += 4
    return bytes(blob)


def hostile(kind: str, tmp: Path) -> tuple[Path, int, str]:
    """(path, input size that memory may scale with, what the error must say or "" for success)."""
    head = b"01/01/2021, 10:00 - Alice: "
    if kind == "whatsapp-8MB":
        p = whatsapp_export(tmp / "chat.txt", 8 * MiB)
        return p, p.stat().st_size, ""
    if kind == "whatsapp-emoji-8MB":
        p = whatsapp_export(tmp / "chat.txt", 8 * MiB, emoji=True)
        return p, p.stat().st_size, ""
    if kind == "zip-bomb":
        p = tmp / "bomb.zip"
        p.write_bytes(_zip_bytes({"_chat.txt": head + b"a" * (96 * MiB)}))
        return p, p.stat().st_size, "zip bomb"
    if kind == "zip-lying-sizes":  # declared tiny, unpacks to 64 MiB: never read past the declaration
        p = tmp / "liar.zip"
        p.write_bytes(_declare(_zip_bytes({"_chat.txt": head + b"hi\n" + b"b" * (64 * MiB)}), [200]))
        return p, 200, "cannot be unpacked"
    if kind == "zip-six-declared-100MiB":  # a small archive claiming six 100 MiB chats
        p = tmp / "six.zip"
        chat = whatsapp_export(tmp / "c.txt", 20_000).read_bytes()
        p.write_bytes(_declare(_zip_bytes({f"chat{i}.txt": chat for i in range(6)}), [100 * MiB] * 6))
        return p, p.stat().st_size, "MiB limit"
    if kind in ("/dev/zero", "/dev/urandom"):
        return Path(kind), 0, "not a regular file"
    if kind == "fifo":
        p = tmp / "chats.json"
        os.mkfifo(p)
        return p, 0, "not a regular file"
    if kind == "fifo-in-folder":
        folder = tmp / "exports"
        folder.mkdir()
        os.mkfifo(folder / "pipe.txt")
        return folder, 0, "no chat export"
    if kind == "one-4MiB-message-whatsapp":
        p = tmp / "chat.txt"
        body = words(4 * MiB, seed=1)
        p.write_text(f"01/01/2021, 10:00 - Bob: hi\n01/01/2021, 10:01 - Alice: {body}\n", encoding="utf-8")
        return p, p.stat().st_size, ""
    if kind == "one-4MiB-message-json":
        p = tmp / "chats.json"
        p.write_text(json.dumps({"conversations": [{"messages": [{"sender": "Bob", "text": "hi"},
                                                                  {"sender": "Alice", "text": "x" * (4 * MiB)}]}]}))
        return p, p.stat().st_size, ""
    if kind == "whitespace-run":
        p = tmp / "chat.txt"
        p.write_text("01/01/2021, 10:00 - Alice: hi" + " " * MiB + "x\n", encoding="utf-8")
        return p, p.stat().st_size, ""
    if kind == "chats-json-8MB":
        p = chats_json_export(tmp / "chats.json", 8 * MiB)
        return p, p.stat().st_size, ""
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["whatsapp-8MB", "whatsapp-emoji-8MB", "zip-bomb", "zip-lying-sizes",
                                  "zip-six-declared-100MiB", "/dev/zero", "/dev/urandom", "fifo", "fifo-in-folder",
                                  "one-4MiB-message-whatsapp", "one-4MiB-message-json", "whitespace-run",
                                  "chats-json-8MB"])
def test_persona_inspect_on_hostile_inputs(tmp_path, baseline, kind):
    if kind.startswith("/dev/") and not os.path.exists(kind) or kind.startswith("fifo") and not hasattr(os, "mkfifo"):
        pytest.skip(f"{kind} does not exist here")
    path, size, expect = hostile(kind, tmp_path)
    run = persona(["inspect", str(path), "--me", "Alice"], tmp_path)
    run.check_clean()
    if expect:
        assert run.rc == 1 and expect in run.err, run.err
    else:
        assert run.rc == 0 and run.err.strip().splitlines()[-1].startswith(("ok:", "warning:")), run.err
    factor = 7 if kind.startswith(("chats-json", "one-4MiB-message-json")) else 4  # JSON: parsed whole
    ceiling = baseline + factor * size + SLACK
    assert run.peak <= ceiling, f"peak {run.peak / MiB:.0f} MiB > {ceiling / MiB:.0f} MiB for {size / MiB:.1f} MiB"


def test_enroll_reading_a_4MiB_message_stays_bounded(tmp_path, tiny_backbone):
    """What enroll does before the model: read, pick replies, count tokens, encode the examples.
    Tokenising a 4 MiB message whole took ~0.8 GB; messages are cut to what training can use."""
    from enroll_helpers import write_chats

    path = write_chats(tmp_path / "chats.json")
    data = json.loads(path.read_text())
    big = words(4 * MiB, seed=2)
    data["conversations"].append({"id": "big", "messages": [{"sender": "Bob", "text": big},
                                                            {"sender": "Ana", "text": big}]})
    path.write_text(json.dumps(data))
    code = textwrap.dedent("""
        import re, sys
        from pathlib import Path
        from tokenizers import Tokenizer
        from persona_sdk.chats import load_chats
        from persona_sdk.conversation import ChatFormat, count_tokens_fn
        from persona_sdk.reply_examples import build_examples
        from persona_sdk.trainer import TrainConfig, encode
        def hwm(): return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
        cfg = TrainConfig()
        fmt = ChatFormat(Tokenizer.from_file(str(Path(sys.argv[2]) / "tokenizer.json")))
        try:  # reset the high-water mark: loading the tokenizer is not what is measured
            open("/proc/self/clear_refs", "w").write("5")
        except OSError:
            pass
        before = hwm()
        ex = build_examples(load_chats(sys.argv[1]), "Ana", count_tokens=count_tokens_fn(fmt, at_most=cfg.context_budget),
                            context_budget=cfg.context_budget)
        enc = encode(fmt, ex.train + ex.val, cfg.context_budget, cfg.reply_budget)
        assert max(len(e.ids) for e in enc) <= cfg.context_budget + cfg.reply_budget
        print(hwm() - before)
    """)
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tiny_backbone)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    size = path.stat().st_size
    assert int(out.stdout) <= 4 * size + SLACK, f"{int(out.stdout) / MiB:.0f} MiB for {size / MiB:.1f} MiB"
