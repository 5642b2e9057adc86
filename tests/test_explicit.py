"""persona_sdk.explicit: the persona-sentence gate, the prompt formats, the mode registry,
the prompting baseline, and where users meet them (PersonaAgent, persona chat)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from persona_sdk import explicit
from persona_sdk.agent import PersonaAgent
from persona_sdk.config import GenerationConfig
from persona_sdk.conversation import ASSISTANT, USER, Turn
from persona_sdk.errors import ConfigError, PersonaSentencesError
from persona_sdk.explicit import formats
from persona_sdk.explicit.base import ExplicitMode, Prepared
from persona_sdk.explicit.prompt import PromptMode

PERSONA = ["I bake cookies.", "I have a dog."]
CLI = [sys.executable, "-m", "persona_sdk"]


# --- the sentence gate ------------------------------------------------------------------
def test_sentences_are_cleaned_and_kept_in_order():
    assert explicit.persona_sentences(["  I bake\ncookies. ", "I have a dog."]) == ("I bake cookies.", "I have a dog.")
    assert explicit.persona_sentences("I knit.") == ("I knit.",)


@pytest.mark.parametrize("bad, needle", [
    (None, "no persona sentences"), ([], "no persona sentences"), (["I knit.", "   "], "sentence 2 is empty"),
    (["I knit."] * 10_000, "too many"), (["x" * 301], "longer than"), (["I knit\x00."], "control characters"),
    ([b"I knit."], "not text"),
])
def test_bad_sentences_are_refused_naming_the_position(bad, needle):
    with pytest.raises(PersonaSentencesError, match=needle):
        explicit.persona_sentences(bad)


def test_persona_file(tmp_path):
    good = tmp_path / "p.txt"
    good.write_text("# my character\nI bake cookies.\n\nI have a dog.\n", encoding="utf-8")
    assert explicit.read_persona_file(good) == PERSONA
    binary = tmp_path / "p.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    for path, needle in ((binary, "binary"), (tmp_path / "missing.txt", "not found")):
        with pytest.raises(PersonaSentencesError, match=needle):
            explicit.read_persona_file(path)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("J'ai un chien é".encode("latin-1"))
    with pytest.raises(PersonaSentencesError, match="not UTF-8"):
        explicit.read_persona_file(latin)
    huge = tmp_path / "huge.txt"
    huge.write_text("I knit.\n" * 10_000)
    with pytest.raises(PersonaSentencesError, match="bytes"):
        explicit.read_persona_file(huge)


# --- formats ----------------------------------------------------------------------------
def test_formats_put_the_persona_in_a_system_turn(tiny_onnx):
    from persona_sdk.runtime import Engine

    fmt = Engine(tiny_onnx).format
    history = [Turn(USER, "hi there"), Turn(ASSISTANT, "hey"), Turn(USER, "what do you do?")]
    ids = formats.persona_prompt_ids(fmt, PERSONA, history, 400)
    text = fmt.tokenizer.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nYou are this person: I bake cookies. I have a dog.")
    assert text.endswith("<|im_start|>user\nwhat do you do?<|im_end|>\n<|im_start|>assistant\n")
    sel = fmt.tokenizer.decode(formats.selection_prompt_ids(fmt, PERSONA, history, 400), skip_special_tokens=False)
    assert "1. I bake cookies.\n2. I have a dog.\n" in sel and formats.selection_answer(" I have a dog. ") == " I have a dog."
    # the selection answer follows a cue, never the bare reply header that generation replies follow
    assert sel.endswith("<|im_start|>assistant\n" + formats.SELECTION_CUE)
    full = len(formats.selection_prompt_ids(fmt, PERSONA, history, 400))
    assert len(formats.selection_prompt_ids(fmt, PERSONA, history, full - 3)) <= full - 3  # the cue counts
    bare = fmt.tokenizer.decode(formats.persona_prompt_ids(fmt, (), history, 400), skip_special_tokens=False)
    assert formats.NO_PERSONA in bare and "cookies" not in bare
    # the budget drops the oldest turns first, never the persona
    short = formats.persona_prompt_ids(fmt, PERSONA, history, len(ids) - 3)
    assert fmt.tokenizer.decode(short, skip_special_tokens=False).startswith("<|im_start|>system\nYou are this")
    with pytest.raises(PersonaSentencesError, match="too little room"):
        formats.persona_prompt_ids(fmt, ["I knit scarves every single day of the week."] * 8, history, 80)


# --- the registry and the prompting baseline -----------------------------------------------
def test_registry_names_the_modes():
    assert set(explicit.MODES) >= {"prompt", "pal"} and explicit.DEFAULT_MODE == "prompt"
    assert explicit.mode_class("prompt") is PromptMode and issubclass(explicit.mode_class("pal"), ExplicitMode)
    with pytest.raises(ConfigError, match="prompt, pal"):
        explicit.mode_class("paa-typo")


def test_prompt_mode_conditions_on_every_sentence_and_scores_replies(tiny_onnx):
    mode = explicit.open_mode("prompt", PERSONA, backbone=tiny_onnx)
    history = [Turn(USER, "hi there")]
    prepared = mode.prepare(history)
    assert isinstance(prepared, Prepared) and prepared.conditioned_on == (0, 1)
    assert "I have a dog." in mode.engine.format.tokenizer.decode(list(prepared.prompt_ids))
    losses = mode.reply_losses(prepared, "i am fine thanks")
    assert losses.ndim == 1 and len(losses) == len(mode.engine.format.reply_ids("i am fine thanks"))
    gen = GenerationConfig(max_new_tokens=4, do_sample=False)
    assert "".join(mode.stream(prepared, gen)) == "".join(mode.reply_stream(history, gen))


# --- PersonaAgent ---------------------------------------------------------------------------
def test_agent_speaks_as_persona_sentences(tiny_onnx):
    gen = GenerationConfig(max_new_tokens=6, do_sample=False)
    with PersonaAgent(backbone=tiny_onnx, persona_sentences=PERSONA, generation=gen) as agent:
        first = agent.reply("hi there")
        assert "".join(agent.stream("hi there")) is not None
        assert asyncio.run(agent.areply("hi there")) is not None
        assert [t.role for t in agent.history] == [USER, ASSISTANT] * 3
        agent.reset()
        assert agent.reply("hi there") == first  # greedy: the same persona, the same reply
    from persona_sdk.runtime import Engine

    engine = Engine(tiny_onnx)
    plain = engine.prompt_ids([Turn(USER, "hi there")], None, gen)
    assert list(PromptMode(PERSONA, engine).prepare([Turn(USER, "hi there")], gen).prompt_ids) != plain


def test_agent_refuses_bad_combinations(tiny_onnx):
    from persona_sdk.prefix import Prefix
    import numpy as np

    with pytest.raises(PersonaSentencesError):
        PersonaAgent(backbone=tiny_onnx, explicit="prompt")  # a mode without sentences
    with pytest.raises(PersonaSentencesError):
        PersonaAgent(backbone=tiny_onnx, persona_sentences=[""])
    with pytest.raises(ConfigError, match="explicit mode must be one of"):
        PersonaAgent(backbone=tiny_onnx, persona_sentences=PERSONA, explicit="nope")
    block = Prefix(np.zeros((2, 2, 2, 1, 16), np.float32), "x" * 64)
    with pytest.raises(ConfigError, match="cannot be combined"):
        PersonaAgent(block, backbone=tiny_onnx, persona_sentences=PERSONA)


# --- persona chat ---------------------------------------------------------------------------
def _chat(args, **kw):
    return subprocess.run(CLI + ["chat", *args], capture_output=True, text=True, timeout=180, **kw)


def test_chat_with_persona_sentences(tiny_onnx, tmp_path):
    persona_file = tmp_path / "persona.txt"
    persona_file.write_text("I have a dog.\n")
    out = _chat(["--backbone", str(tiny_onnx), "--persona", "I bake cookies.", "--persona-file", str(persona_file),
                 "--explicit", "prompt", "--temperature", "0", "--max-new-tokens", "6", "-m", "hi there"])
    assert out.returncode == 0, out.stderr
    again = _chat(["--backbone", str(tiny_onnx), "--persona", "I bake cookies.", "--persona", "I have a dog.",
                   "--temperature", "0", "--max-new-tokens", "6", "-m", "hi there"])
    assert again.returncode == 0 and again.stdout == out.stdout  # file + option = the same two sentences


@pytest.mark.parametrize("case", ["none", "empty", "many", "binary", "name"])
def test_chat_bad_persona_input_is_a_one_line_error(tiny_onnx, tmp_path, case):
    base = ["--backbone", str(tiny_onnx), "-m", "hi"]
    if case == "none":
        args = ["--explicit", "pal"]
    elif case == "empty":
        args = ["--persona", ""]
    elif case == "many":
        many = tmp_path / "many.txt"
        many.write_text("I knit.\n" * 5_000)  # under the size cap, over the sentence cap
        args = ["--persona-file", str(many)]
    elif case == "binary":
        binary = tmp_path / "persona.bin"
        binary.write_bytes(bytes(range(256)) * 4)
        args = ["--persona-file", str(binary)]
    else:
        args = ["--persona", "I knit.", "--name", "me"]
    out = _chat(base + args)
    assert out.returncode != 0 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr and len(lines) <= 3, out.stderr  # click usage errors frame one line
    assert any(ln.startswith("Error") for ln in lines), out.stderr
