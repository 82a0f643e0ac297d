"""The operator's tools (`frontgate check|status|reload|restart|certs|...`): they may use every
daemon's code, where the shared core `frontgate` uses none."""
