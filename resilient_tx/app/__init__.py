"""The application layer: everything a person runs, and the asyncio that glues it together.

``cli`` is the ``resilient-tx`` command; ``send`` and ``recv`` are its network commands
and ``options`` turns their flags into the config dataclasses of
:mod:`resilient_tx.config`; ``session`` is the production receive loop (transport in,
decoded images out) that ``recv``, the demo's in-process ``loopback`` and embedding
programs share; ``demo`` is the quick-start job. This is the only layer that knows about
argparse, stdout and files the user named; the layers below raise exceptions from
:mod:`resilient_tx.errors`, which ``cli`` turns into one-line messages.
"""
