"""Peak RSS and steps of the real `persona enroll` process on one part-B chitchat speaker, once per
environment variant, side by side (e.g. oneDNN's primitive cache size).

    .venv/bin/python benchmarks/enroll_memory.py --replies 596 --max-minutes 5 \
        --variant ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024 --variant ONEDNN_PRIMITIVE_CACHE_CAPACITY=16

Each variant enrolls the same speaker (the one whose train-reply count is closest to
``--replies``) in its own process with the library defaults; its peak RSS comes from
``os.wait4``. The speaker's train conversations (public dataset text) are written to a temporary
folder and deleted afterwards. Prints one JSON line per variant (numbers only). Run it on a quiet
machine: steps within the time budget depend on the CPU being free.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replies", type=int, default=596, help="target number of the speaker's train replies")
    ap.add_argument("--max-minutes", type=float, default=5.0, help="persona enroll --max-minutes")
    ap.add_argument("--variant", action="append", default=None,
                    help="KEY=VALUE[,KEY=VALUE...] added to the environment of one run (repeat; default: one run "
                         "as the environment is)")
    args = ap.parse_args()

    from enroll_bench import pick_speaker

    from persona_sdk import backbone as bb_mod
    from persona_sdk.split import select
    from persona_sdk.vault import Vault

    variants = [dict(kv.split("=", 1) for kv in v.split(",") if kv) for v in (args.variant or [""])]
    chats, speaker, n_train = pick_speaker(args.replies)
    work = Path(tempfile.mkdtemp(prefix="persona-enroll-memory-"))
    try:
        convs = [{"id": c.id, "messages": [{"sender": m.sender, "text": m.text} for m in c.messages]}
                 for c in select(chats, speaker.train).conversations]
        chats_file = work / "chats.json"
        chats_file.write_text(json.dumps({"me": speaker.speaker, "conversations": convs}))
        backbone_dir = bb_mod.ensure_default()
        for i, extra in enumerate(variants):
            home = work / f"home{i}"
            env = {**os.environ, "PERSONA_HOME": str(home), "PERSONA_PASSPHRASE": "bench-passphrase", **extra}
            cmd = [sys.executable, "-m", "persona_sdk", "enroll", str(chats_file), "--name", "bench",
                   "--backbone", str(backbone_dir), "--max-minutes", str(args.max_minutes)]
            start = time.monotonic()
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - start
            row = {"train_replies": n_train, "env": extra, "exit_status": status, "wall_seconds": round(wall, 1),
                   "peak_rss_mib": round(usage.ru_maxrss / 1024)}
            if status == 0:
                os.environ["PERSONA_HOME"] = str(home)
                meta = Vault().load("bench", "bench-passphrase").meta
                row.update({k: meta.get(k) for k in ("steps", "stopped", "init_val_loss", "best_val_loss")})
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
