"""Training: the optimiser and schedule, pretraining, midtraining, SFT, pivotal-token search, DPO, judge-guided DPO
and its judge, and the process-group set-up.

Imports the root's base modules, `phiforge.lm` and `phiforge.data`."""
