"""`python -m receiver.cli`: the same as the `fluxhook` command."""

from receiver.cli.main import main

raise SystemExit(main())
