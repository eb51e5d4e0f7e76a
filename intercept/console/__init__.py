"""The approvers' HTTP side: the admin API (Intercept's routes and ours), the web inbox, and how
they authenticate. One Starlette app, served by `intercept serve` for every proxy of a state dir
and inside a proxy with `--enable-admin-api`; imported only when one of them starts."""
