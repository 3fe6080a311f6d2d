"""Experiments that train several adapters and compare them: the miniature, replicate on a real model."""
