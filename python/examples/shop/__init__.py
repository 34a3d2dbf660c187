"""A small typed app using flyjobs (checked with `mypy --strict` by scripts/test-python.sh)."""
