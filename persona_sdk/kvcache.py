"""The KV caches the decode loops run on. No torch here.

A cache holds ``slots`` rows; row ``s`` holds ``lengths[s]`` positions of
keys and values: the persona block (if any) first, then every token fed.
Two kinds, one interface (``load``, ``truncate``, ``prefill``, ``step``):

- :class:`SharedKVCache` (the fused graph, CPU): per layer and key/value one
  preallocated array ``(slots, kv_heads, capacity, head_dim)``, bound as both
  the ``past`` input and the ``present`` output of the graph. The
  GroupQueryAttention kernel sees the same buffer on both sides and writes
  the new positions in place (``past_present_share_buffer``), so a decode
  step copies no KV at all. Rows may have different lengths: the attention
  mask gives each row its own ``seqlens_k`` (the kernel attends to, and
  writes at, each row's own length; positions come from it too), so rows
  with persona blocks of different lengths, or none, share one batched step.
  The kernel prefills a multi-token input after a past for one row at a
  time, so ``prefill`` runs one row (batch 1, a view of that row's buffer).
- :class:`CopyCache` (any graph, any device): the past is a list of
  OrtValues per row, replaced by the ``present`` outputs every step (what
  onnxruntime does without a shared buffer); rows step one at a time.

Capacity grows on demand (doubling, one copy); memory is touched only where
positions are written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import GenerationError
from .manifest import ATTENTION_MASK, INPUT_IDS, LOGITS, LOGITS_TO_KEEP

if TYPE_CHECKING:  # pragma: no cover
    from .prefix import Prefix
    from .runtime import Engine

# Most tokens one prefill call runs at once: bounds the activations (a 1,000-token
# prompt in one piece needs ~T·hidden·intermediate floats) and, in a batch, how long
# one joining row holds up the others.
PREFILL_CHUNK = 256
_GROW = 128  # capacity grows in multiples of this many positions


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class SharedKVCache:
    """Preallocated KV rows that GroupQueryAttention extends in place (fused graph, CPU)."""

    shared = True

    def __init__(self, engine: "Engine", slots: int = 1, capacity: int = 256) -> None:
        if slots < 1:
            raise GenerationError(f"a KV cache needs at least one slot, got {slots}")
        self.engine = engine
        self.slots = slots
        self.lengths = np.zeros(slots, dtype=np.int64)  # (slots,) valid positions per row
        self.capacity = 0
        self.arrays: list[np.ndarray] = []  # [l0.key, l0.value, ...] each (slots, kv_heads, capacity, head_dim)
        self._logits_dtype = np.dtype(engine.manifest.get("logits_dtype", "float32"))
        self._grow(max(1, min(int(capacity), engine.max_positions)))

    # --- memory -------------------------------------------------------------------
    def _grow(self, capacity: int) -> None:
        e = self.engine
        capacity = min(_round_up(capacity, _GROW), e.max_positions)
        shape = (self.slots, e.kv_heads, capacity, e.head_dim)
        arrays = [np.zeros(shape, dtype=e.kv_dtype) for _ in range(2 * e.layers)]  # zero pages until written
        old = self.capacity
        for new, prev in zip(arrays, self.arrays):
            new[:, :, :old] = prev
        self.arrays, self.capacity = arrays, capacity
        self._bindings: dict = {}  # (first, last) rows -> (IOBinding, logits buffer or None, kept OrtValues)

    def reserve(self, positions: int) -> None:
        """Make room for ``positions`` positions in every row (grows by doubling, one copy)."""
        if positions > self.engine.max_positions:
            raise GenerationError(f"{positions} positions (persona + text) exceed the backbone's context of "
                                  f"{self.engine.max_positions}; shorten the input")
        if positions > self.capacity:
            self._grow(max(positions, 2 * self.capacity))

    # --- rows ---------------------------------------------------------------------
    def load(self, slot: int, prefix: "Prefix | None") -> int:
        """Start row ``slot`` afresh with ``prefix``'s block at positions 0..P-1; returns P."""
        if prefix is None:
            self.lengths[slot] = 0
            return 0
        self.engine.check_prefix(prefix)
        block = prefix.kv  # (layers, 2, kv_heads, P, head_dim)
        p = block.shape[3]
        self.reserve(p + 1)
        for layer in range(self.engine.layers):
            for kv in (0, 1):
                self.arrays[2 * layer + kv][slot, :, :p] = block[layer, kv]
        self.lengths[slot] = p
        return p

    def truncate(self, slot: int, length: int) -> None:
        """Forget row ``slot``'s positions from ``length`` on (they are overwritten later)."""
        if not 0 <= length <= self.lengths[slot]:
            raise GenerationError(f"cannot truncate a row of {self.lengths[slot]} positions to {length}")
        self.lengths[slot] = length

    # --- running the graph ----------------------------------------------------------
    def _binding(self, first: int, last: int, logits_rows: int | None):
        """An IOBinding with rows first..last-1 bound as past and present (views, no copies)."""
        key = (first, last, logits_rows)
        if key not in self._bindings:
            ort = self.engine._ort
            binding = self.engine.session.io_binding()
            keep = []
            logits = None
            if logits_rows is not None:  # a preallocated (rows, 1, vocab) output
                logits = np.zeros((logits_rows, 1, self.engine.vocab_size), dtype=self._logits_dtype)
                value = ort.OrtValue.ortvalue_from_numpy(logits)
                binding.bind_ortvalue_output(LOGITS, value)
                keep.append(value)
            else:  # bound first: get_outputs()[0] is the logits
                binding.bind_output(LOGITS, "cpu")
            for past, present, array in zip(self.engine.past_names, self.engine.present_names, self.arrays):
                value = ort.OrtValue.ortvalue_from_numpy(array[first:last])  # shares the array's memory
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
                keep.append(value)
            self._bindings[key] = (binding, logits, keep)
        return self._bindings[key]

    def _run(self, binding, ids: np.ndarray, mask: np.ndarray, fresh_logits: bool = False) -> None:
        if fresh_logits:  # let onnxruntime allocate this run's logits (it would reuse the last run's shape)
            binding.bind_output(LOGITS, "cpu")
        binding.bind_cpu_input(INPUT_IDS, ids)
        binding.bind_cpu_input(ATTENTION_MASK, mask)
        if self.engine.has_logits_to_keep:
            binding.bind_cpu_input(LOGITS_TO_KEEP, _ONE)
        self.engine.run(binding)

    def prefill(self, slot: int, ids: Sequence[int], chunk: int = PREFILL_CHUNK) -> np.ndarray:
        """Feed ``ids`` after row ``slot``'s positions; the last position's logits (vocab,) float32."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise GenerationError("prefill needs at least one token")
        self.reserve(int(self.lengths[slot]) + ids.size + 1)
        keep_last = self.engine.has_logits_to_keep
        out = None
        for start in range(0, ids.size, chunk):
            piece = ids[start:start + chunk][None]  # (1, t)
            total = int(self.lengths[slot]) + piece.shape[1]
            binding, logits, _ = self._binding(slot, slot + 1, 1 if keep_last else None)
            self._run(binding, piece, np.ones((1, total), dtype=np.int64), fresh_logits=logits is None)
            self.lengths[slot] = total
            out = logits if keep_last else binding.get_outputs()[0].numpy()
        return np.array(out[0, -1], dtype=np.float32)  # a copy: the buffer is reused

    def step(self, tokens: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """One decode step for rows 0..n-1 (``tokens`` (n,)); logits (n, vocab).

        Rows with ``active[s]`` False take part as placeholders: their token is
        written at their current length and forgotten (their length does not
        move), so a row being prefilled, or a free one, loses nothing. The
        returned array is a buffer reused by the next step of the same width.
        """
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = tokens.size
        active = np.ones(n, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        lengths = self.lengths[:n]
        total = int(lengths.max()) + 1
        self.reserve(total)
        mask = (np.arange(total)[None, :] <= lengths[:, None]).astype(np.int64)  # (n, total): each row's own length
        binding, logits, _ = self._binding(0, n, n)
        self._run(binding, tokens[:, None], mask)
        self.lengths[:n] += active
        return logits[:, 0, :] if logits.dtype == np.float32 else logits[:, 0, :].astype(np.float32)


class CopyCache:
    """Per-row past OrtValues replaced by each step's present (any graph, any device)."""

    shared = False

    def __init__(self, engine: "Engine", slots: int = 1, capacity: int = 0) -> None:
        self.engine = engine
        self.slots = slots
        self.lengths = np.zeros(slots, dtype=np.int64)
        self.past: list[list | None] = [None] * slots

    def reserve(self, positions: int) -> None:
        if positions > self.engine.max_positions:
            raise GenerationError(f"{positions} positions (persona + text) exceed the backbone's context of "
                                  f"{self.engine.max_positions}; shorten the input")

    def load(self, slot: int, prefix: "Prefix | None") -> int:
        self.past[slot], plen = self.engine.initial_past(prefix)
        self.lengths[slot] = plen
        return plen

    def truncate(self, slot: int, length: int) -> None:
        if not 0 <= length <= self.lengths[slot]:
            raise GenerationError(f"cannot truncate a row of {self.lengths[slot]} positions to {length}")
        if length < self.lengths[slot]:
            ort, device = self.engine._ort, self.engine._device_type
            self.past[slot] = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[:, :, :length]),
                                                                device, 0) for v in self.past[slot]]
            self.lengths[slot] = length

    def prefill(self, slot: int, ids: Sequence[int], chunk: int = PREFILL_CHUNK) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise GenerationError("prefill needs at least one token")
        self.reserve(int(self.lengths[slot]) + ids.size)
        out = None
        for start in range(0, ids.size, chunk):
            out = self.engine.forward(ids[start:start + chunk][None], self.past[slot], int(self.lengths[slot]))
            self.past[slot], self.lengths[slot] = out.past, out.past_len
        return out.logits[0]

    def step(self, tokens: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        active = np.ones(tokens.size, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        rows = np.zeros((tokens.size, self.engine.vocab_size), dtype=np.float32)
        for s in np.flatnonzero(active):
            out = self.engine.forward(tokens[s:s + 1][None], self.past[s], int(self.lengths[s]))
            self.past[s], self.lengths[s] = out.past, out.past_len
            rows[s] = out.logits[0]
        return rows


_ONE = np.array([1], dtype=np.int64)


class DecodeState:
    """One conversation's KV: the persona block and every token fed so far, reused turn after turn.

    ``start(prompt_ids)`` keeps the longest prefix of ``prompt_ids`` already in
    the cache and feeds only the rest: in a chat, the earlier turns are
    computed once, not re-fed every turn. ``reused`` says how many prompt
    tokens the last ``start`` found cached.
    """

    def __init__(self, engine: "Engine", prefix: "Prefix | None" = None, capacity: int = 256) -> None:
        self.engine = engine
        self.cache = engine.new_cache(slots=1, capacity=capacity)
        self.plen = self.cache.load(0, prefix)
        self.fed: list[int] = []  # token ids whose KV follows the persona block
        self.reused = 0

    def start(self, prompt_ids: Sequence[int], chunk: int = PREFILL_CHUNK) -> np.ndarray:
        """Make the cache hold exactly persona + ``prompt_ids``; the last position's logits (vocab,)."""
        prompt = [int(i) for i in prompt_ids]
        if not prompt:
            raise GenerationError("the prompt is empty")
        n = 0
        limit = min(len(self.fed), len(prompt) - 1)  # feed at least one token: its logits start the reply
        while n < limit and self.fed[n] == prompt[n]:
            n += 1
        self.cache.truncate(0, self.plen + n)
        del self.fed[n:]
        logits = self.cache.prefill(0, prompt[n:], chunk)
        self.fed.extend(prompt[n:])
        self.reused = n
        return logits

    def feed(self, token: int) -> np.ndarray:
        """Append one token; the next logits (vocab,) (a reused buffer)."""
        logits = self.cache.step(np.array([token], dtype=np.int64))[0]
        self.fed.append(int(token))
        return logits
