"""Dropping root after binding the port: chroot (optional), then the configured group and user.

Order matters: names are looked up before the chroot (the jail has no /etc/passwd); the chroot
needs root; the supplementary groups and the gid must change while we are still root; the uid goes
last, and for good (real, effective and saved). Returns warnings to log rather than logging, so that
it stays easy to test.
"""
from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path


class PrivilegeError(RuntimeError):
    pass


def drop_privileges(user: str | None, group: str | None, chroot: Path | None) -> list[str]:
    if os.geteuid() != 0:
        if user is not None or group is not None or chroot is not None:
            me = pwd.getpwuid(os.geteuid()).pw_name
            return [f"not running as root: user/group/chroot ignored, running as {me}"]
        return []
    if user is None:
        notes = ["running as root: set terminator.user to drop privileges after binding"]
        if group is not None or chroot is not None:
            notes.append("group and chroot are only applied together with user; ignored")
        return notes
    try:
        account = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group is not None else account.pw_gid
    except KeyError as e:
        raise PrivilegeError(f"cannot drop privileges: unknown user or group {e}") from None
    try:
        if chroot is not None:
            os.chroot(chroot)
            os.chdir("/")
        os.setgroups([gid])
        os.setresgid(gid, gid, gid)
        os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)
    except OSError as e:
        raise PrivilegeError(f"cannot drop privileges to {user}: {e.strerror or e}") from None
    if account.pw_uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise PrivilegeError("could regain root after dropping privileges; refusing to run")
    return []
