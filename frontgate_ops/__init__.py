"""Operator tools that look at all three stages at once (`frontgate explain`, the cross-daemon
`frontgate check`). Unlike frontgate/ (the shared core, which imports no daemon), these may import
the daemons' packages: they answer with the daemons' own code, never a copy of it."""
