"""One kit of helpers for the tests and the benches.

``cli`` (``run_cli``: the CLI in-process), ``wait`` (``wait_for``: a condition with a deadline),
``agents`` (an agents.d wired to a simulator, agent processes, independent checks),
``chaos`` (the chaos harness), ``ledger_worker`` (ledger worker processes and their journal
check), ``architecture`` (the layer contract). Fixtures live in ``tests/plugins/``.
"""
