"""cli/_common.py: every usage error of the real `persona` console script is click's
short message and exit code 2 -- never a traceback; warnings are one plain line.

These run the installed entry point in a subprocess: the in-process runner hides
which exception classes the installed typer really raises.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

PERSONA = Path(sys.executable).with_name("persona")


def persona(*args: str, **kw) -> subprocess.CompletedProcess:
    assert PERSONA.exists(), f"the console script is not installed next to {sys.executable}"
    return subprocess.run([str(PERSONA), *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, **kw)


@pytest.mark.parametrize("args, message", [
    (["chat", "--bogus"], "Error: No such option: --bogus"),
    (["inspect"], "Error: Missing argument"),
    (["chat", "--temperature", "abc"], "Error: Invalid value for '--temperature'"),
    (["frobnicate"], "Error: No such command 'frobnicate'."),
    (["delete"], "Error: Missing argument"),
    (["enroll", "chats.json", "--epochs", "many"], "Error: Invalid value for '--epochs'"),
])
def test_usage_errors_exit_2_with_clicks_message(args, message):
    out = persona(*args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(message), out.stderr
    assert out.stderr.strip().splitlines()[0].startswith("Usage: persona")  # click's usage line, then the error


def test_no_arguments_shows_help_without_traceback():
    out = persona()
    assert "Traceback" not in out.stdout + out.stderr
    assert "Commands" in out.stdout + out.stderr and out.returncode in (0, 2)


def _save_profile(home: Path) -> None:
    code = ("import numpy as np\n"
            "from persona_sdk._crypto import KdfParams\n"
            "from persona_sdk.prefix import Prefix\n"
            "from persona_sdk.vault import Vault\n"
            "Vault(kdf=KdfParams.floor()).save('alice', Prefix(np.zeros((2, 2, 2, 4, 16), np.float32), 'ab' * 32), 'pw')\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PERSONA_HOME": str(home)}, timeout=60)


def _in_a_terminal(args: list[str], env: dict, answer: bytes, prompt: bytes, timeout: float = 120.0) -> tuple[str, int]:
    """Run the console script on a pseudo-terminal, answer one prompt, return (output, exit code).

    ``timeout`` only guards against a hang (a busy machine may take long to start it); a run that
    ends returns at once."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.execve(str(PERSONA), [str(PERSONA), *args], env)
        finally:
            os._exit(127)
    out, sent, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if not sent and prompt in out:
                os.write(fd, answer)
                sent = True
    finally:
        os.close(fd)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # pragma: no cover
        status = 1 << 8
    return out.decode(errors="replace"), os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_answering_no_to_delete_aborts_cleanly(tmp_path):
    home = tmp_path / "home"
    _save_profile(home)
    env = {**os.environ, "PERSONA_HOME": str(home)}
    text, code = _in_a_terminal(["delete", "alice"], env, b"n\n", b"[y/N]")
    assert code == 1, text
    assert "Aborted." in text and "Traceback" not in text
    assert (home / "data" / "alice.persona").exists()  # nothing deleted


def test_warnings_are_one_plain_line(tmp_path):
    home = tmp_path / "home"
    _save_profile(home)
    os.chmod(home / "data", 0o755)  # too open: the vault fixes it and warns
    out = persona("list", env={**os.environ, "PERSONA_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert lines == ["Warning: vault folder " + str(home / "data") + " was accessible to other users; "
                     "set it to 0700"], out.stderr
    assert "vault.py" not in out.stderr and "warnings.warn" not in out.stderr
    assert oct(os.stat(home / "data").st_mode & 0o777) == "0o700"


def test_typer_exit_codes_are_passed_through(monkeypatch, capsys):
    """A typer.Exit(n) raised inside a command (e.g. Ctrl-C -> 130) is the exit code, not 0."""
    import typer

    from persona_sdk.cli._common import run_cli

    app = typer.Typer()

    @app.command()
    def boom() -> None:
        raise KeyboardInterrupt

    @app.command()
    def other() -> None:
        raise typer.Exit(3)

    assert run_cli(app, ["boom"]) == 130
    assert "Interrupted." in capsys.readouterr().err
    assert run_cli(app, ["other"]) == 3


def test_interrupt_flag_sets_the_flag_and_raises_then_restores_the_handler():
    import signal

    from persona_sdk.cli._common import interrupt_flag

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with interrupt_flag() as interrupted:
            assert not interrupted()
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here and raises
    assert interrupted()
    assert signal.getsignal(signal.SIGINT) is before


def test_interrupt_flag_survives_a_keyboard_interrupt_that_python_drops():
    """Ctrl-C landing in a finalizer: Python prints "Exception ignored" and goes on; the flag still says stop."""
    import gc
    import signal

    from persona_sdk.cli._common import interrupt_flag

    class Finalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs inside __del__: its KeyboardInterrupt is dropped

    with interrupt_flag() as interrupted:
        Finalizer()  # collected at once
        gc.collect()
        assert interrupted()  # no KeyboardInterrupt reached here, yet the loop would stop
