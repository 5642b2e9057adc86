"""The contrastive term of personal training (persona_sdk.training.contrast) on the tiny backbone:
its value and gradient at known points, the order it draws the background in, and what it does
to a trained block -- it keeps the block from getting better on other people's replies while the
owner's own habit is still learnt."""

from __future__ import annotations

import numpy as np
import pytest

from persona_sdk import trainer as tr
from persona_sdk.errors import ConfigError
from persona_sdk.prefix import Prefix
from persona_sdk.training.config import DPConfig
from persona_sdk.training.contrast import Contrast
from persona_sdk.training.data import encode, example_losses

from enroll_helpers import make_sharp, quirky_speaker

FAST = dict(batch_size=8, min_examples=8, context_budget=48, reply_budget=16)


@pytest.fixture(scope="module")
def sharp(tiny_backbone, tmp_path_factory):
    import torch

    torch.set_num_threads(2)
    return tr.load_backbone(make_sharp(tiny_backbone, tmp_path_factory.mktemp("sharp") / "tiny-sharp"))


def _block(bb, seed=7):
    import torch

    return torch.nn.Parameter(torch.from_numpy(tr.random_prefix(bb, 16, seed=seed)))


def test_the_term_is_zero_at_its_start_and_a_margin_pushes_the_background_loss_up(sharp):
    import torch

    pool = encode(sharp.fmt, quirky_speaker(8, quirk="hmm"), 48, 16)
    kv = _block(sharp)
    inputs = lambda: {"kv": kv}  # noqa: E731
    start = Contrast.prepare(sharp, pool, {"kv": kv.detach()}, weight=1.0, margin=0.0, batch_size=8,
                             rng=np.random.default_rng(0))
    with torch.no_grad():
        np.testing.assert_allclose(start.ref, example_losses(sharp, pool, kv=kv).numpy(), rtol=1e-5)
    # at the reference with no margin the block is nowhere better: no value, no gradient
    assert start.backward(sharp, inputs) == 0.0 and kv.grad is None
    # a margin of 0.2 nats: the value is weight * margin, and a step along the gradient raises the loss
    pushed = Contrast(pool, start.ref, weight=0.5, margin=0.2, batch_size=8, rng=np.random.default_rng(0))
    assert pushed.backward(sharp, inputs) == pytest.approx(0.5 * 0.2, rel=1e-4)
    assert kv.grad is not None and float(kv.grad.norm()) > 0
    with torch.no_grad():
        before = float(example_losses(sharp, pool, kv=kv).mean())
        kv -= 0.05 * kv.grad / kv.grad.norm()
        assert float(example_losses(sharp, pool, kv=kv).mean()) > before


def test_micro_batches_give_the_one_pass_value_and_gradient(sharp):
    pool = encode(sharp.fmt, quirky_speaker(8, quirk="hmm"), 48, 16)
    ref = np.full(len(pool), 50.0)  # every example far below its reference + margin: all active
    grads, values = [], []
    for max_tokens in (0, 40):
        kv = _block(sharp)
        term = Contrast(pool, ref, weight=1.0, margin=0.0, batch_size=8, rng=np.random.default_rng(0))
        values.append(term.backward(sharp, lambda: {"kv": kv}, max_tokens=max_tokens))
        grads.append(kv.grad.numpy().copy())
    assert values[0] == pytest.approx(values[1], rel=1e-5)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_draw_passes_over_the_pool_before_repeating():
    term = Contrast([object()] * 10, np.zeros(10), weight=1.0, margin=0.0, batch_size=4,
                    rng=np.random.default_rng(3))
    drawn = [i for _ in range(5) for i in term.draw()]  # 20 draws = two passes
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:]) == list(range(10))
    with pytest.raises(ValueError):
        Contrast([], np.zeros(0), weight=1.0, margin=0.0, batch_size=4, rng=np.random.default_rng(0))


def test_training_with_the_term_keeps_the_background_and_learns_the_owner(sharp):
    # the owner and the background share their phrases ("yes!", "no, i was asleep"); only the owner
    # says "lol". Plain training gets better on both; with the term, only on the owner.
    own = quirky_speaker(64, quirk="lol")
    held_out = quirky_speaker(24, seed=1, quirk="lol")
    background = quirky_speaker(32, seed=2, quirk="hmm")
    other = quirky_speaker(24, seed=3, quirk="hmm")  # other people's replies the term never saw
    source = Prefix(tr.random_prefix(sharp, 16, seed=7), sharp.fingerprint, method="source")
    results = {}
    for weight in (0.0, 1.0):
        cfg = tr.TrainConfig(method="prefix", lr=0.3, max_steps=30, evals=2, contrast=weight, contrast_batch=8,
                             max_minutes=None, **FAST)
        prefix, summary = tr.train_prefix(own[:48], own[48:], backbone=sharp, config=cfg, init=source,
                                          background=background)
        results[weight] = (tr.reply_loss(sharp, held_out, prefix, 48, 16), tr.reply_loss(sharp, other, prefix, 48, 16))
    own_src, other_src = tr.reply_loss(sharp, held_out, source, 48, 16), tr.reply_loss(sharp, other, source, 48, 16)
    (own_plain, other_plain), (own_ctr, other_ctr) = results[0.0], results[1.0]
    assert own_plain < own_src - 0.5 and own_ctr < own_src - 0.5  # the owner's habit is learnt either way
    assert other_plain < other_src - 0.5  # plain training also got better on other people
    assert other_ctr > other_plain + 0.4 and other_ctr > other_src - 0.2  # the term held that back
    assert other_ctr - own_ctr > other_plain - own_plain + 0.3  # the owner stands further apart


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="contrast must be a number >= 0"):
        tr.TrainConfig(contrast=-1)
    with pytest.raises(ConfigError, match="contrast_margin"):
        tr.TrainConfig(contrast_margin=float("nan"))
    with pytest.raises(ConfigError, match="contrast_batch"):
        tr.TrainConfig(contrast_batch=0)
    with pytest.raises(ConfigError, match="with dp"):
        tr.TrainConfig(contrast=1.0, dp=DPConfig(epsilon=8.0))
