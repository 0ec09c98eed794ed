"""Tokens: the model, the caches and the broker in front of whoever issues them.

- :mod:`~token_worker.tokens.model`: :class:`~token_worker.tokens.model.IssuedToken` and the
  :class:`~token_worker.tokens.model.Issuer` protocol the broker depends on;
- :mod:`~token_worker.tokens.grant`: what a client proves and asks for (a
  :class:`~token_worker.tokens.grant.Grant`), and its keyed digest;
  :mod:`~token_worker.tokens.keys`: private keys, client certificates, CA bundles;
- :mod:`~token_worker.tokens.cache`: the bounded per-worker cache and its keys;
- :mod:`~token_worker.tokens.sealing`: the fleet key (naming and sealing shared entries);
- :mod:`~token_worker.tokens.shared`: the fleet's shared tier over JetStream KV;
- :mod:`~token_worker.tokens.broker`: cache, shared tier, single flight and refresh-ahead
  in front of the issuer.

It depends on the NATS transport (the shared tier's KV), the config and the foundation,
never on :mod:`token_worker.idp` or :mod:`token_worker.serve`.
"""
