from tokenizers import Tokenizer

from persona_sdk.conversation import ASSISTANT, USER, ChatFormat, Turn, render_prompt


def _fmt(tiny_backbone):
    return ChatFormat(Tokenizer.from_file(str(tiny_backbone / "tokenizer.json")))


def test_turn_by_turn_ids_equal_whole_string(tiny_backbone):
    fmt = _fmt(tiny_backbone)
    history = [Turn(USER, "hey, back from the trip?"), Turn(ASSISTANT, "yes! still jetlagged"),
               Turn(USER, "what do you do on weekends?")]
    assert fmt.prompt_ids(history, budget=10_000) == fmt.encode(render_prompt(history))


def test_budget_drops_oldest_turns_first(tiny_backbone):
    fmt = _fmt(tiny_backbone)
    history = [Turn(USER, "the quick brown fox jumps over the lazy dog"), Turn(ASSISTANT, "lol no"),
               Turn(USER, "hi there")]
    full = fmt.prompt_ids(history, budget=10_000)
    last_two = fmt.prompt_ids(history[1:], budget=10_000)
    ids = fmt.prompt_ids(history, budget=len(last_two))
    assert ids == last_two and len(ids) < len(full)
    assert ids[-len(fmt.header_ids):] == fmt.header_ids


def test_example_ids_mark_reply_start_and_end_token(tiny_backbone):
    fmt = _fmt(tiny_backbone)
    ids, n_prompt = fmt.example_ids([Turn(USER, "hi there")], "i am fine thanks", context_budget=64)
    assert ids[:n_prompt] == fmt.prompt_ids([Turn(USER, "hi there")], 64)
    assert ids[-1] == fmt.end_id
    assert fmt.decode(ids[n_prompt:]) == "i am fine thanks"
