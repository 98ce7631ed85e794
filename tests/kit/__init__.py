"""One kit of helpers for the tests and the benches."""
