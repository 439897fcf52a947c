"""``python -m losslab``: the ``losslab`` command (:func:`losslab.cli.main`)."""

from losslab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
