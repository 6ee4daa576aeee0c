"""Language models: the decoder, its tokenizer and checkpoints, the transformers adapter, generation, and teachers
(models that write or judge text for the data and training stages, local or behind an HTTP endpoint).

Imports only the root's base modules (errors, rundir, config, answers, sandbox, datahome, machine)."""
