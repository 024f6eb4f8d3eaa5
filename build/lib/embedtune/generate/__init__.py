"""Synthetic query generation: prompts, backends, and the sharded runner."""
