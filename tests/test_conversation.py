from tokenizers import Tokenizer

from persona_sdk.conversation import ASSISTANT, REPLY_HEADER, USER, ChatFormat, Turn, render_turn


def _fmt(tiny_backbone):
    return ChatFormat(Tokenizer.from_file(str(tiny_backbone / "tokenizer.json")))


def test_turn_by_turn_ids_equal_whole_string(tiny_backbone):
    fmt = _fmt(tiny_backbone)
    history = [Turn(USER, "hey, back from the trip?"), Turn(ASSISTANT, "yes! still jetlagged"),
               Turn(USER, "what do you do on weekends?")]
    whole = "".join(render_turn(t) for t in history) + REPLY_HEADER  # the history, then the reply header
    assert fmt.prompt_ids(history, budget=10_000) == fmt.encode(whole)


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


# --- text a budget can never use is not tokenised --------------------------------
class _Spy:
    """A tokenizer wrapper that records the length of every text it is asked to encode."""

    def __init__(self, tok) -> None:
        self.tok, self.lengths = tok, []

    def encode(self, text, **kw):
        self.lengths.append(len(text))
        return self.tok.encode(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def _words(n: int, seed: int = 0) -> str:
    import random

    rng = random.Random(seed)
    vocab = "hey back from the trip yes still jetlagged what do you weekends mostly hiking lol no".split()
    return " ".join(rng.choice(vocab) for _ in range(n))


def test_long_turns_are_cut_before_tokenising_with_the_same_ids(tiny_backbone):
    tok = Tokenizer.from_file(str(tiny_backbone / "tokenizer.json"))
    plain, spy = ChatFormat(tok), ChatFormat(_Spy(tok))
    long_reply = _words(60_000)
    history = [Turn(USER, _words(50, 1)), Turn(ASSISTANT, long_reply), Turn(USER, _words(40_000, 2))]
    for budget in (64, 256):
        spy.tokenizer.lengths.clear()
        # the same ids as tokenising everything, from a bounded amount of text
        full = [plain.encode(f"<|im_start|>{t.role}\n{t.text}<|im_end|>\n") for t in history]
        from persona_sdk.conversation import _fit

        assert spy.prompt_ids(history, budget) == _fit(plain.header_ids, full, budget)
        assert max(spy.tokenizer.lengths) <= (budget + 16) * spy.max_token_chars
        assert spy.reply_ids(long_reply, budget) == (plain.encode(long_reply)[: budget - 1] + [plain.end_id])
        assert spy.count_tokens(long_reply, at_most=budget) > budget
    assert max(spy.tokenizer.lengths) < 50_000 < len(long_reply)


def test_a_multi_megabyte_message_costs_what_its_kept_part_costs(tiny_backbone, tmp_path):
    """Tokenising a 4 MiB message whole took ~0.8 GB; the prompt and the training example
    need only its ends."""
    import subprocess
    import sys

    code = ("import re, sys\n"
            "from tokenizers import Tokenizer\n"
            "from persona_sdk.conversation import ASSISTANT, USER, ChatFormat, Turn\n"
            "fmt = ChatFormat(Tokenizer.from_file(sys.argv[1]))\n"
            "big = 'lol no ' * (4 * 2**20 // 7)\n"
            "def hwm(): return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
            "open('/proc/self/clear_refs', 'w').write('5')\n"
            "before = hwm()\n"
            "fmt.prompt_ids([Turn(USER, big)], 256)\n"
            "fmt.example_ids([Turn(USER, big)], big, 256, 64)\n"
            "print((hwm() - before) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_backbone / "tokenizer.json")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 64  # MiB over the 4 MiB text itself


def test_unpaired_surrogates_are_tokenised_as_replacement_characters(tiny_backbone):
    fmt = _fmt(tiny_backbone)
    assert fmt.encode("hi \ud800 there") == fmt.encode("hi \ufffd there")
    assert fmt.prompt_ids([Turn(USER, "\udcff")], 64)  # bytes that were not UTF-8 (surrogateescape)


def test_own_turn_tokens_counts_the_finished_persona_turns_of_a_prompt(tiny_backbone):
    fmt = _fmt(tiny_backbone)
    history = [Turn(USER, "the quick brown fox jumps over the lazy dog"), Turn(ASSISTANT, "lol no"),
               Turn(USER, "hi there"), Turn(ASSISTANT, "yes! still jetlagged, and you?"), Turn(USER, "ok")]
    ids = fmt.prompt_ids(history, budget=10_000)
    want = [len(fmt.encode("lol no")), len(fmt.encode("yes! still jetlagged, and you?"))]
    assert want[0] != want[1] and fmt.own_turn_tokens(ids) == want  # oldest first, text tokens only
    # user turns and the reply header that ends every prompt are not persona turns
    assert fmt.own_turn_tokens(fmt.prompt_ids([Turn(USER, "hi there")], budget=10_000)) == []
    # a turn the budget dropped is not counted
    tail = fmt.prompt_ids(history[2:], budget=10_000)
    assert fmt.own_turn_tokens(fmt.prompt_ids(history, budget=len(tail))) == want[1:]
