"""Each importer turns its fixture into the expected conversations."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from persona_sdk.chats import DELETED, MEDIA, SYSTEM, TEXT, load_chats
from persona_sdk.errors import ChatFormatError
from persona_sdk.importers import chitchat, whatsapp

FIX = Path(__file__).parent / "fixtures" / "chats"


def _summary(chats):
    return [[(m.sender, m.kind, m.text) for m in c.messages] for c in chats.conversations]


# --- WhatsApp ------------------------------------------------------------------
def test_whatsapp_android_12h_month_first():
    chats = load_chats(FIX / "whatsapp_android_12h.txt")
    assert chats.formats == ("whatsapp",)
    convs = _summary(chats)
    assert len(convs) == 2  # 13 hours of silence split the chat
    assert convs[0] == [
        ("", SYSTEM, "Messages and calls are end-to-end encrypted. No one outside of this chat, not even "
         "WhatsApp, can read or listen to them. Tap to learn more."),
        ("Bob Stone", TEXT, "hey, back from the trip?"),
        ("Alice", TEXT, "yes! still jetlagged"),
        ("Alice", TEXT, "the flight was 14 hours"),
        ("Bob Stone", MEDIA, "<Media omitted>"),
        ("Bob Stone", TEXT, "look at this view"),
        ("Alice", TEXT, "wow 😍\nwhere is that?"),  # multi-line, edited mark removed
        ("Bob Stone", DELETED, "This message was deleted"),
        ("Bob Stone", TEXT, "a lake near the cabin"),
    ]
    assert convs[1][1] == ("Bob Stone", TEXT, "party at Sam's: bring snacks")
    # a line inside a message that starts with a date is still text
    assert convs[1][2] == ("Alice", TEXT, "my calendar says\n12/31/23 dinner at 9\nso I can come after")
    assert convs[1][4] == ("Alice", MEDIA, "<Media omitted>")
    first = chats.conversations[0].messages[1].time
    assert first == datetime(2023, 12, 30, 21, 1)  # 9:01 PM, month-first


def test_whatsapp_group_day_first_24h_name_with_colon_rtl_emoji():
    chats = load_chats(FIX / "whatsapp_group_24h_dayfirst.txt")
    convs = _summary(chats)
    assert len(convs) == 2
    senders = {s for c in convs for s, k, _ in c if k != SYSTEM}
    assert senders == {"Dr: Who", "Carol", "Alice", "Erin"}  # 3+ people, a name containing ": "
    assert ("Dr: Who", TEXT, "great: see you at 9") in convs[0]
    assert ("Alice", TEXT, "שלום! chocolate is perfect") in convs[0]
    assert ("Alice", TEXT, "مرحبا everyone, I'll bring drinks") in convs[0]
    systems = [t for s, k, t in convs[0] if k == SYSTEM]
    assert len(systems) == 5  # created, added, subject change (with ": " inside), joined, left
    assert chats.conversations[0].messages[2].time == datetime(2023, 12, 31, 18, 1)


def test_whatsapp_ios_marks_media_and_fake_header():
    chats = load_chats(FIX / "whatsapp_ios.txt")
    convs = _summary(chats)
    assert len(convs) == 3
    assert convs[0][0][1] == SYSTEM and convs[0][0][0] == "Bob Stone"  # encryption notice
    assert ("Alice", MEDIA, "image omitted") in convs[0]
    assert convs[0][4][0] == "Bob Stone" and convs[0][4][2].endswith("13/01/2024, 09:00 - Alice: not a message")
    assert convs[0][6][1] == MEDIA  # <attached: ...>
    assert convs[0][7] == ("Alice", TEXT, "nice")
    assert convs[1] == [("Bob Stone", SYSTEM, "Missed voice call")]
    assert all("\u200e" not in t and "\u200e" not in s for c in convs for s, _, t in c)
    assert chats.conversations[0].messages[1].time == datetime(2024, 1, 13, 8, 1, 10)


def test_whatsapp_ios_12h_and_narrow_space_am_pm(tmp_path):
    text = ("[1/5/24, 11:59:00\u202fPM] Bob: late?\n[1/6/24, 12:00:30\u202fAM] Alice: midnight\n"
            "[1/6/24, 12:01:00\u202fPM] Bob: noon\n")
    (tmp_path / "_chat.txt").write_text(text, encoding="utf-8")
    chats = load_chats(tmp_path / "_chat.txt")
    times = [m.time for c in chats.conversations for m in c.messages]
    assert times == [datetime(2024, 1, 5, 23, 59), datetime(2024, 1, 6, 0, 0, 30), datetime(2024, 1, 6, 12, 1)]
    assert len(chats.conversations) == 2  # 12 h gap


def test_whatsapp_year_first_and_back_in_time_line_is_text(tmp_path):
    text = ("2024-02-01 10:00 - Bob: hi\n2024-02-01 10:01 - Alice: hello\n"
            "2023-01-01 09:00 - Bob: quoted from last year\n2024-02-01 10:02 - Bob: ok\n")
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    (conv,) = load_chats(tmp_path / "c.txt").conversations
    assert [m.text for m in conv.messages] == ["hi", "hello\n2023-01-01 09:00 - Bob: quoted from last year", "ok"]


def test_whatsapp_forced_on_other_text_points_at_line(tmp_path):
    (tmp_path / "notes.txt").write_text("just some notes\n12/30/23, 9:01 PM - Bob: hi\n", encoding="utf-8")
    with pytest.raises(ChatFormatError, match="line 1"):
        load_chats(tmp_path / "notes.txt", "whatsapp")
    assert not whatsapp.detect("hello\n")


# --- Telegram ------------------------------------------------------------------
def test_telegram_single_chat():
    chats = load_chats(FIX / "telegram_single.json")
    assert chats.formats == ("telegram",) and chats.me is None
    convs = _summary(chats)
    assert convs == [
        [("Bob Stone", TEXT, "did you see the match?"),
         ("Alice", TEXT, "yes, what a goal 🤯"),  # entity list joined
         ("Bob Stone", MEDIA, ""),
         ("Bob Stone", TEXT, "https://example.org/replay replay"),
         ("Alice", TEXT, "watched it twice")],
        [("Bob Stone", TEXT, "dinner friday?"),  # "from": null -> name of from_id
         ("Alice", TEXT, "sure!"),
         ("Alice", MEDIA, "")],  # sticker
    ]  # service message (phone call) skipped


def test_telegram_full_export_owner_is_me_hint():
    chats = load_chats(FIX / "telegram_full_export.json")
    assert chats.me == "Alice"
    assert len(chats.conversations) == 3
    assert _summary(chats)[2] == [("Carol", TEXT, "who is in for saturday?"), ("Bob Stone", TEXT, "me"),
                                  ("Alice", TEXT, "count me in ✋")]


# --- Discord -------------------------------------------------------------------
def test_discord_chat_exporter():
    chats = load_chats(FIX / "discord.json")
    assert chats.formats == ("discord",)
    (conv,) = _summary(chats)
    assert [k for _, k, _ in conv] == [SYSTEM, TEXT, TEXT, TEXT, MEDIA, SYSTEM, TEXT, TEXT]
    assert conv[3] == ("alice", TEXT, "I did! muddy but worth it")  # a Reply is text
    assert chats.conversations[0].messages[1].time == datetime(2024, 5, 1, 10, 1, tzinfo=timezone.utc)


# --- chats.json ------------------------------------------------------------------
def test_chats_json_object_and_bare_list(tmp_path):
    chats = load_chats(FIX / "chats.json")
    assert chats.me == "Alice" and chats.formats == ("chats",)
    assert [c.id for c in chats.conversations] == ["c1", "2"]
    assert chats.conversations[1].messages[1].kind == MEDIA
    assert chats.conversations[0].messages[0].time == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
    bare = json.loads((FIX / "chats.json").read_text(encoding="utf-8"))["conversations"]
    (tmp_path / "bare.json").write_text(json.dumps(bare), encoding="utf-8")
    again = load_chats(tmp_path / "bare.json")
    assert again.me is None and _summary(again) == _summary(chats)


# --- chitchat ------------------------------------------------------------------
CHITCHAT = {
    "conv-a": {"messages": [
        [{"text": "Hello", "timestamp": "2018-05-02T19:38:15Z", "sender": "spk-1"},
         {"text": "How are you?", "timestamp": "2018-05-02T19:38:20Z", "sender": "spk-1"}],
        [{"text": "good, you?", "timestamp": "2018-05-02T19:38:29Z", "sender": "spk-2"}]],
        "start": "2018-05-02T19:38:01Z", "prompt": "hi", "ratings": {"witty": 1}},
    "conv-b": {"messages": [[{"text": "yo", "timestamp": "2018-05-03T10:00:00Z", "sender": "spk-2"}],
                            [{"text": "hey", "timestamp": "2018-05-03T10:00:05Z", "sender": "spk-3"}]]},
}


def test_chitchat_file_detected_and_speaker_index(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps(CHITCHAT), encoding="utf-8")
    chats = load_chats(tmp_path / "dataset.json")
    assert chats.formats == ("chitchat",)
    assert [c.id for c in chats.conversations] == ["conv-a", "conv-b"]
    assert _summary(chats)[0] == [("spk-1", TEXT, "Hello"), ("spk-1", TEXT, "How are you?"),
                                  ("spk-2", TEXT, "good, you?")]
    assert chitchat.speaker_conversations(chats) == {"spk-1": [0], "spk-2": [0, 1], "spk-3": [1]}


def test_load_chitchat_reads_the_installed_package(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps(CHITCHAT), encoding="utf-8")
    small = chitchat.load_chitchat(str(tmp_path / "dataset.json"))
    assert len(small.conversations) == 2 and small.formats == ("chitchat",)
    assert chitchat.dataset_path().is_file()  # the real one is there for the trainer
