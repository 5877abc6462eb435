"""LLM decoders re-authored for export: fixed maximum context and an explicit KV cache."""
