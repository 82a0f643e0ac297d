"""frontgate's shared core: what two or more of its daemons and tools use (no daemon's own code)."""
from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """frontgate's installed version, for the stats pages ("?" when run from a bare checkout)."""
    try:
        return version("frontgate")
    except PackageNotFoundError:
        return "?"
