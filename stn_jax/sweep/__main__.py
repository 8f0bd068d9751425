"""``python -m stn_jax.sweep``: see :mod:`stn_jax.sweep.cli`."""

from stn_jax.sweep.cli import main

raise SystemExit(main())
