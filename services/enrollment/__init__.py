"""Enrollment and rank assignment: one-time tokens in, CA-signed client certificates and LoRA ranks out."""
