"""``python -m stn_jax.sweep``: runs :func:`stn_jax.sweep.cli.main` (the
flags, modes and exit status are in :mod:`stn_jax.sweep.cli`)."""

from stn_jax.sweep.cli import main

if __name__ == "__main__":
  raise SystemExit(main())
