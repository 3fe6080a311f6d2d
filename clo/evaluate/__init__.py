"""Evaluation: language ID, the vote store, ratings and the LLM judge."""
