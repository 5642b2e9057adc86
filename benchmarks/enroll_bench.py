"""Enrollment benchmark: wall time and peak RSS of `persona enroll` on the default
backbone for one held-out chitchat speaker (part B, ~300 replies), and the
held-out perplexity of that speaker's test replies with the backbone only, the
source prefix only, and the personal prefix.

    .venv/bin/python benchmarks/enroll_bench.py --replies 300 --max-minutes 5

The speaker's train conversations are written to a chats.json in a temporary
folder (public dataset text; deleted afterwards); `persona enroll` runs as a
subprocess so its peak RSS is measured alone. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def pick_speaker(target: int):
    """The part-B speaker whose train-reply count is closest to ``target``."""
    from persona_sdk.reply_examples import build_examples
    from persona_sdk.split import chitchat_split, select

    chats, split = chitchat_split()
    best = None
    for s in split.part("B"):
        n = len(build_examples(select(chats, s.train), s.speaker, min_replies=0, val_fraction=0.0).train)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (s, n)
    return chats, best[0], best[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replies", type=int, default=300, help="target number of the speaker's train replies")
    ap.add_argument("--max-minutes", type=float, default=5.0, help="enroll time budget (--max-minutes)")
    ap.add_argument("--epochs", type=int, default=None, help="persona enroll --epochs (default: the library's)")
    ap.add_argument("--source", default="default", help="default | none | FILE")
    ap.add_argument("--max-test", type=int, default=64, help="test replies scored for perplexity")
    args = ap.parse_args()

    from persona_sdk.reply_examples import build_examples
    from persona_sdk.split import select

    chats, speaker, n_train = pick_speaker(args.replies)
    work = Path(tempfile.mkdtemp(prefix="persona-bench-"))
    home = work / "home"
    env = {**os.environ, "PERSONA_HOME": str(home), "PERSONA_PASSPHRASE": "bench-passphrase"}
    # reuse the already materialised default backbone instead of rebuilding it under the temp home
    from persona_sdk import backbone as bb_mod

    backbone_dir = bb_mod.ensure_default()
    train_chats = select(chats, speaker.train)
    convs = [{"id": c.id, "messages": [{"sender": m.sender, "text": m.text} for m in c.messages]}
             for c in train_chats.conversations]
    chats_file = work / "chats.json"
    chats_file.write_text(json.dumps({"me": speaker.speaker, "conversations": convs}))
    cmd = [sys.executable, "-m", "persona_sdk", "enroll", str(chats_file), "--name", "bench",
           "--backbone", str(backbone_dir), "--source", args.source, "--max-minutes", str(args.max_minutes)]
    cmd += ["--epochs", str(args.epochs)] if args.epochs is not None else []
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    chats_file.unlink()
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-2000:])
        raise SystemExit(f"enroll failed with exit code {proc.returncode}")

    from persona_sdk import source as src
    from persona_sdk import trainer as tr
    from persona_sdk.vault import Vault

    os.environ["PERSONA_HOME"] = str(home)
    personal = Vault().load("bench", "bench-passphrase")
    test = build_examples(select(chats, speaker.test), speaker.speaker, min_replies=0, val_fraction=0.0).train
    test = test[: args.max_test]
    model = tr.load_backbone(backbone_dir)
    source = src.load_source() if args.source == "default" and src.shipped_available() else (
        None if args.source in ("none", "default") else src.load_source(args.source))
    ppl = {
        "backbone": math.exp(tr.reply_loss(model, test, None)),
        "source": math.exp(tr.reply_loss(model, test, source)) if source is not None else None,
        "personal": math.exp(tr.reply_loss(model, test, personal)),
    }
    result = {
        "speaker_train_replies": n_train,
        "test_replies": len(test),
        "enroll_wall_seconds": round(wall, 1),
        "enroll_peak_rss_mb": round(peak_rss_mb),
        "trainer": {k: personal.meta.get(k) for k in ("steps", "epochs", "stopped", "init_val_loss",
                                                      "best_val_loss", "wall_seconds", "bf16")},
        "perplexity": {k: (round(v, 2) if v else v) for k, v in ppl.items()},
        "max_minutes": args.max_minutes,
        "source": args.source,
        "cpu_threads": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
