"""Test-only stand-in for dora (upstream demucs only needs dora.log)."""
