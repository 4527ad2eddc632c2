"""``python -m ticketpager``: the same CLI as the ``ticketpager`` command."""

from ticketpager.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
