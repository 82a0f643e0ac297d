"""Loading and validation of frontgate's TOML files, one module per file's schema (router, apps,
terminator, checker, cert_manager, routes) on one machinery (schema). Unknown keys are errors: a
typo must never be silently ignored. What the daemons and tools use is importable from here."""
from frontgate.config.apps import (CLIENT_CERT_SUBJECT_FIELD, NO_HEADER_RULES, Acl, App, ErrorPage, HeaderMatch,
                                   HeaderRules, Server)
from frontgate.config.checker import (INIT_STATES, CheckerConfig, CheckSpec, StatusRanges, load_checker_config,
                                      parse_status_ranges)
from frontgate.config.common import AdminConfig
from frontgate.config.router import Listener, RedirectRule, RouterConfig, Timeouts, load_router_config
from frontgate.config.schema import Address, ConfigError, Network
from frontgate.config.terminator import (SERVER_CIPHER_ORDER, TLS_VERSIONS, CertificateEntry, PassthroughRoute,
                                         TerminatorConfig, TlsPolicy, load_terminator_config)

__all__ = ["CLIENT_CERT_SUBJECT_FIELD", "INIT_STATES", "NO_HEADER_RULES", "SERVER_CIPHER_ORDER", "TLS_VERSIONS", "Acl",
           "Address", "AdminConfig", "App", "CertificateEntry", "CheckSpec", "CheckerConfig", "ConfigError",
           "ErrorPage", "HeaderMatch", "HeaderRules", "Listener", "Network", "PassthroughRoute", "RedirectRule",
           "RouterConfig", "Server", "StatusRanges", "TerminatorConfig", "Timeouts", "TlsPolicy",
           "load_checker_config", "load_router_config", "load_terminator_config", "parse_status_ranges"]
