"""The benchmark's parts, used by benchmarks/bench.py (which puts this folder's parent on
``sys.path``):

- workload: the clients, request bodies, and what a load run returns (``Load``)
- pipelined: the pipelined raw-protocol load generator, in several processes
- native: builds the compiled programs of benchmarks/c and benchmarks/go
- responders: the responders under test, each a process (``WorkerProcess``)
- baseline_worker: the hand-written nats-py worker (run as a script)
- measure: one measured run (``Result``) and its table row; ``Bench``
- scenarios: the sections of the benchmark
"""
