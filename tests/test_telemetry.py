"""No telemetry, no network: the switch in persona_sdk/__init__.py and a real chat.

onnxruntime's telemetry client reads ORT_DISABLE_TELEMETRY once, at import; without
it every session queues events in ~/.cache/Microsoft/DeveloperTools and a process
that lives ~11 s makes DNS queries for an events host. The end-to-end test runs
the real console script under a fresh HOME for 30 s and watches every socket it
opens (strace, which sees native code too, and a Python audit hook) and every
file it writes.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import persona_sdk

ROOT = Path(__file__).resolve().parents[1]
PERSONA = Path(sys.executable).with_name("persona")
ALIVE_SECONDS = 31.0  # onnxruntime's client first phones home ~11 s after start, then repeats
QUIET = tuple(persona_sdk.QUIET_ENV)


# onnxruntime's telemetry client stays silent when it sees one of these (a CI build): a user's machine has
# none of them, so the subprocesses below must not either, or the folder checks see nothing on CI.
CI_MARKERS = ("CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
              "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER")


def _clean_env(**extra: str) -> dict:
    """This process's environment as on a user's machine: without the switches (pytest imported persona_sdk,
    which set them) and without the CI markers that silence onnxruntime's client by themselves."""
    env = {k: v for k, v in os.environ.items()
           if k not in QUIET and k not in CI_MARKERS and k != "PERSONA_HOME" and not k.startswith("XDG_")}
    env.update(extra)
    return env


def test_import_forces_ort_telemetry_off_whatever_the_environment_says():
    code = "import os, persona_sdk; print(os.environ['ORT_DISABLE_TELEMETRY'], os.environ['HF_HUB_DISABLE_TELEMETRY'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=_clean_env(ORT_DISABLE_TELEMETRY="0", HF_HUB_DISABLE_TELEMETRY="0"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]


def test_every_persona_module_that_reaches_onnxruntime_sets_the_switch_first():
    """Importing onnxruntime through persona (runtime, exporters) finds the switch already set."""
    code = textwrap.dedent("""
        import builtins, os, sys
        seen = []
        real = builtins.__import__
        def spy(name, *a, **k):
            if name.split('.')[0] == 'onnxruntime' and 'onnxruntime' not in sys.modules:
                seen.append(os.environ.get('ORT_DISABLE_TELEMETRY'))
            return real(name, *a, **k)
        builtins.__import__ = spy
        from persona_sdk import runtime
        runtime.choose_providers('cpu')
        print(seen)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=_clean_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['1']"


def test_onnxruntime_imported_first_is_warned_about():
    code = "import warnings; warnings.simplefilter('always'); import onnxruntime, persona_sdk"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=_clean_env())
    assert out.returncode == 0, out.stderr
    assert "PersonaWarning" in out.stderr and "ORT_DISABLE_TELEMETRY=1" in out.stderr
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env=_clean_env(ORT_DISABLE_TELEMETRY="1"))
    assert "PersonaWarning" not in quiet.stderr  # already off in the environment: nothing to warn about


def test_benchmarks_import_persona_before_onnxruntime():
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(script.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        if "onnxruntime" not in imported:
            continue
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module]
        assert "persona_sdk" in names, f"{script.name} can import onnxruntime before persona_sdk"


# --- end to end ------------------------------------------------------------------
_SITECUSTOMIZE = '''
import os, socket, sys
_log = os.environ.get("PERSONA_TEST_AUDIT")
def _hook(event, args):
    if not _log:
        return
    bad = None
    if event == "socket.__new__" and args[1] != getattr(socket, "AF_UNIX", 1):
        bad = "socket family %r" % (args[1],)
    elif event == "socket.connect" and not isinstance(args[1], (str, bytes)):
        bad = "connect %r" % (args[1],)
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"):
        bad = "%s %r" % (event, args[0])
    if bad:
        with open(_log, "a") as fh:
            fh.write(bad + "\\n")
sys.addaudithook(_hook)
'''

_STUB_KEYRING = '''
from keyring.backend import KeyringBackend
class Stub(KeyringBackend):
    priority = 1
    def get_password(self, service, username): return None
    def set_password(self, service, username, password): pass
    def delete_password(self, service, username): pass
'''

_SETUP = '''
import json, sys
import numpy as np
from persona_sdk._crypto import KdfParams
from persona_sdk.prefix import Prefix
from persona_sdk.vault import KEYRING, Vault
m = json.load(open(sys.argv[1]))
kv = np.random.default_rng(0).normal(size=(m["layers"], 2, m["kv_heads"], 4, m["head_dim"])).astype(np.float32) * 0.1
vault = Vault(kdf=KdfParams.floor())
vault.save("alice", Prefix(kv, m["fingerprint"]), "pw")
vault.save("bob", Prefix(kv, m["fingerprint"]), KEYRING)
print(vault.root)
'''


def _strace() -> str | None:
    exe = shutil.which("strace") or ("/usr/bin/strace" if Path("/usr/bin/strace").exists() else None)
    if exe is None:
        return None
    probe = subprocess.run([exe, "-f", "-o", os.devnull, "true"], capture_output=True, timeout=30)
    return exe if probe.returncode == 0 else None  # e.g. no ptrace permission in a container


def _network_syscalls(trace: Path) -> list[str]:
    bad = []
    for line in trace.read_text(errors="replace").splitlines():
        if "socket(" in line and "resumed" not in line:
            family = line.split("socket(", 1)[1].split(",", 1)[0]
            if family not in ("AF_UNIX", "AF_LOCAL"):
                bad.append(line.strip())
        elif "connect(" in line and "sa_family=" in line and "sa_family=AF_UNIX" not in line:
            bad.append(line.strip())
    return bad


def test_a_long_chat_sends_nothing_and_writes_only_personas_folders(tiny_onnx, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    (site / "stub_keyring.py").write_text(_STUB_KEYRING)
    audit = tmp_path / "audit.log"
    env = _clean_env(HOME=str(home), PYTHONPATH=str(site), PERSONA_TEST_AUDIT=str(audit),
                     PERSONA_PASSPHRASE="pw")
    # profiles in the platform data folder of the fresh HOME (platformdirs, no PERSONA_HOME)
    setup = subprocess.run([sys.executable, "-c", _SETUP, str(tiny_onnx / "manifest.json")], capture_output=True,
                           text=True, timeout=120,
                           env={**env, "PYTHON_KEYRING_BACKEND": "stub_keyring.Stub", "PERSONA_TEST_AUDIT": ""})
    assert setup.returncode == 0, setup.stderr
    assert Path(setup.stdout.strip()).is_relative_to(home)

    strace = _strace()
    if strace is None:
        warnings.warn("strace is not usable here: sockets opened by native code (onnxruntime) are only "
                      "seen through the files they leave; .ci/run installs strace")

    def start(name: str, args: list[str], **kw) -> subprocess.Popen:
        cmd = [str(PERSONA), *args]
        if strace:
            cmd = [strace, "-f", "-qq", "-e", "trace=socket,connect", "-o", str(tmp_path / f"{name}.strace")] + cmd
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

    t0 = time.monotonic()
    chat = start("chat", ["chat", "--name", "alice", "--backbone", str(tiny_onnx), "--max-new-tokens", "4",
                          "--seed", "0"], stdin=subprocess.PIPE)
    chat.stdin.write("hi there\n")
    chat.stdin.flush()
    # meanwhile: a keyring profile (the keyring library on the chat path), list and info
    others = [start("keyring", ["chat", "--name", "bob", "--backbone", str(tiny_onnx), "--message", "hi"]),
              start("list", ["list"])]
    done = [p.communicate(timeout=120) + (p.returncode,) for p in others]
    time.sleep(max(0.0, ALIVE_SECONDS - (time.monotonic() - t0)))
    assert chat.poll() is None, "the chat ended early: " + chat.stderr.read()
    out, err = chat.communicate("/exit\n", timeout=120)
    assert chat.returncode == 0, err
    assert time.monotonic() - t0 >= ALIVE_SECONDS
    assert "alice> " in out  # a real reply was generated
    (_, keyring_err, keyring_rc), (list_out, list_err, list_rc) = done
    assert keyring_rc == 1 and "keyring" in keyring_err and "Traceback" not in keyring_err, keyring_err
    assert list_rc == 0 and list_out.startswith("alice\t"), list_err

    assert not (home / ".cache" / "Microsoft").exists()
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    foreign = [p for p in written if not p.startswith((".local/share/persona/", ".cache/persona/"))]
    assert foreign == [], foreign
    assert not audit.exists() or audit.read_text() == "", audit.read_text()
    if strace:
        for name in ("chat", "keyring", "list"):
            trace = tmp_path / f"{name}.strace"
            assert trace.exists()
            assert _network_syscalls(trace) == [], (name, _network_syscalls(trace)[:5])


def test_the_folder_check_would_see_onnxruntime_telemetry(tiny_onnx, tmp_path):
    """Canary for the guard above: without the switch, this onnxruntime leaves its folder at once."""
    import onnxruntime

    libs = list(Path(onnxruntime.__file__).parent.glob("capi/libonnxruntime*.so*"))
    has_client = any(b"ORT_DISABLE_TELEMETRY" in lib.read_bytes() for lib in libs)
    code = ("import sys, onnxruntime as ort\n"
            "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
            "import persona_sdk\n")
    for switched in (False, True):
        home = tmp_path / f"home-{switched}"
        home.mkdir()
        env = _clean_env(HOME=str(home), **({"ORT_DISABLE_TELEMETRY": "1"} if switched else {}))
        out = subprocess.run([sys.executable, "-c", code, str(tiny_onnx / "model.onnx")], capture_output=True,
                             text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        appeared = (home / ".cache" / "Microsoft").exists()
        assert appeared == (has_client and not switched), (switched, has_client)
        assert ("PersonaWarning" in out.stderr) == (not switched)
