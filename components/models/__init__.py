"""Phase 3, one Model per catalogue entry: its TrainingJob and ModelService (our server), or its LlmService
(vLLM)."""
