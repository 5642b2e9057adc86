"""The pattern for a desktop app: never decode on the UI thread.

Tkinter shown here; the same applies to Qt (QThreadPool / signals) or any GUI
with an event loop. A worker thread streams the reply and hands each piece to
the UI thread with ``root.after``; the Stop button calls ``agent.cancel()``,
which ends the reply at the next token and leaves the agent usable.

    python examples/gui_threading.py
"""

import queue
import threading
import tkinter as tk

from persona_sdk import PersonaAgent


def main() -> None:
    agent = PersonaAgent()
    pieces: "queue.Queue[str | None]" = queue.Queue()
    root = tk.Tk()
    root.title("persona")
    log = tk.Text(root, height=20, width=80)
    entry = tk.Entry(root, width=70)
    log.pack()
    entry.pack(side=tk.LEFT)

    def worker(text: str) -> None:  # runs off the UI thread
        for piece in agent.stream(text):
            pieces.put(piece)
        pieces.put(None)

    def pump() -> None:  # runs on the UI thread
        try:
            while True:
                piece = pieces.get_nowait()
                log.insert(tk.END, "\n" if piece is None else piece)
        except queue.Empty:
            pass
        root.after(30, pump)

    def send(_event=None) -> None:
        text = entry.get().strip()
        if text:
            entry.delete(0, tk.END)
            log.insert(tk.END, f"you> {text}\npersona> ")
            threading.Thread(target=worker, args=(text,), daemon=True).start()

    entry.bind("<Return>", send)
    tk.Button(root, text="Stop", command=agent.cancel).pack(side=tk.LEFT)
    root.after(30, pump)
    root.protocol("WM_DELETE_WINDOW", lambda: (agent.close(), root.destroy()))
    root.mainloop()


if __name__ == "__main__":
    main()
