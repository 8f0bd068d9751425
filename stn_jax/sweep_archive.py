"""``python -m stn_jax.sweep_archive compact ARCHIVE``: the command's old
home, kept for the commands in docs and scripts; the code is
:mod:`stn_jax.sweep.archive`."""

from stn_jax.sweep.archive import main

if __name__ == "__main__":
  raise SystemExit(main())
