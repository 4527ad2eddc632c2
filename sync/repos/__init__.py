"""The repositories: the only modules of the pipeline that build SQL (besides the schema, the migrations and
:mod:`sync.db`), one per aggregate. ``tests/test_architecture.py`` fails on SQL built anywhere else.

* :mod:`sync.repos.changes` — received ticket changes: insert (webhook and poll), claim, finish, fail.
* :mod:`sync.repos.tickets` — processed ticket versions, their links to incidents, the decision log.
* :mod:`sync.repos.outbox` — outbound actions: enqueue, claim, renew, mark sent / failed / released, dead
  letters, the rate limiter's view of the other replicas, depth.
* :mod:`sync.repos.cursors` — poll cursors and poll errors, leases, replica heartbeats.

Each function takes the caller's :class:`~sqlalchemy.Connection`: transactions (and SQLite's write lock) are
the caller's, through :meth:`sync.store.Store.begin`. Statements on hot paths are built once, at import or
per configuration, with bind parameters: building one per call cost more than running it (issue 19).
"""
