"""Running a store's server as an unprivileged account when the worker is root.

PostgreSQL refuses root outright; the other stores' servers would run as root, with every file
they write root's. A root worker runs each through `setpriv` as the store's account, after
checking that the account can reach its data dir. `setpriv --pdeathsig` also takes the server
down when the worker dies, even by SIGKILL: an orphan would hold the port and the data dir.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from rma.services.base import find_binary

# The account the stores without an account of their own run as (the Makefile and images create it).
STORE_ACCOUNT = "rma"


def service_account(name: str) -> pwd.struct_passwd | None:
    """The account to run as: None when the worker is not root (it runs the server itself)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise PermissionError(f"a root worker runs this store as the {name!r} account, and there is none: "
                              f"create it (useradd --system {name}) or run the worker as an ordinary user") from None


def check_reachable(folder: Path, account: pwd.struct_passwd) -> None:
    """Fail with the folder to fix when `account` cannot walk down to `folder` (say, under root's 0700 home)."""
    for ancestor in reversed(folder.parents):
        mode = ancestor.stat()
        if mode.st_uid != account.pw_uid and not mode.st_mode & 0o001:
            raise PermissionError(
                f"the {account.pw_name} account that runs this store cannot enter {ancestor} (mode "
                f"{mode.st_mode & 0o777:o}): choose a DATA_DIR outside it, allow it (chmod o+x {ancestor}), "
                "or run the worker as an ordinary user")


def as_server(argv: tuple[str, ...], account: pwd.struct_passwd | None, deathsig: str = "SIGINT") -> tuple[str, ...]:
    """The command run through setpriv (as `account` when given), with the program found off PATH too."""
    drop = ("--reuid", str(account.pw_uid), "--regid", str(account.pw_gid), "--init-groups") if account else ()
    program = find_binary(argv[0]) or argv[0]
    return ("setpriv", *drop, "--pdeathsig", deathsig, "--", program, *argv[1:])
