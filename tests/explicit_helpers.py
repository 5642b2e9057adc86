"""Small Synthetic-Persona-Chat-shaped data, a tiny PAL adapter and a tiny PAA, made by the
tests themselves (tests never read ../shared)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from persona_sdk.explicit.formats import PAL_FORMAT

SENTENCES = [
    "I have a dog.", "I love pizza.", "I play the guitar.", "I am a nurse.", "I live in Paris.",
    "I bake cookies.", "I knit scarves.", "I hate mornings.", "I drive a truck.", "I read comics.",
    "I grow tomatoes.", "I surf on weekends.", "I collect stamps.", "I am a teacher.", "I like jazz.",
    "I run marathons.",
]
GENERIC = ["hi there!", "how are you?", "that is nice.", "what do you do for fun?", "you too!", "cool, tell me more."]
COLUMNS = ["user 1 personas", "user 2 personas", "Best Generated Conversation"]


def personas(n: int = 24, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.sample(SENTENCES, 4) for _ in range(n)]


def reply_about(sentence: str, rng: random.Random) -> str:
    """A reply restating a persona sentence's content (so a silver label exists)."""
    body = sentence.rstrip(".")
    return rng.choice([f"{body}, it is great.", f"well, {body[0].lower()}{body[1:]}!", f"yes! {body}."])


def write_spc_csv(path: Path, conversations: int = 60, turns: int = 8, seed: int = 0, n_personas: int = 24) -> Path:
    """An SPC-shaped CSV: each conversation pairs two personas (reused across conversations, as in SPC)."""
    rng = random.Random(seed)
    pool = personas(n_personas, seed=seed)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        for _ in range(conversations):
            a, b = rng.sample(pool, 2)
            lines = []
            for t in range(turns):
                who, persona = ("1", a) if t % 2 == 0 else ("2", b)
                text = reply_about(rng.choice(persona), rng) if rng.random() < 0.6 else rng.choice(GENERIC)
                lines.append(f"User {who}: {text}")
            w.writerow({COLUMNS[0]: "\n".join(a), COLUMNS[1]: "\n".join(b), COLUMNS[2]: "\n".join(lines)})
    return path


def random_adapter(backbone_dir: Path, out_dir: Path, seed: int = 0, scale: float = 0.05, rank: int = 4) -> Path:
    """A LoRA adapter with random, non-zero A and B (so merging changes the model), saved like a trained
    PAL adapter (PEFT layout, float16, PAL.json with the weights' sha256 and the backbone's fingerprint)."""
    import hashlib

    import torch

    from persona_sdk.training.backbone import load_backbone
    from persona_sdk.training.methods import lora

    bb = load_backbone(backbone_dir)
    model = lora.attach(bb, rank=rank, alpha=2 * rank, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    weights = {k: torch.randn(v.shape, generator=gen) * scale for k, v in lora.state(model).items()}
    lora.save(model, weights, out_dir)
    data = (Path(out_dir) / lora.ADAPTER_WEIGHTS).read_bytes()
    (Path(out_dir) / "PAL.json").write_text(json.dumps({
        "sha256": hashlib.sha256(data).hexdigest(), "backbone": bb.fingerprint, "method": "pal", "stage": "test",
        "format": PAL_FORMAT}))
    return Path(out_dir)


def random_paa(bb, folder: Path, seed: int = 0, masks: bool = True, decoder_context: bool = True) -> Path:
    """A PAA on the loaded backbone ``bb`` with random (not zero-init) fusions whose gates land on both sides
    of τ, saved like a trained one (``decoder_context=False``: trained on the paper's layout)."""
    import torch

    from persona_sdk.training.config import PAAConfig
    from persona_sdk.training.paa_model import PAAModel, PAAResult, fusion_state, save_paa

    model = PAAModel(bb, PAAConfig(paa_layers=2, masks=masks, decoder_context=decoder_context))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(p.shape[-1], 1) ** 0.5)
        for f in model.fusions:
            f.gate.weight.mul_(20.0)  # a sharp gate: some tokens clear τ, some do not, so the masks matter
    return save_paa(PAAResult(fusion_state(model), {}, model, bb), folder, {"command": "test"})
