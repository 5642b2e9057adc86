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
