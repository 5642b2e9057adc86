"""`persona inspect`: each format without --format; every bad input -> one line,
exit code 1; no message text in any output or log line (canary)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from persona_sdk.cli import main

FIX = Path(__file__).parent / "fixtures" / "chats"
CANARY = "CANARY-5b1d-do-not-print"


def _run(capsys, *args):
    code = main(["inspect", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _big_whatsapp(path: Path, replies: int = 60) -> Path:
    lines = []
    for i in range(replies):
        day = 1 + i // 10  # ten exchanges a day -> one conversation per day
        lines.append(f"{day:02d}/03/2024, 10:{i % 10:02d} - Bob: {CANARY} question {i}")
        lines.append(f"{day:02d}/03/2024, 10:{i % 10:02d} - Alice: {CANARY} answer {i}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name, me",
    [("whatsapp_android_12h.txt", "Alice"), ("whatsapp_ios.txt", "alice"),
     ("whatsapp_group_24h_dayfirst.txt", "Alice"), ("telegram_single.json", "Alice"),
     ("telegram_full_export.json", None), ("discord.json", "alice"), ("chats.json", None)],
)
def test_inspect_each_format_without_format_flag(capsys, name, me):
    code, out, err = _run(capsys, FIX / name, *(["--me", me] if me else []))
    assert code == 0, err
    assert out.startswith("formats: ")
    assert "examples: " in out and "train: " in out and "val: " in out and "dropped:" in out
    assert "warning: too little data" in err and "at least 50" in err


def test_inspect_chitchat_file(tmp_path, capsys):
    from test_importers import CHITCHAT

    (tmp_path / "dataset.json").write_text(json.dumps(CHITCHAT), encoding="utf-8")
    code, out, _ = _run(capsys, tmp_path / "dataset.json", "--me", "spk-2")
    assert code == 0 and "formats: chitchat" in out and "examples: 1" in out


def test_inspect_report_counts_and_never_text(tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    chat = _big_whatsapp(tmp_path / "WhatsApp Chat with Bob.txt")
    code, out, err = _run(capsys, chat, "--me", "alice")
    assert code == 0
    assert "me: Alice (from --me)" in out
    assert "examples: 60" in out and "train: 50 from 5 conversation(s)" in out
    assert "val:   10 from 1 conversation(s)" in out
    assert "Bob    60" in out and "Alice  60" in out
    assert "ok: 60 usable replies" in err
    assert CANARY not in out + err + caplog.text
    code, out, _ = _run(capsys, chat, "--me", "alice", "--json")
    report = json.loads(out)
    assert report["examples"] == 60 and report["senders"] == {"Bob": 60, "Alice": 60}
    assert CANARY not in out


def test_inspect_says_when_me_is_inferred(tmp_path, capsys):
    data = {"conversations": [
        {"messages": [{"sender": "Bob", "text": "hi"}, {"sender": "Alice", "text": "hey"}]},
        {"messages": [{"sender": "Carol", "text": "yo"}, {"sender": "alice ", "text": "hi"}]}]}
    (tmp_path / "c.json").write_text(json.dumps(data), encoding="utf-8")
    code, out, _ = _run(capsys, tmp_path / "c.json")
    assert code == 0 and "me: Alice (inferred" in out


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    """(args, expected fragment of the error line); every file carries the canary."""
    c = CANARY
    cases = []

    def put(name: str, data: bytes | str) -> Path:
        p = tmp / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return p

    cases.append(([put("empty.txt", b"")], "empty"))
    cases.append(([put("binary.txt", b"\x00\x01" + c.encode() + b"\x00\xff")], "binary"))
    cases.append(([put("latin1.txt", f"12/30/23, 9:01 PM - Bob: {c} caf".encode() + b"\xe9\n")], "line 1"))
    cases.append(([put("notes.txt", f"{c}\nsecret stuff\n")], "not a recognised chat export"))
    cases.append(([put("broken.json", '{"conversations": [{"messages": [' + c)], "not valid JSON"))
    cases.append(([put("other.json", json.dumps({"data": [c]}))], "not a recognised"))
    shape = {"conversations": [{"messages": [{"sender": "Bob", "text": c}, {"sender": "Al", "text": [c]}]}]}
    cases.append(([put("shape.json", json.dumps(shape))], "conversation 1, message 2"))
    bad_time = {"conversations": [{"messages": [{"sender": "Bob", "text": c, "time": c}]}]}
    cases.append(([put("time.json", json.dumps(bad_time))], '"time" is not an ISO-8601'))
    tg = {"name": "x", "type": "personal_chat", "id": 1,
          "messages": [{"id": 1, "type": "message", "date": "2024-01-01T00:00:00", "from": "B", "text": [5, c]}]}
    cases.append(([put("tg.json", json.dumps(tg))], "chat 1, message 1, text part 1"))
    ok = put("ok.txt", f"12/30/23, 9:01 PM - Bob: {c}\n12/30/23, 9:02 PM - Alice: {c}\n")
    cases.append(([ok], "cannot tell which sender is you"))
    cases.append(([ok, "--me", "Zed"], "matches no sender"))
    cases.append(([ok, "--format", "discord"], "not valid JSON"))
    cases.append(([ok, "--format", "signal"], "--format must be one of"))
    cases.append(([tmp / "missing.json"], "does not exist"))
    big = tmp / "big.txt"
    with open(big, "wb") as fh:
        fh.write(c.encode())
        fh.truncate(2**30)  # sparse
    cases.append(([big], "MiB"))
    zip_path = tmp / "bad.zip"
    zip_path.write_bytes(b"PK\x03\x04" + c.encode())
    cases.append(([zip_path], "zip"))
    nochat = tmp / "nochat.zip"
    with zipfile.ZipFile(nochat, "w") as z:
        z.writestr("_chat.txt", f"{c}\n")
    cases.append(([nochat], "no chat export"))
    return cases


def test_every_bad_input_is_one_line_exit_1_without_text(tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    for args, fragment in _bad_inputs(tmp_path):
        code, out, err = _run(capsys, *args)
        assert code == 1, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], (args, err)
        assert "Traceback" not in err and out == ""
        assert CANARY not in out + err + caplog.text, args


def test_real_binary_exit_code_and_no_traceback(tmp_path):
    bad = tmp_path / "shape.json"
    bad.write_text(json.dumps({"conversations": [{"messages": [{"sender": 1, "text": CANARY}]}]}), encoding="utf-8")
    exe = Path(sys.executable).with_name("persona")
    proc = subprocess.run([str(exe), "inspect", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("Error: ")
    assert CANARY not in proc.stdout + proc.stderr


def test_a_header_looking_message_line_is_never_named(tmp_path, capsys):
    """A line of message text shaped like a WhatsApp header becomes a one-message "sender":
    inspect and the --me error count it but never print it."""
    chat = _big_whatsapp(tmp_path / "chat.txt")
    with open(chat, "a", encoding="utf-8") as fh:
        fh.write("10/03/2024, 10:09 - Alice: the plan:\n10/03/2024, 10:09 - pin code 4321: do not share\n")
    for args in ([chat, "--me", "Alice"], [chat, "--me", "Alice", "--json"], [chat, "--me", "Zed"]):
        code, out, err = _run(capsys, *args)
        assert "pin code" not in out + err and "4321" not in out + err
    code, out, _ = _run(capsys, chat, "--me", "Alice", "--json")
    report = json.loads(out)
    assert report["senders"] == {"Bob": 60, "Alice": 61} and report["senders_with_one_message"] == 1
    code, out, _ = _run(capsys, chat, "--me", "Alice")
    assert "(1 sender(s) with a single message, not named)" in out
    code, _, err = _run(capsys, chat, "--me", "Zed")
    assert code == 1 and "1 sender(s) with a single message (not named)" in err
