"""Bridges between utamoe and other model families (Hugging Face Janus / Janus-Pro)."""
