"""The `trl-t3d collect | distill | eval` scripts as importable functions (examples reuse them)."""
