"""hetlora's federated LoRA library: algorithms, local training, models, corpora and the round engine.

Everything here is transport-free, so the in-process simulation and the gRPC services drive exactly the same
code. `services/` may import this package; this package never imports `services/` (import-linter enforces it).
"""
