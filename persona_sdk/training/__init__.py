"""Training persona KV blocks on a frozen backbone (needs the [train] extra).

- :mod:`.loop` -- the one training loop: schedule, validation, best checkpoint,
  budgets, early stopping, cancellation, divergence, progress;
- :mod:`.methods` -- one module per method, each contributing its step only;
- :mod:`.config` -- ``TrainConfig`` and ``SourceConfig``: defaults, help, the lr policy;
- :mod:`.personal` -- the personal prefix (``train_prefix``);
- :mod:`.source` -- the source prefix (``train_source``);
- :mod:`.backbone` / :mod:`.data` -- loading the backbone; encoding, batching and
  the loss behind a KV block or soft prompt;
- :mod:`.corpora` -- the multi-speaker corpora of the source prefix.
- :mod:`.pal` / :mod:`.paa` + :mod:`.paa_model` -- the explicit-persona methods' training (PAL's
  LoRA adapter; PAA's fusion and the model attaching it to the frozen backbone).

The public names stay importable from :mod:`persona_sdk.trainer` and
:mod:`persona_sdk.source`. Nothing here imports torch at import time.
"""
