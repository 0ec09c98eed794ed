"""The identity provider: the token endpoint's client and the policy for its bad moments.

- :mod:`~token_worker.idp.client`: :class:`~token_worker.idp.client.IdpClient`, one
  client-credentials call (a :class:`~token_worker.tokens.grant.Grant`), and OIDC
  discovery; :mod:`~token_worker.idp.assertion`: private_key_jwt's client assertions;
  :mod:`~token_worker.idp.tls`: trusted CAs and client certificates;
  :mod:`~token_worker.idp.proxy`: the proxy variables;
- :mod:`~token_worker.idp.http`: HTTP within one deadline per attempt, body capped;
- :mod:`~token_worker.idp.answers`: a token answer, or the typed error an answer means;
- :mod:`~token_worker.idp.scrub`: the client secret (and what else a call must not show)
  taken out of what the IdP said;
- :mod:`~token_worker.idp.resilience`:
  :class:`~token_worker.idp.resilience.ResilientIdp`, retries within a deadline and the
  ways of failing fast; it is the :class:`~token_worker.tokens.model.Issuer` a worker's
  broker asks.
"""
