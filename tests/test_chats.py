"""Reading guards, format detection, folders / zips, and who is "me"."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from persona_sdk.chats import (
    Chats,
    Conversation,
    Message,
    decode_text,
    detect_format,
    load_chats,
    normalize_name,
    resolve_me,
    who_is_me,
)
from persona_sdk.errors import (
    AmbiguousSpeakerError,
    ChatFileError,
    ChatFileTooLargeError,
    ChatFormatError,
    ConfigError,
    UnknownSpeakerError,
)

FIX = Path(__file__).parent / "fixtures" / "chats"


@pytest.mark.parametrize(
    "name, fmt",
    [("whatsapp_android_12h.txt", "whatsapp"), ("whatsapp_ios.txt", "whatsapp"),
     ("whatsapp_group_24h_dayfirst.txt", "whatsapp"), ("telegram_single.json", "telegram"),
     ("telegram_full_export.json", "telegram"), ("discord.json", "discord"), ("chats.json", "chats")],
)
def test_detects_each_fixture(name, fmt):
    assert detect_format((FIX / name).read_text(encoding="utf-8")) == fmt


def test_utf16_with_bom_and_without(tmp_path):
    text = (FIX / "whatsapp_android_12h.txt").read_text(encoding="utf-8")
    expected = [c.messages for c in load_chats(FIX / "whatsapp_android_12h.txt").conversations]
    for enc in ("utf-16", "utf-16-le", "utf-16-be", "utf-8-sig"):
        p = tmp_path / f"{enc}.txt"
        p.write_bytes(text.encode(enc))
        assert [c.messages for c in load_chats(p).conversations] == expected, enc


def test_utf8_bom_json(tmp_path):
    p = tmp_path / "c.json"
    p.write_bytes(b"\xef\xbb\xbf" + (FIX / "chats.json").read_bytes())
    assert load_chats(p).me == "Alice"


@pytest.mark.parametrize(
    "data, match",
    [(b"", "empty"), (b"  \n\n", "empty"), (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
     (b"12/30/23, 9:01 PM - Bob: caf\xe9\n", "line 1"), (b"hello there\n", "not a recognised"),
     (b"{\"conversations\": [", "not valid JSON"), (b"{\"foo\": 1}", "not a recognised")],
)
def test_bad_files_one_clear_error(tmp_path, data, match):
    p = tmp_path / "bad.txt"
    p.write_bytes(data)
    with pytest.raises((ChatFileError, ChatFormatError), match=match) as info:
        load_chats(p)
    assert "\n" not in str(info.value)


def test_invalid_utf8_reports_line(tmp_path):
    p = tmp_path / "x.txt"
    p.write_bytes(b"12/30/23, 9:01 PM - Bob: hi\n12/30/23, 9:02 PM - Bob: \xff\xfe\xfd\n")
    with pytest.raises(ChatFileError, match="line 2"):
        load_chats(p)


@pytest.mark.parametrize(
    "obj, match",
    [({"conversations": {}}, '"conversations" must be a list'),
     ({"conversations": [{"messages": [{"sender": "a", "text": "x"}, {"sender": "b"}]}]},
      'conversation 1, message 2: missing the "text" field'),
     ({"conversations": [{"messages": []}, {"messages": [{"sender": 3, "text": "x"}]}]},
      'conversation 2, message 1: "sender" must be a non-empty string, got a number'),
     ({"conversations": [{"messages": [{"sender": "a", "text": "x", "time": "yesterday"}]}]},
      '"time" is not an ISO-8601'),
     ({"conversations": [{"msgs": []}]}, 'conversation 1: missing the "messages" field'),
     ({"me": 5, "conversations": []}, '"me" must be a non-empty string'),
     ([{"messages": [{"sender": "a", "text": ["x"]}]}], '"text" must be a string, got a list')],
)
def test_json_shape_errors_name_field_and_position(tmp_path, obj, match):
    p = tmp_path / "chats.json"
    p.write_text(json.dumps(obj), encoding="utf-8")
    with pytest.raises(ChatFormatError, match=match.replace("(", r"\(")):
        load_chats(p, "chats")


def test_size_limit_refuses_before_reading(tmp_path):
    p = tmp_path / "huge.txt"
    with open(p, "wb") as fh:  # sparse 1 GiB file: costs no disk
        fh.truncate(2**30)
    with pytest.raises(ChatFileTooLargeError, match="MiB"):
        load_chats(p)
    small = tmp_path / "s.txt"
    small.write_bytes((FIX / "whatsapp_ios.txt").read_bytes())
    with pytest.raises(ChatFileTooLargeError):
        load_chats(small, max_bytes=100)


def test_missing_path_and_bad_format_name(tmp_path):
    with pytest.raises(ChatFileError, match="does not exist"):
        load_chats(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="whatsapp"):
        load_chats(FIX / "chats.json", "signal")


def test_forced_format_mismatch(tmp_path):
    with pytest.raises(ChatFormatError, match="not valid JSON"):
        load_chats(FIX / "whatsapp_android_12h.txt", "telegram")


def test_folder_and_zip_of_several_exports(tmp_path):
    folder = tmp_path / "exports"
    (folder / "media").mkdir(parents=True)
    for name in ("whatsapp_android_12h.txt", "telegram_single.json"):
        (folder / name).write_bytes((FIX / name).read_bytes())
    (folder / "media" / "IMG-0001.jpg").write_bytes(b"\xff\xd8\xff\x00binary")
    (folder / "readme.txt").write_text("not a chat", encoding="utf-8")
    chats = load_chats(folder)
    assert chats.formats == ("telegram", "whatsapp")  # sorted file order
    assert len(chats.conversations) == 4
    assert [Path(w).name for w, _ in chats.skipped] == ["readme.txt"]

    archive = tmp_path / "WhatsApp Chat with Bob.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(FIX / "whatsapp_ios.txt", "_chat.txt")
        z.write(FIX / "whatsapp_group_24h_dayfirst.txt", "group/_chat.txt")
        z.writestr("00000012-PHOTO.jpg", b"\xff\xd8\x00")
        z.writestr("__MACOSX/._chat.txt", b"\x00\x05")
    zipped = load_chats(archive)
    assert zipped.formats == ("whatsapp",) and len(zipped.conversations) == 5
    (folder / "more.zip").write_bytes(archive.read_bytes())
    assert len(load_chats(folder).conversations) == 9


def test_empty_folder_and_bad_zip(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ChatFormatError, match="no chat export"):
        load_chats(tmp_path / "empty")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ChatFileError, match="zip"):
        load_chats(tmp_path / "bad.zip")


def test_zip_bomb_member_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("_chat.txt", b"a" * 3_000_000)
    assert archive.stat().st_size < 100_000
    with pytest.raises(ChatFileTooLargeError):
        load_chats(archive, max_bytes=1_000_000)


def test_decode_text_rejects_nul_in_utf8():
    with pytest.raises(ChatFileError, match="binary"):
        decode_text(b"abc\x00def", "x")


# --- who is me -------------------------------------------------------------------
def _chats(*convs, me=None):
    return Chats(tuple(Conversation(str(i), tuple(Message(s, "t") for s in c), "chats")
                       for i, c in enumerate(convs)), me, ("chats",))


def test_me_given_matches_case_and_whitespace_insensitive():
    chats = _chats(["Bob  Stone", "Alice"], ["Alice", "Carol"])
    assert who_is_me(chats, "  bob stone ") == ("Bob  Stone", "given")
    assert normalize_name("\u200eAlice ") == "alice"


def test_me_precedence_flag_over_file_over_inference():
    chats = _chats(["Bob", "Alice"], ["Alice", "Carol"], me="bob")
    assert who_is_me(chats, "carol") == ("Carol", "given")
    assert who_is_me(chats) == ("Bob", "file")
    no_hint = _chats(["Bob", "Alice"], ["Alice", "Carol"])
    assert who_is_me(no_hint) == ("Alice", "inferred")


def test_ambiguous_me_lists_senders_with_counts():
    chats = _chats(["Bob", "Alice", "Bob"], ["Alice", "Bob"])
    with pytest.raises(AmbiguousSpeakerError, match=r"--me.*Bob \(3\), Alice \(2\)"):
        resolve_me(chats)


def test_unknown_me_lists_senders():
    chats = _chats(["Bob", "Alice", "Bob"])
    with pytest.raises(UnknownSpeakerError, match=r"Bob \(2\), 1 sender\(s\) with a single message") as info:
        resolve_me(chats, "Zed")
    assert "Alice" not in str(info.value)  # seen once: maybe message text, so counted, never named
    with pytest.raises(UnknownSpeakerError, match="in the chats file"):
        resolve_me(_chats(["Bob", "Alice"], me="Zed"))


def test_system_senders_do_not_count_for_me():
    chats = load_chats(FIX / "whatsapp_ios.txt")
    assert "" not in chats.sender_counts()
    with pytest.raises(AmbiguousSpeakerError):
        resolve_me(chats)  # Alice and Bob are both in every conversation with text
    assert resolve_me(chats, "ALICE") == "Alice"


def test_telegram_full_export_owner_resolves_me():
    assert who_is_me(load_chats(FIX / "telegram_full_export.json")) == ("Alice", "file")


def test_no_plaintext_written(tmp_path, persona_home):
    load_chats(FIX / "whatsapp_android_12h.txt")
    assert not persona_home.exists() or not any(persona_home.rglob("*"))
    assert os.listdir(tmp_path) == ["persona-home"] or os.listdir(tmp_path) == []


def test_schema_ships_and_matches_the_loader():
    from importlib.resources import files

    from persona_sdk.chats import KINDS

    schema = json.loads(files("persona_sdk").joinpath("data/chats.schema.json").read_text(encoding="utf-8"))
    message = schema["$defs"]["message"]
    assert message["required"] == ["sender", "text"]
    assert tuple(message["properties"]["kind"]["enum"]) == KINDS
    assert schema["oneOf"][0]["required"] == ["conversations"]
    # the documented example loads
    example = {"me": "Alice", "conversations": [{"id": "optional", "messages": [
        {"sender": "Bob", "text": "hey, back from the trip?", "time": "2024-05-01T10:00:00Z"},
        {"sender": "Alice", "text": "yes! still jetlagged"}]}]}
    assert detect_format(json.dumps(example)) == "chats"


def test_folder_total_size_limit_and_subset(tmp_path):
    for i in range(3):
        (tmp_path / f"c{i}.txt").write_bytes((FIX / "whatsapp_ios.txt").read_bytes())
    size = (FIX / "whatsapp_ios.txt").stat().st_size
    with pytest.raises(ChatFileTooLargeError, match="more than"):
        load_chats(tmp_path, max_bytes=2 * size + 10)
    chats = load_chats(tmp_path)
    sub = chats.subset([4, 0])
    assert sub.conversations == (chats.conversations[4], chats.conversations[0])


# --- hostile input (an attack run on a fresh install) --------------------------------
def _finishes(fn, fifo: Path | None = None, timeout: float = 20.0):
    """fn() in a thread; fails (and unblocks a reader stuck on ``fifo``) if it does not return."""
    import threading

    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if fifo is not None:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # a writer appears: the stuck open/read returns
            os.close(fd)
            thread.join(10)
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {timeout:.0f} s (blocked)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "chats.json"
    os.mkfifo(fifo)
    with pytest.raises(ChatFileError, match="not a regular file"):
        _finishes(lambda: load_chats(fifo), fifo)
    named_zip = tmp_path / "export.zip"
    os.mkfifo(named_zip)
    with pytest.raises(ChatFileError, match="not a regular file"):
        _finishes(lambda: load_chats(named_zip), named_zip)
    # inside a folder: skipped and reported, the real export still loads
    folder = tmp_path / "folder"
    folder.mkdir()
    os.mkfifo(folder / "a_pipe.txt")
    (folder / "chat.txt").write_bytes((FIX / "whatsapp_ios.txt").read_bytes())
    chats = _finishes(lambda: load_chats(folder), folder / "a_pipe.txt")
    assert chats.formats == ("whatsapp",)
    assert [(Path(w).name, why) for w, why in chats.skipped] == [("a_pipe.txt", "not a regular file")]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_devices_are_refused_before_reading(device):
    if not os.path.exists(device):
        pytest.skip(f"no {device} here")
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ChatFileError, match="not a regular file"):
        _finishes(lambda: load_chats(device))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB: nothing was read


@pytest.mark.parametrize("document, match", [
    ('{"conversations": [{"id": ' + "9" * 5000 + ', "messages": [{"sender": "a", "text": "b"}]}]}', "digits"),
    ('{"conversations": [{"id": 1, "messages": [{"sender": "a", "text": "b", "time": NaN}]}]}', "NaN"),
    ('{"conversations": [{"id": 1, "messages": [{"sender": "a", "text": "b", "time": -Infinity}]}]}', "Infinity"),
])
def test_json_that_python_accepts_but_no_export_holds_is_a_format_error(tmp_path, document, match):
    p = tmp_path / "chats.json"
    p.write_text(document, encoding="utf-8")
    with pytest.raises(ChatFormatError, match=match):
        load_chats(p)
    assert detect_format(document) is None


@pytest.mark.parametrize("value", ["Infinity", "1e400", '"1e400"', "-1e400"])
def test_telegram_infinite_unixtime_is_a_format_error(tmp_path, value):
    p = tmp_path / "result.json"
    p.write_text('{"name": "Bob", "type": "personal_chat", "id": 1, "messages": [{"id": 1, "type": "message", '
                 '"from": "Alice", "from_id": "user1", "text": "hi", "date_unixtime": ' + value + '}]}',
                 encoding="utf-8")
    with pytest.raises(ChatFormatError):
        load_chats(p)


def test_lone_surrogates_become_replacement_characters(tmp_path):
    p = tmp_path / "chats.json"
    p.write_text('{"me": "Al\\udc00ice", "conversations": [{"messages": ['
                 '{"sender": "B\\ud800ob", "text": "hey \\ud800 you"},'
                 '{"sender": "Alice", "text": "ok \\ud83d\\ude00"}]}]}', encoding="utf-8")
    chats = load_chats(p)
    bob, alice = chats.conversations[0].messages
    assert (bob.sender, bob.text) == ("B\ufffdob", "hey \ufffd you")
    assert alice.text == "ok \U0001F600"  # a valid pair stays the character it encodes
    assert chats.me == "Al\ufffdice"
    for m in (bob, alice):
        (m.sender + m.text).encode("utf-8")  # printable and tokenisable


def test_sender_names_are_printed_with_control_characters_escaped():
    from persona_sdk.chats import display_name

    chats = _chats(["Bob\x1b[2J", "Alice", "Bob\x1b[2J"])
    with pytest.raises(UnknownSpeakerError) as info:
        resolve_me(chats, "Zed")
    assert "\x1b" not in str(info.value) and "Bob\\x1b[2J (2)" in str(info.value)
    assert display_name("a\x00b\x9bc") == "a\\x00b\\x9bc"


def _zip_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_zip_declared_sizes_are_bounded_before_unpacking(tmp_path, monkeypatch):
    chat = (FIX / "whatsapp_ios.txt").read_bytes()
    archive = _zip_with(tmp_path / "six.zip", {f"chat{i}.txt": chat * 40 for i in range(6)})
    size = len(chat) * 40
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or real_open(self, *a, **k))
    with pytest.raises(ChatFileTooLargeError, match="unpacks to"):
        load_chats(archive, max_bytes=5 * size + 10)  # 6 members declared: refused as a whole
    assert opened == []  # nothing was unpacked
    assert load_chats(archive, max_bytes=6 * size + 10).formats == ("whatsapp",)  # all six fit


def test_zip_bomb_ratio_is_refused_before_unpacking(tmp_path):
    archive = _zip_with(tmp_path / "bomb.zip", {"_chat.txt": b"1/1/21, 10:00 - A: " + b"a" * (8 << 20)})
    assert archive.stat().st_size < 100_000
    with pytest.raises(ChatFileTooLargeError, match="zip bomb"):
        load_chats(archive)  # well under the size limit, but deflated far beyond any chat


def test_zip_member_larger_than_declared_is_not_read_past_its_size(tmp_path):
    real = b"1/1/21, 10:00 - Alice: hi\n1/1/21, 10:01 - Bob: yo\n" * 2000
    archive = _zip_with(tmp_path / "liar.zip", {"_chat.txt": real})
    blob = bytearray(archive.read_bytes())
    # rewrite the declared uncompressed size (local header and central directory) to 100 bytes
    import struct

    local = blob.index(b"PK\x03\x04")
    central = blob.index(b"PK\x01\x02")
    struct.pack_into("<I", blob, local + 22, 100)
    struct.pack_into("<I", blob, central + 24, 100)
    archive.write_bytes(bytes(blob))
    with pytest.raises(ChatFileError, match="cannot be unpacked|corrupt"):
        load_chats(archive)


def test_zip_with_too_many_entries_is_refused_before_reading_its_directory(tmp_path, monkeypatch):
    from persona_sdk import chats as chats_mod

    archive = _zip_with(tmp_path / "many.zip", {f"m{i}.jpg": b"x" for i in range(30)})
    monkeypatch.setattr(chats_mod, "MAX_ZIP_MEMBERS", 20)
    read_directory = []
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", lambda self: read_directory.append(1))
    with pytest.raises(ChatFileTooLargeError, match="30 files"):
        load_chats(archive)
    assert read_directory == []


def test_a_long_whitespace_run_does_not_stall_the_whatsapp_parser(tmp_path):
    """The "<This message was edited>" clean-up was a regex with a leading \\s*: quadratic."""
    p = tmp_path / "chat.txt"
    p.write_text("1/1/21, 10:00 - Alice: hi" + " " * 1_000_000 + "x\n1/1/21, 10:01 - Bob: edited  <This message "
                 "was edited>\n", encoding="utf-8")
    # a subprocess: a regex holds the GIL, so a thread could not even be timed out
    import subprocess
    import sys

    code = ("import sys; from persona_sdk.chats import load_chats\n"
            "m = load_chats(sys.argv[1]).conversations[0].messages\n"
            "print(repr((m[0].text[-1:], m[1].text)))")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr(("x", "edited"))


def test_whatsapp_parse_from_bytes_matches_parse_from_text():
    from persona_sdk.importers import whatsapp

    for name in ("whatsapp_android_12h.txt", "whatsapp_ios.txt", "whatsapp_group_24h_dayfirst.txt"):
        data = (FIX / name).read_bytes()
        from_text = whatsapp.parse(data.decode("utf-8"), name)
        assert load_chats(FIX / name).conversations == tuple(from_text)


def test_invalid_utf8_names_its_line_in_the_line_by_line_reader(tmp_path):
    p = tmp_path / "chat.txt"
    p.write_bytes(b"1/1/21, 10:00 - Alice: hi\n1/1/21, 10:01 - Bob: \xff\xfe broken\n")
    with pytest.raises(ChatFileError, match="line 2"):
        load_chats(p)
