"""The shared connector contract suite: one set of tests run over every system in :mod:`connectors.registry`,
with a small per-system adapter (:mod:`tests.contract.adapters`) saying how to sign a body, what a valid body
and an echo of our own note look like, and how to start the system's local fake (tests/fakes/) for polling."""
