"""The NATS transport: our own client on top of pynats2's handshake, and JetStream KV.

- :mod:`~token_worker.nats.protocol`: the protocol as a pure parser, and the only frame
  encoders (PUB, HPUB, SUB, UNSUB, header blocks);
- :mod:`~token_worker.nats.handshake`: pynats2, imported safely, and the handshake taken
  from it; :mod:`~token_worker.nats.dial`: one server dialed, CONNECT proven accepted;
- :mod:`~token_worker.nats.server_pool`: which servers, in which order;
  :mod:`~token_worker.nats.reconnect`: the reconnect policy;
- :mod:`~token_worker.nats.link`, :mod:`~token_worker.nats.reader`,
  :mod:`~token_worker.nats.connection`: the connection, in three layers (the socket and the
  send path; the reader thread's work; the life cycle and the public API), with
  :mod:`~token_worker.nats.subscriptions`, :mod:`~token_worker.nats.keepalive` and
  :mod:`~token_worker.nats.reconnect_buffer`;
- :mod:`~token_worker.nats.replies`: a connection's one reply space (one wildcard inbox,
  an unguessable subject per request), used by the KV client and the requester alike;
  :mod:`~token_worker.nats.kv`: the JetStream key-value calls the shared tier needs.

It depends on the config and the foundation modules only.
"""
