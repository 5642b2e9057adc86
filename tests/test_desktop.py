"""The desktop app (examples/desktop/app.py) for real: a window on an Xvfb display, driven with xdotool.

Needs Debian's ``xvfb`` and ``xdotool`` (.ci/run installs them); when one is missing the
tests fail saying so, they are never skipped. Two ways in:

- As a user runs it: the script in its own process on the tiny test backbone; xdotool
  moves the pointer, clicks and types (real X input events); the test reads the
  transcript and the status line through Tk's own ``send`` (Tk's IPC over the X server:
  nothing is written anywhere for it) and saves a screenshot PNG
  (``tests/artifacts/desktop.png``, git-ignored; ``$PERSONA_TEST_ARTIFACTS`` moves it).
  Afterwards no file under the app's HOME, TMPDIR, working folder or PERSONA_HOME holds
  the conversation.
- In-process: the app object on a Tk root in the test process, whose event loop the test
  pumps while xdotool sends the same real events. Used where the test must control time:
  Stop in the middle of a reply (the engine is slowed down to 30 ms a token), New chat,
  the build prompt, the keyring and wrong-passphrase paths.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from persona_sdk import GenerationConfig, PersonaAgent
from persona_sdk._crypto import KdfParams
from persona_sdk.prefix import Prefix
from persona_sdk.runtime import Engine
from persona_sdk.vault import KEYRING, Vault

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "desktop" / "app.py"
ARTIFACTS = Path(os.environ.get("PERSONA_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
FLOOR = KdfParams.floor()
MESSAGE = "hey, back from the trip?"
TIMEOUT = 60.0

sys.path.insert(0, str(APP.parent))
import app as desktop  # noqa: E402  (examples/desktop/app.py)


# --- the X display ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def display():
    """A private Xvfb display (the server picks a free number and tells us on a pipe)."""
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: apt-get install -y xvfb xdotool (.ci/run does)")
    read_end, write_end = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1024x768x24",
                               "-nolisten", "tcp"], pass_fds=(write_end,),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 30)
        number = os.read(read_end, 16).decode().strip() if ready else ""
        if not number.isdigit():
            pytest.fail("Xvfb did not start")
        yield f":{number}"
    finally:
        os.close(read_end)
        server.terminate()
        server.wait(10)


def xdotool(display: str, *args: str) -> str:
    out = subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": display}, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def wait_until(condition, pump=None, timeout: float = TIMEOUT, what: str = "the app"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pump is not None:
            pump()
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def screenshot(display: str, name: str, box: tuple[int, int, int, int] | None = None) -> Path:
    """Save the screen (or ``box``: left, top, right, bottom) as a PNG test artifact."""
    from PIL import ImageGrab

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    image = ImageGrab.grab(xdisplay=display)
    if box is not None:
        image = image.crop(box)
    path = ARTIFACTS / name
    image.save(path)
    colours = image.convert("L").getextrema()
    assert colours[1] - colours[0] > 100  # a drawn window, not a blank screen
    return path


@pytest.fixture(scope="module")
def engine(tiny_onnx) -> Engine:
    return Engine(tiny_onnx)


def _prefix(engine: Engine, seed: int = 5) -> Prefix:
    kv = np.random.default_rng(seed).normal(size=(engine.layers, 2, engine.kv_heads, 4, engine.head_dim))
    return Prefix(kv.astype(np.float32), engine.fingerprint, method="test")


def _reference(engine: Engine, prefix, gen: GenerationConfig, *messages: str) -> list[str]:
    """The replies, piece by piece joined (as shown, unstripped), of one conversation in-process."""
    with PersonaAgent(prefix, engine=engine, generation=gen) as agent:
        return ["".join(agent.stream(m)) for m in messages]


# --- as a user runs it ---------------------------------------------------------------------------
class Remote:
    """The running app, seen through Tk's ``send`` from a hidden Tk root of our own on the same display."""

    def __init__(self, display: str) -> None:
        import tkinter as tk

        self.display = display
        self.root = tk.Tk(screenName=display)
        self.root.withdraw()
        wait_until(lambda: desktop.APP_NAME in self.root.tk.splitlist(self.root.tk.call("winfo", "interps")),
                   what="the app's window")

    def eval(self, script: str) -> str:
        return str(self.root.tk.call("send", desktop.APP_NAME, script))

    def status(self) -> str:
        return self.eval(".status cget -text")

    def transcript(self) -> str:
        return self.eval(".chat.transcript get 1.0 end-1c")

    def click(self, path: str) -> None:
        wait_until(lambda: self.eval(f"winfo viewable {path}") == "1", what=f"{path} on screen")
        x = int(self.eval(f"winfo rootx {path}")) + int(self.eval(f"winfo width {path}")) // 2
        y = int(self.eval(f"winfo rooty {path}")) + int(self.eval(f"winfo height {path}")) // 2
        xdotool(self.display, "mousemove", str(x), str(y), "click", "1")

    def type(self, path: str, text: str) -> None:
        """Click into the entry ``path`` and type ``text`` with real key events; wait until it shows."""
        self.click(path)
        xdotool(self.display, "type", "--delay", "15", text)
        wait_until(lambda: self.eval(f"{path} get") == text, what=f"the text typed into {path}")

    def close(self) -> None:
        self.root.destroy()


def test_the_app_as_a_user_runs_it(display, engine, tiny_onnx, tmp_path, persona_home):
    prefix = _prefix(engine)
    Vault(kdf=FLOOR).save("alice", prefix, "pw")
    gen = GenerationConfig(seed=3, max_new_tokens=24)
    (reply,) = _reference(engine, prefix, gen, MESSAGE)
    folders = {name: tmp_path / name for name in ("home", "tmp", "work")}
    for folder in folders.values():
        folder.mkdir()
    env = {**os.environ, "DISPLAY": display, "HOME": str(folders["home"]), "TMPDIR": str(folders["tmp"]),
           "PERSONA_HOME": str(persona_home)}
    app = subprocess.Popen([sys.executable, str(APP), "--backbone", str(tiny_onnx), "--profile", "alice",
                            "--seed", "3", "--max-new-tokens", "24"], cwd=folders["work"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    remote = None
    try:
        remote = Remote(display)
        wait_until(lambda: "press Open" in remote.status(), what="the profile picker")
        assert remote.eval(".open.profile get") == "alice  (passphrase)"
        assert remote.eval(".open.passphrase cget -show") == "\u2022"  # hidden entry
        assert "disabled" in remote.eval(".chat.send state")  # nothing to chat with before unlocking

        remote.type(".open.passphrase", "pw")  # typed through X, not set by the test
        remote.click(".open.open")
        wait_until(lambda: remote.status().endswith("profile alice"), what="unlocking")
        assert remote.status() == "fp32 \u00b7 cpu \u00b7 - tok/s \u00b7 profile alice"
        assert remote.eval(".open.passphrase get") == ""  # cleared once used

        remote.type(".chat.message", MESSAGE)
        remote.click(".chat.send")
        wait_until(lambda: "- tok/s" not in remote.status(), what="the reply")
        assert remote.transcript() == f"you: {MESSAGE}\nalice: {desktop.displayable(reply)}\n\n"
        assert reply.strip()
        status = remote.status()
        assert status.startswith("fp32 \u00b7 cpu \u00b7 ") and status.endswith(" tok/s \u00b7 profile alice")
        assert float(status.split(" \u00b7 ")[2].split()[0]) > 0
        x, y, w, h = (int(remote.eval(f"winfo {k} .")) for k in ("rootx", "rooty", "width", "height"))
        shot = screenshot(display, "desktop.png", (x, y, x + w, y + h))  # the app's window
        assert shot.stat().st_size > 1000

        remote.click(".chat.message")  # the pointer over the window: the keys go to it
        xdotool(display, "key", "ctrl+q")
        assert app.wait(30) == 0
    finally:
        if remote is not None:
            remote.close()
        if app.poll() is None:
            app.kill()
        out, err = app.communicate(timeout=10)
    assert out == b"", err  # says nothing on stdout (and no reply text in its output)
    assert MESSAGE.encode() not in err and reply.strip().encode() not in err
    # nothing it wrote holds the conversation
    written = [p for folder in (*folders.values(), persona_home) for p in folder.rglob("*") if p.is_file()]
    for path in written:
        data = path.read_bytes()
        assert MESSAGE.encode() not in data and reply.strip().encode("utf-8", "replace") not in data, path
    assert sorted(p.name for p in written if p.suffix == ".persona") == ["alice.persona"]


# --- in-process: Stop, New chat, keyring, wrong passphrase, the build prompt -------------------------
class InProcess:
    """The app on a Tk root in this process; the test pumps its event loop while xdotool drives it."""

    def __init__(self, display: str, **kwargs) -> None:
        import tkinter as tk

        self.display = display
        self.root = tk.Tk(screenName=display, className="persona-test")
        self.app = desktop.DesktopApp(self.root, **kwargs)
        self.pump()

    def pump(self) -> None:
        self.root.update()

    def wait(self, condition, what: str, timeout: float = TIMEOUT):
        return wait_until(condition, self.pump, timeout, what)

    def click(self, widget) -> None:
        self.wait(lambda: widget.winfo_viewable(), f"{widget} on screen")
        x = widget.winfo_rootx() + widget.winfo_width() // 2
        y = widget.winfo_rooty() + widget.winfo_height() // 2
        xdotool(self.display, "mousemove", str(x), str(y), "click", "1")
        self.pump()

    def type(self, widget, text: str) -> None:
        self.click(widget)
        xdotool(self.display, "type", "--delay", "10", text)
        self.wait(lambda: widget.get() == text, "the typed text")

    def close(self) -> None:
        self.app.close()
        self.root.destroy()


def test_stop_mid_reply_and_new_chat(display, engine, tiny_onnx, monkeypatch):
    gen = GenerationConfig(seed=11, max_new_tokens=200)
    (full,) = _reference(engine, None, gen, MESSAGE)
    assert len(engine.tokenizer.encode(full, add_special_tokens=False).ids) > 40  # long enough to stop midway
    real_run = Engine.run  # every decode path calls onnxruntime through it

    def slow_run(self, *args, **kwargs):  # 30 ms a step: Stop lands mid-reply
        time.sleep(0.03)
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "run", slow_run)
    ui = InProcess(display, backbone=str(tiny_onnx), generation=gen)
    try:
        app = ui.app
        assert app.profile.get() == desktop.BARE and "disabled" in app.passphrase.state()
        ui.click(app.open_button)
        ui.wait(lambda: app.status_text().endswith("bare backbone"), "opening")

        ui.type(app.message, MESSAGE)
        ui.click(app.send_button)
        head = f"you: {MESSAGE}\npersona: "
        seen = set()

        def streamed_some():
            text = app.transcript_text()
            seen.add(text)
            return len(text) > len(head) + 8 and app.worker.busy

        ui.wait(streamed_some, "the first pieces of the reply")
        assert app.worker.busy and "disabled" not in app.stop_button.state()
        assert "disabled" in app.send_button.state()  # one reply at a time
        ui.click(app.stop_button)
        ui.wait(lambda: app.last is not None, "the stopped reply")
        text = app.transcript_text()
        assert text.startswith(head) and text.endswith(" [stopped]\n\n")
        shown = text[len(head):-len(" [stopped]\n\n")]
        assert desktop.displayable(full).startswith(shown) and len(shown) < len(full)  # ended early; shows what was decoded
        assert len([s for s in seen if s.startswith(head)]) >= 3  # streamed piece by piece, the UI kept running
        assert app.agent.history[-1].text == full[:len(shown)].strip()  # the agent keeps what was shown

        ui.click(app.new_button)
        ui.wait(lambda: app.transcript_text() == "", "the new chat")
        assert app.agent.history == []
        monkeypatch.setattr(Engine, "run", real_run)
        ui.type(app.message, MESSAGE)
        xdotool(display, "key", "Return")  # Return sends
        ui.wait(lambda: app.last is not None and app.transcript_text().endswith("\n\n")
                and not app.worker.busy, "the second reply")
        assert app.transcript_text() == f"{head}{desktop.displayable(full)}\n\n"  # fresh conversation: the first reply again
        assert app.status_text().startswith("fp32 \u00b7 cpu \u00b7 ") and "- tok/s" not in app.status_text()
    finally:
        ui.close()


def test_keyring_profiles_open_without_a_passphrase_and_a_wrong_one_is_refused(display, engine, tiny_onnx):
    import keyring
    from test_vault import MemoryKeyring

    previous = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    vault = Vault(kdf=FLOOR)
    vault.save("alice", _prefix(engine, 1), "pw")
    vault.save("bob", _prefix(engine, 2), KEYRING)
    ui = InProcess(display, backbone=str(tiny_onnx), profile="bob")
    try:
        app = ui.app
        assert list(app.profile["values"]) == [desktop.BARE, "alice  (passphrase)", "bob  (OS keyring)"]
        assert app.key.cget("text") == "key in the OS keyring"
        assert "disabled" in app.passphrase.state() and not app.passphrase.winfo_ismapped()  # nothing to type
        ui.click(app.open_button)
        ui.wait(lambda: app.status_text().endswith("profile bob"), "bob's profile")
        assert app.agent.prefix.kv.tobytes() == _prefix(engine, 2).kv.tobytes()

        app.profile.set("alice  (passphrase)")
        app.profile.event_generate("<<ComboboxSelected>>")
        ui.pump()
        assert "disabled" not in app.passphrase.state() and app.passphrase.winfo_ismapped()
        ui.type(app.passphrase, "wrong")
        xdotool(display, "key", "Return")  # Return in the passphrase entry opens
        ui.wait(lambda: app.status_text().startswith("Error:"), "the refusal")
        assert "cannot decrypt profile 'alice'" in app.status_text()
        assert app.passphrase.get() == "" and app.who == "bob"  # cleared; still chatting as bob
        ui.click(app.open_button)  # an empty passphrase is asked for, not tried
        assert app.status_text() == "Enter the passphrase of 'alice'."
    finally:
        ui.close()
        keyring.set_keyring(previous)


def test_the_export_is_built_only_when_asked_and_announced(display, tiny_backbone, tiny_export_cache,
                                                          persona_home, monkeypatch):
    """No export of the backbone yet: the window says so and names the command; Build builds it, with progress.

    The build itself is the tiny backbone's prebuilt export copied into place (building for
    real is test_engines'); what is tested is that nothing is built before Build is pressed,
    that the announcement and progress are shown, and that the chat opens afterwards.
    """
    import persona_sdk.exporters as exporters

    built = []

    def ensure_exported(model_dir, variant, progress=None, **kwargs):
        built.append(variant)
        progress("exporting the graph")
        shutil.copytree(tiny_export_cache / "onnx", persona_home / "cache" / "onnx", dirs_exist_ok=True)
        time.sleep(0.5)  # long enough for the window to show it
        progress("validating against torch")
        return next((persona_home / "cache" / "onnx").glob(f"*/{variant}"))

    monkeypatch.setattr(exporters, "ensure_exported", ensure_exported)
    ui = InProcess(display, backbone=str(tiny_backbone), variant="fp32", generation=GenerationConfig(seed=1))
    try:
        app = ui.app
        ui.click(app.open_button)
        ui.wait(lambda: app.build.winfo_ismapped(), "the build prompt")
        notice = app.notice.cget("text")
        assert "has no fp32 ONNX export yet" in notice and "persona backbone export" in notice
        assert "Press Build" in notice and app.build_button.winfo_ismapped()
        assert built == [] and app.agent is None  # asked, not built
        assert "needs its ONNX export" in app.status_text()

        ui.click(app.build_button)
        ui.wait(lambda: "exporting the graph" in app.notice.cget("text"), "the build's progress")
        assert "building it now" in app.notice.cget("text")  # the announcement stays on screen
        assert "disabled" in app.build_button.state() and "disabled" in app.open_button.state()
        ui.wait(lambda: app.agent is not None, "the chat after the build")
        assert built == ["fp32"] and not app.build.winfo_ismapped()
        ui.type(app.message, MESSAGE)
        ui.click(app.send_button)
        ui.wait(lambda: app.last is not None, "a reply")
        assert app.transcript_text().startswith(f"you: {MESSAGE}\npersona: ") and app.last.error is None
    finally:
        ui.close()
