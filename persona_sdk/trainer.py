"""Train a persona KV block on a frozen backbone (PersonaPKT stage 2).

The public face of :mod:`persona_sdk.training`: ``train_prefix`` and its
``TrainConfig``, the training backbone, and the data helpers (encode, batches,
losses) that evaluation code and the benchmarks share. Methods ``prefix``
(default; from a source prefix), ``rand-prefix`` and ``prompt`` all end as the
KV block the runtime consumes, ``(layers, 2, kv_heads, P, head_dim)``.

torch and transformers are imported inside functions: ``import persona_sdk``
never pays for them.
"""

from __future__ import annotations

from .conversation import Turn
from .split import split_by_conversation
from .training.backbone import (TrainBackbone, bf16_supported, check_source_fits, kv_of_embeddings, load_backbone,
                                random_prefix, text_embeddings)
from .training.data import (Encoded, batch_loss, batch_mean_loss, collate, encode, hidden, make_batches, mean_loss,
                            reply_loss)
from .training.loop import ProgressFn, TrainProgress
from .training.config import (BF16_MODES, DEFAULT_PROMPT_INIT, FEW_REPLIES, LR_FROM_SCRATCH, LR_FROM_SOURCE,
                              LR_FROM_SOURCE_FEW, METHODS, TrainConfig)
from .training.personal import TrainSummary, check_enough, train_prefix

__all__ = ["TrainConfig", "TrainProgress", "TrainSummary", "TrainBackbone", "train_prefix", "load_backbone",
           "reply_loss", "kv_of_embeddings", "split_by_conversation", "make_batches", "encode", "METHODS", "Turn",
           "BF16_MODES", "DEFAULT_PROMPT_INIT", "FEW_REPLIES", "LR_FROM_SOURCE", "LR_FROM_SOURCE_FEW", "LR_FROM_SCRATCH",
           "ProgressFn", "Encoded",
           "batch_loss", "batch_mean_loss", "collate", "hidden", "mean_loss", "random_prefix", "text_embeddings",
           "bf16_supported", "check_enough", "check_source_fits"]
