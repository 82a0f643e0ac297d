"""The operator's tools (`frontgate check|status|reload|restart|certs|explain|...`): they may use
every daemon's code, where the shared core `frontgate` uses none. `explain` and the cross-stage
`check` answer with the daemons' own code, never a copy of it."""
