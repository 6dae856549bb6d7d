"""Toy code: the synthetic tasks (`tasks`), a tiny teacher pretrained from scratch (`pretraining`) and `make demo`
(`demo`). It sits on the top floor, beside the command line: the demo, the tests and the benchmarks import it, the
library never does (tests/test_layering.py checks)."""
