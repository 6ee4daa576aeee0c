"""The programmatic teacher's problem domains, one module per family; `phiforge.data.problems` registers them."""
