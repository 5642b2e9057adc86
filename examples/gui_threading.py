"""The pattern for a desktop app: never decode on the UI thread.

Tkinter shown here; the same applies to Qt (QThreadPool / signals) or any GUI
with an event loop. :class:`persona_sdk.ReplyWorker` streams the reply in a
worker thread and queues each piece; the UI thread drains the queue from its
event loop (``root.after``) and never waits on the model. The Stop button calls
``worker.stop()`` (``agent.cancel()``), which ends the reply at the next token
and leaves the agent usable. A whole app built this way (profiles, unlock,
streaming, Stop, New chat, status line) is ``examples/desktop/app.py``.

    python examples/gui_threading.py                    # a Tk window
    python examples/gui_threading.py --headless         # the same worker driven from a plain loop (no display)
    python examples/gui_threading.py --backbone PATH    # another backbone folder, or an ONNX export folder

The first run builds the backbone's ONNX export (announced on stderr; see quickstart.py).
"""

import argparse
import sys
import time

from persona_sdk import GenerationConfig, PersonaAgent, ReplyDone, ReplyWorker


def run_tk(agent: PersonaAgent) -> None:
    import tkinter as tk

    worker = ReplyWorker(agent)
    root = tk.Tk()
    root.title("persona")
    log = tk.Text(root, height=20, width=80)
    entry = tk.Entry(root, width=70)
    log.pack()
    entry.pack(side=tk.LEFT)

    def pump() -> None:  # runs on the UI thread
        for piece in worker.drain():
            log.insert(tk.END, "\n" if isinstance(piece, ReplyDone) else piece)
        root.after(30, pump)

    def send(_event=None) -> None:
        text = entry.get().strip()
        if text and not worker.busy:  # one reply at a time
            entry.delete(0, tk.END)
            log.insert(tk.END, f"you> {text}\npersona> ")
            worker.send(text)

    entry.bind("<Return>", send)
    tk.Button(root, text="Stop", command=worker.stop).pack(side=tk.LEFT)
    root.after(30, pump)
    root.protocol("WM_DELETE_WINDOW", lambda: (worker.stop(), root.destroy()))
    root.mainloop()
    agent.close()  # after the window is gone: waits for the stopped reply's last token


def run_headless(agent: PersonaAgent, messages: list, stop_after: int | None) -> None:
    """The same worker, with a plain polling loop standing in for the GUI's event loop.

    ``stop_after``: press Stop once that many pieces of a reply have arrived.
    """
    worker = ReplyWorker(agent)
    for text in messages:
        print(f"you> {text}")
        print("persona> ", end="", flush=True)
        worker.send(text)
        received, stopped, done = 0, False, False
        while not done:  # one "event loop" tick every 30 ms: never blocks on the model
            for piece in worker.drain():
                if isinstance(piece, ReplyDone):
                    done = True
                    break
                print(piece, end="", flush=True)
                received += 1
                if stop_after is not None and received >= stop_after and not stopped:
                    worker.stop()
                    stopped = True
            time.sleep(0.03)
        print(" [stopped]" if stopped else "")
    print(f"({len(agent.history)} turns so far)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Decode in a worker thread; the UI thread stays free.")
    parser.add_argument("--backbone", help="Hugging Face causal-LM folder or ONNX export folder "
                                           "(default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--headless", action="store_true", help="no window: drive the worker from a plain loop")
    parser.add_argument("--message", action="append", help="headless: a message to send (repeatable)")
    parser.add_argument("--stop-after", type=int, help="headless: press Stop after this many pieces of each reply")
    parser.add_argument("--seed", type=int, help="sampling seed, for reproducible replies")
    args = parser.parse_args(argv)

    agent = PersonaAgent(backbone=args.backbone, generation=GenerationConfig(seed=args.seed),
                         build=True, progress=lambda m: print(m, file=sys.stderr))
    if not args.headless:
        run_tk(agent)
        return
    with agent:
        run_headless(agent, args.message or ["hi, what do you do on weekends?", "and during the week?"],
                     args.stop_after)


if __name__ == "__main__":
    main()
