"""Large-model lifecycle: weights imported as registry versions (importer), fetched and digest-verified
before vLLM starts (fetch), the fit of weights + KV cache on a pool's GPUs (fit), and the harness that
runs the real vLLM CPU build in tests (testing). docs/llm.md tells the whole story."""
