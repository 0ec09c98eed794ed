"""The requester: ask the worker fleet for a token over NATS.

- :mod:`~token_worker.client.client`: :class:`~token_worker.client.client.TokenClient` and
  the :class:`~token_worker.client.client.Token` it returns;
- :mod:`~token_worker.client.requester`: one request, attempt by attempt, until the genuine
  reply or the final error; :mod:`~token_worker.client.retries`: what follows a failed
  attempt;
- :mod:`~token_worker.client.inbox`: the calls waiting on the connection's reply space
  (:mod:`token_worker.nats.replies`), and which replies are believed.

It depends on the NATS transport, the token model and cache, the config and the
foundation; never on the worker side (:mod:`token_worker.serve`, :mod:`token_worker.idp`,
the broker, the shared tier), urllib3, prometheus-client, PyJWT or cryptography.
"""
