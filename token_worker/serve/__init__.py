"""Serving: the worker, its handler contract and everything it runs beside the handler.

- :mod:`~token_worker.serve.worker`: :class:`~token_worker.serve.worker.TokenWorker`, the
  subscriptions, start, run, stop and the drain; :mod:`~token_worker.serve.signals` its
  signal plumbing;
- :mod:`~token_worker.serve.handler`: the handler contract (``RequestHandler``, ``Reply``,
  ``Deferred``, ``BytesHandler``); :mod:`~token_worker.serve.token_handler`: the default
  handler; :mod:`~token_worker.serve.assembly`: what the default handler is built from;
- :mod:`~token_worker.serve.dispatch`: each request from the reader thread to its reply,
  through :mod:`~token_worker.serve.pool`; :mod:`~token_worker.serve.replying`: the reply
  path (checked, counted, sent);
- :mod:`~token_worker.serve.credentials`: named credentials from a mounted Secret;
  :mod:`~token_worker.serve.credential_folder`: one credential's files;
- :mod:`~token_worker.serve.health`: ``/healthz``, ``/readyz``, ``/metrics``;
  :mod:`~token_worker.serve.service`: the NATS services API (``$SRV``);
  :mod:`~token_worker.serve.naming`: the client name.
"""
