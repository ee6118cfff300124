"""Audio input/output (torch-free); see the submodules."""
