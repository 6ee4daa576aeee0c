"""Language models and the one inference layer: the decoder (model), its tokenizer and checkpoints, the transformers
adapter (hf), the decode loop (generate), log-prob scoring (logprobs), loading and engines (engine), and teachers
(models that write or judge text for the data and training stages, local or behind an HTTP endpoint).

Imports only the root's base modules (errors, rundir, config, answers, sandbox, datahome, machine)."""
