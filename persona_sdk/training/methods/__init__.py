"""One module per training method; each contributes its parameters, its step and its
sampling, never a loop of its own (that is :mod:`persona_sdk.training.loop`).

Personal prefix (PersonaPKT stage 2), one person's replies:

- :mod:`.prefix` -- ``prefix`` (the KV block, initialised from a source prefix)
  and ``rand-prefix`` (initialised from P random tokens);
- :mod:`.prompt` -- ``prompt`` (prompt-tuning: a soft prompt compiled into a KV block).

Source prefix (PersonaPKT stage 1), many speakers:

- :mod:`.mixing` -- ``plain`` and ``temperature`` (how batches mix speakers);
- :mod:`.reptile` -- the Reptile outer step (``ppreptile``, and the meta loop of
  MTML/AMTML; the benchmark runs it on the whole backbone too);
- :mod:`.mtml` -- ``mtml`` and ``amtml`` (the persona-reconstruction task).
"""
