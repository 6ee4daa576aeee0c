"""Training data: problem generators and their renderings, seed texts, the LLM workflows, organic text (ingest,
filters, dedup, classifier, rewrites), decontamination, the pretraining mixture and the corpus reader.

Imports the root's base modules and `phiforge.lm` (teachers)."""
