"""Real servers for the tests and benchmarks: MLServer, TorchServe, KServe, Triton, vLLM,
PostgreSQL, the monitor, and small fakes for hostile answers; each started on 127.0.0.1 on
free ports and stopped by its context manager (:mod:`.processes`)."""
