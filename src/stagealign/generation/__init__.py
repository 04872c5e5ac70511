"""Candidate generation backends (HF generate by default; vLLM as an optional extra)."""
