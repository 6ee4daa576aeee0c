"""Evaluation: the fresh contest, the AMC-style contest, multiple choice, external benchmarks and the set-up of
their data, and the Gemma reference model.

Imports the root's base modules, `phiforge.lm`, `phiforge.data` and `phiforge.train`."""
