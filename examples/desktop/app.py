"""persona desktop: chat with your persona (or the bare backbone) in a window. Tkinter (stdlib) only.

    python examples/desktop/app.py                        # the embedded default backbone
    python examples/desktop/app.py --profile me           # preselect an enrolled profile
    python examples/desktop/app.py --backbone PATH        # a Hugging Face causal-LM folder or an ONNX export folder

Pick a profile from the vault (``persona list``) or the bare backbone, unlock it (a
hidden passphrase entry; profiles whose key lives in the OS keyring open without one),
and chat: the reply streams in token by token, Stop ends it, New chat forgets the
conversation, and the status line shows the ONNX variant, the device and the last
reply's speed. Keys: Return sends, Escape stops, Ctrl+N starts a new chat, Ctrl+Q quits.

The UI thread never waits on the model: opening (and, when asked, building) the
backbone, unlocking the profile and decoding all run in worker threads that post
their results to queues the UI drains every 30 ms (``persona_sdk.ReplyWorker`` for
replies). Building the backbone's ONNX export is never implicit: when there is none
yet, the window says so, names the command, and builds it only when you press Build,
showing its progress.

Privacy: nothing is written to disk: not the conversation, not the passphrase (read
from the hidden entry once, then cleared), not the persona (decrypted into memory).
Closing the window drops the conversation.

For tests and automation the Tk widget paths are stable: ``.open.profile``,
``.open.passphrase``, ``.open.open``, ``.build.notice``, ``.build.button``,
``.chat.transcript``, ``.chat.message``, ``.chat.send``, ``.chat.stop``, ``.chat.new``,
``.status``; the Tk application name is ``persona`` (tests/test_desktop.py reads the
transcript through Tk's ``send``, which Tk enables only when the X server restricts
access; a client allowed on your display can read the screen anyway).
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
from typing import Any

BARE = "(bare backbone)"
POLL_MS = 30
APP_NAME = "persona"
# control characters a model may emit are shown as U+FFFD (Tk would cut a string at NUL)
_CONTROLS = {c: "\ufffd" for c in [*range(0, 9), *range(11, 32), 127]}


def displayable(text: str) -> str:
    """``text`` as the transcript shows it: tabs and newlines kept, other control characters as U+FFFD."""
    return text.translate(_CONTROLS)


class DesktopApp:
    """The window's logic; every method runs on the Tk (UI) thread except ``_open_worker``."""

    def __init__(self, root: Any, *, backbone: str | None = None, variant: str | None = None,
                 device: str = "auto", generation: Any = None, profile: str | None = None) -> None:
        from persona_sdk import GenerationConfig

        self.root = root
        self.backbone, self.variant, self.device = backbone, variant, device
        self.generation = generation or GenerationConfig()
        self.engine = None  # opened once, shared by every profile
        self.agent = None
        self.worker = None
        self.who: str | None = None  # the profile chatting, None for the bare backbone
        self.last = None  # the last reply's ReplyDone
        self._events: "queue.Queue[tuple]" = queue.Queue()  # from the opening thread
        self._opening = False
        self._pending_reset = False
        self._progress: list[str] = []
        self._profiles: dict[str, tuple[str | None, str | None]] = {}
        self._build_ui()
        self.refresh_profiles(select=profile)
        self.root.after(POLL_MS, self._poll)

    # --- layout ---------------------------------------------------------------------------
    def _build_ui(self) -> None:
        import tkinter as tk
        from tkinter import font as tkfont
        from tkinter import ttk

        root = self.root
        style = ttk.Style(root)
        if "clam" in style.theme_names():  # the X11 default theme looks dated
            style.theme_use("clam")
        root.title("persona")
        root.geometry("760x520")
        root.minsize(520, 360)

        top = ttk.Frame(root, name="open", padding=(8, 8, 8, 4))
        top.pack(side="top", fill="x")
        ttk.Label(top, text="Profile").pack(side="left")
        self.profile = ttk.Combobox(top, name="profile", state="readonly", width=26)
        self.profile.pack(side="left", padx=(6, 10))
        self.profile.bind("<<ComboboxSelected>>", lambda _e: self._on_profile())
        self.key = ttk.Label(top, name="key", anchor="e")
        self.key.pack(side="left", padx=(0, 6))
        self.passphrase = ttk.Entry(top, name="passphrase", show="\u2022", width=22)
        self.passphrase.bind("<Return>", lambda _e: self.open())
        self.open_button = ttk.Button(top, name="open", text="Open", command=self.open)
        self.open_button.pack(side="left")

        self.build = ttk.Frame(root, name="build", padding=(8, 4))  # shown only when an export is needed
        self.notice = ttk.Label(self.build, name="notice", wraplength=730, justify="left")
        self.notice.pack(side="top", fill="x")
        row = ttk.Frame(self.build)
        row.pack(side="top", fill="x", pady=(4, 0))
        self.build_button = ttk.Button(row, name="button", text="Build", command=lambda: self.open(build=True))
        self.build_button.pack(side="left")
        self.progress = ttk.Progressbar(row, name="progress", mode="indeterminate", length=300)
        self.progress.pack(side="left", padx=8)

        self.status = ttk.Label(root, name="status", anchor="w", relief="sunken", padding=(6, 2))
        self.status.pack(side="bottom", fill="x")

        chat = ttk.Frame(root, name="chat", padding=(8, 4, 8, 8))
        chat.pack(side="top", fill="both", expand=True)
        chat.columnconfigure(0, weight=1)
        chat.rowconfigure(0, weight=1)
        self.transcript = tk.Text(chat, name="transcript", wrap="word", state="disabled", height=16,
                                  padx=8, pady=6, relief="flat", borderwidth=1, highlightthickness=1,
                                  font="TkDefaultFont", spacing3=2)
        bold = tkfont.nametofont("TkDefaultFont").copy()
        bold.configure(weight="bold")
        self.transcript.tag_configure("who", font=bold)
        self.transcript.tag_configure("note", foreground="#777777")
        self.transcript.grid(row=0, column=0, columnspan=4, sticky="nsew")
        scroll = ttk.Scrollbar(chat, orient="vertical", command=self.transcript.yview)
        scroll.grid(row=0, column=4, sticky="ns")
        self.transcript.configure(yscrollcommand=scroll.set)
        self.message = ttk.Entry(chat, name="message")
        self.message.grid(row=1, column=0, sticky="ew", pady=(6, 0))
        self.message.bind("<Return>", lambda _e: self.send())
        self.send_button = ttk.Button(chat, name="send", text="Send", command=self.send)
        self.send_button.grid(row=1, column=1, padx=(6, 0), pady=(6, 0))
        self.stop_button = ttk.Button(chat, name="stop", text="Stop", command=self.stop)
        self.stop_button.grid(row=1, column=2, padx=(6, 0), pady=(6, 0))
        self.new_button = ttk.Button(chat, name="new", text="New chat", command=self.new_chat)
        self.new_button.grid(row=1, column=3, padx=(6, 0), pady=(6, 0))

        root.bind_all("<Escape>", lambda _e: self.stop())
        root.bind_all("<Control-n>", lambda _e: self.new_chat())
        root.bind_all("<Control-q>", lambda _e: self.quit())
        root.protocol("WM_DELETE_WINDOW", self.quit)
        self._set_chat_state()
        self._say("Pick a profile (or the bare backbone) and press Open.")

    # --- profiles and opening ---------------------------------------------------------------
    def refresh_profiles(self, select: str | None = None) -> None:
        """Fill the profile list from the vault (header facts only: nothing is decrypted)."""
        from persona_sdk import Vault
        from persona_sdk.errors import PersonaError

        self._profiles = {BARE: (None, None)}
        try:
            vault = Vault()
            for name in vault.list():
                try:
                    mode = vault.info(name).mode
                except PersonaError:
                    continue  # an unreadable file is not offered (persona info NAME says why)
                self._profiles[f"{name}  ({'OS keyring' if mode == 'keyring' else 'passphrase'})"] = (name, mode)
        except PersonaError as exc:
            self._say(f"Cannot read the profiles: {exc}")
        self.profile["values"] = list(self._profiles)
        chosen = next((label for label, (name, _) in self._profiles.items() if name == select), BARE)
        self.profile.set(chosen)
        self._on_profile()
        if select is not None and self._profiles[chosen][0] != select:
            self._say(f"No profile named {select!r}; pick one from the list.")

    def _on_profile(self) -> None:
        name, mode = self._profiles.get(self.profile.get(), (None, None))
        self.passphrase.delete(0, "end")
        if mode == "passphrase":
            self.key.configure(text="Passphrase")
            self.passphrase.state(["!disabled"])
            if not self.passphrase.winfo_manager():
                self.passphrase.pack(side="left", padx=(6, 10), before=self.open_button)
            self.passphrase.focus_set()
        else:  # nothing to type: the entry is hidden (and disabled)
            self.key.configure(text="key in the OS keyring" if mode == "keyring" else "no key needed")
            self.passphrase.state(["disabled"])
            self.passphrase.pack_forget()
            self.open_button.focus_set()

    def open(self, build: bool = False) -> None:
        """Open the backbone (building its export only when ``build``) and unlock the chosen profile."""
        if self._opening:
            return
        if self.worker is not None and self.worker.busy:
            self._say("A reply is being written: stop it before opening another profile.")
            return
        name, mode = self._profiles.get(self.profile.get(), (None, None))
        passphrase = None
        if mode == "passphrase":
            passphrase = self.passphrase.get()
            if not passphrase:
                self._say(f"Enter the passphrase of {name!r}.")
                self.passphrase.focus_set()
                return
        self._opening = True
        self._set_open_state(False)
        self._set_chat_state()
        if build:
            self._progress = []
            self.build_button.state(["disabled"])
            self.progress.start(80)
        self._say(f"Unlocking {name!r}..." if name else "Opening the backbone...")
        threading.Thread(target=self._open_worker, args=(name, passphrase, build), name="persona-open",
                         daemon=True).start()

    def _open_worker(self, name: str | None, passphrase: str | None, build: bool) -> None:  # a worker thread
        from persona_sdk import PersonaAgent, Vault
        from persona_sdk.config import RuntimeConfig
        from persona_sdk.engines import can_build, open_engine
        from persona_sdk.errors import ExportNotReadyError, PersonaError

        post = self._events.put
        engine = self.engine
        try:
            if engine is None:
                engine = open_engine(self.backbone, RuntimeConfig(device=self.device, variant=self.variant),
                                     progress=lambda message: post(("progress", message)), build=build)
            prefix = Vault().load(name, passphrase, fingerprint=engine.fingerprint) if name else None
            post(("opened", engine, PersonaAgent(prefix, engine=engine, generation=self.generation), name))
        except ExportNotReadyError as exc:
            post(("needs-build", str(exc), can_build()))
        except PersonaError as exc:
            post(("failed", str(exc), engine))
        except Exception as exc:  # never leave the window waiting
            post(("failed", f"opening failed ({type(exc).__name__})", engine))

    # --- the chat -------------------------------------------------------------------------------
    def send(self) -> None:
        if self.worker is None or self.worker.busy:
            return
        text = self.message.get().strip()
        if not text:
            return
        self.message.delete(0, "end")
        self._append("you: ", "who")
        self._append(text + "\n")
        self._append(f"{self.who or 'persona'}: ", "who")
        self.worker.send(text)
        self._set_chat_state()

    def stop(self) -> None:
        if self.worker is not None and self.worker.busy:
            self.worker.stop()

    def new_chat(self) -> None:
        """Forget the conversation; while a reply is being written, stop it first."""
        if self.agent is None:
            return
        if self.worker is not None and self.worker.busy:
            self._pending_reset = True
            self.worker.stop()
            return
        self.agent.reset()
        self._clear_transcript()
        self._pending_reset = False
        self._say_status()
        self.message.focus_set()

    def quit(self) -> None:
        self.stop()
        self.root.destroy()

    def close(self) -> None:
        """After the window is gone: end the reply and drop the agent (the persona leaves memory)."""
        if self.worker is not None:
            self.worker.stop()
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        self.engine = None

    # --- the UI thread's loop ---------------------------------------------------------------------
    def _poll(self) -> None:
        from persona_sdk import ReplyDone

        try:
            while True:
                self._handle(self._events.get_nowait())
        except queue.Empty:
            pass
        if self.worker is not None:
            for item in self.worker.drain():
                if isinstance(item, ReplyDone):
                    self._finish(item)
                else:
                    self._append(item)
        self.root.after(POLL_MS, self._poll)

    def _handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "progress":
            self._progress.append(event[1])
            shown = self._progress[:1] + self._progress[-1:] if len(self._progress) > 1 else self._progress
            self._show_build(True, "\n".join(shown))
            return
        self._opening = False
        self.progress.stop()
        self.build_button.state(["!disabled"])
        self._set_open_state(True)
        if kind == "opened":
            _, engine, agent, name = event
            self.passphrase.delete(0, "end")
            self.engine = engine
            if self.agent is not None:
                self.agent.close()
            from persona_sdk import ReplyWorker

            self.agent, self.worker, self.who, self.last = agent, ReplyWorker(agent), name, None
            self._clear_transcript()
            self._show_build(False)
            self._say_status()
            self.message.focus_set()
        elif kind == "needs-build":
            _, message, able = event
            more = ("\nPress Build to build it now (once; it can take a few minutes on a big backbone). "
                    "The passphrase you typed is used after the build." if able else "")
            self._show_build(True, message + more, button=able)
            self._say("The backbone needs its ONNX export before the first chat.")
        else:  # failed
            _, message, engine = event
            self.passphrase.delete(0, "end")
            self.engine = engine if engine is not None else self.engine
            if self._progress:
                self._show_build(True, "\n".join(self._progress[-1:]), button=False)
            self._say(f"Error: {message}")
        self._set_chat_state()

    def _finish(self, done: Any) -> None:
        if done.error:
            self._append(f"[{done.error}]", "note")
        elif done.stopped:
            self._append(" [stopped]", "note")
        self._append("\n\n")
        self.last = done
        if self._pending_reset:
            self.new_chat()
        self._set_chat_state()
        self._say_status()

    # --- helpers ------------------------------------------------------------------------------------
    def _append(self, text: str, tag: str | None = None) -> None:
        self.transcript.configure(state="normal")
        self.transcript.insert("end", displayable(text), (tag,) if tag else ())
        self.transcript.configure(state="disabled")
        self.transcript.see("end")

    def _clear_transcript(self) -> None:
        self.transcript.configure(state="normal")
        self.transcript.delete("1.0", "end")
        self.transcript.configure(state="disabled")

    def transcript_text(self) -> str:
        """What the transcript shows (for embedding and tests; never written anywhere)."""
        return self.transcript.get("1.0", "end-1c")

    def _show_build(self, show: bool, text: str = "", button: bool | None = None) -> None:
        if show:
            self.notice.configure(text=text)
            if button is not None:
                if button:
                    self.build_button.pack(side="left")
                else:
                    self.build_button.pack_forget()
            if not self.build.winfo_ismapped():
                self.build.pack(side="top", fill="x", after=self.root.nametowidget("open"))
        else:
            self.build.pack_forget()

    def _set_open_state(self, enabled: bool) -> None:
        flag = ["!disabled"] if enabled else ["disabled"]
        self.profile.state(["!disabled", "readonly"] if enabled else ["disabled"])
        self.open_button.state(flag)
        if not enabled or self._profiles.get(self.profile.get(), (None, None))[1] == "passphrase":
            self.passphrase.state(flag)

    def _set_chat_state(self) -> None:
        ready = self.worker is not None and not self._opening
        busy = ready and self.worker.busy
        self.send_button.state(["!disabled"] if ready and not busy else ["disabled"])
        self.stop_button.state(["!disabled"] if busy else ["disabled"])
        self.new_button.state(["!disabled"] if ready else ["disabled"])
        self.message.state(["!disabled"] if ready else ["disabled"])

    def _say(self, text: str) -> None:
        self.status.configure(text=text)

    def status_text(self) -> str:
        return str(self.status.cget("text"))

    def _say_status(self) -> None:
        engine = self.engine
        speed = f"{self.last.tokens_per_second:.1f} tok/s" if self.last and self.last.tokens else "- tok/s"
        who = f"profile {self.who}" if self.who else "bare backbone"
        self._say(f"{engine.manifest.get('variant', '?')} \u00b7 {engine.device} \u00b7 {speed} \u00b7 {who}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chat with your persona in a window (everything stays on this machine).")
    parser.add_argument("--backbone", help="Hugging Face causal-LM folder or ONNX export folder "
                                           "(default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--profile", help="preselect this profile (see `persona list`)")
    parser.add_argument("--variant", help="ONNX variant: fp32, int8, int4 or fp16 (default: int8 on CPU, fp16 on CUDA)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="most tokens in one reply")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy")
    parser.add_argument("--seed", type=int, help="sampling seed, for reproducible replies")
    args = parser.parse_args(argv)

    import tkinter as tk

    from persona_sdk import GenerationConfig
    from persona_sdk.errors import PersonaError

    try:
        generation = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                      seed=args.seed)
    except PersonaError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    try:
        root = tk.Tk(className=APP_NAME)
    except tk.TclError:
        print("Error: no display to open a window on (is DISPLAY set?)", file=sys.stderr)
        return 1
    app = DesktopApp(root, backbone=args.backbone, variant=args.variant, device=args.device,
                     generation=generation, profile=args.profile)
    try:
        root.mainloop()
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
