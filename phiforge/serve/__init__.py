"""Talking to a model: the terminal chat, the OpenAI-compatible server, its access rules and web page.

Imports the root's base modules, `phiforge.lm` and `phiforge.data`."""
