"""A real single-node Kafka broker (KRaft, loopback only) run from the jars in ``deploy/local/lib``.

Integration tests and ``metering run`` need a real broker and this machine has no Docker, so
``deploy/local/pom.xml`` fetches Kafka from Maven Central and this module runs it as a child JVM.
A data dir has the layout ``deploy/local/start.sh`` uses (see there), so the shell scripts and
this class can each restart what the other one stopped.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from types import TracebackType
from typing import Final, Self

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

__all__ = [
    "DIST_ENV",
    "LocalKafka",
    "LocalKafkaError",
    "RunningBroker",
    "data_dir_cluster_id",
    "dist_dir",
    "dist_file",
    "free_port",
    "kafka_version",
    "running_broker",
    "stop_running_broker",
]

DIST_ENV: Final = "METERING_KAFKA_DIST"
DEPLOY_DIR: Final = Path(__file__).resolve().parents[1] / "deploy" / "local"
HOST: Final = "127.0.0.1"

MAIN_CLASS: Final = "kafka.Kafka"
STORAGE_TOOL_CLASS: Final = "kafka.tools.StorageTool"

STATE_FILE: Final = "local-kafka.properties"
CONFIG_FILE: Final = "server.properties"
PID_FILE: Final = "broker.pid"
OUT_FILE: Final = "broker.out"
KRAFT_DIR: Final = "kraft-logs"
LOGS_DIR: Final = "logs"
SERVER_LOG: Final = "server.log"

_MVN_TIMEOUT_S: Final = 900.0
_FORMAT_TIMEOUT_S: Final = 120.0
_INSTALL_JAVA: Final = (
    "Java not found: install a JDK 17+ (e.g. apt-get install openjdk-17-jdk-headless) or set JAVA_HOME."
)

#: Execs the broker's command line with PR_SET_PDEATHSIG = SIGTERM, so the JVM shuts down when the
#: process that started it dies, even by SIGKILL (the broker has a session of its own, so a signal to
#: its parent's process group never reaches it). A fresh single-threaded interpreter does it: a
#: ``preexec_fn`` may deadlock in a forked child of a threaded process. The kernel keeps the setting
#: across ``execv``; if the parent died before it was set, the launcher exits at once.
_DIE_WITH_PARENT: Final = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(70)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

_log = logging.getLogger(__name__)


class LocalKafkaError(RuntimeError):
    """The local broker could not be fetched, started or used; the message says what to do next."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS may hand it out again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def dist_dir() -> Path:
    """The directory whose ``lib/`` holds the broker jars: ``$METERING_KAFKA_DIST`` or ``deploy/local``."""
    override = os.environ.get(DIST_ENV)
    return Path(override).expanduser().resolve() if override else DEPLOY_DIR


def dist_file(name: str) -> Path:
    """``name`` (pom.xml, server.properties, log4j2.yaml) from the dist dir if it has one, else from deploy/local.

    So a ``$METERING_KAFKA_DIST`` outside the repo (e.g. for an installed package) can carry its own templates.
    """
    for directory in (dist_dir(), DEPLOY_DIR):
        if (directory / name).is_file():
            return directory / name
    raise LocalKafkaError(f"{name} is in neither {dist_dir()} nor {DEPLOY_DIR}; copy it from the repo's deploy/local.")


def kafka_version() -> str:
    """The Kafka version pinned in ``deploy/local/pom.xml``, the single place it is chosen."""
    pom = dist_file("pom.xml")
    try:
        match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom.read_text())
    except OSError as exc:
        raise LocalKafkaError(f"Cannot read {pom} ({exc}): it pins the Kafka version to run.") from exc
    if match is None:
        raise LocalKafkaError(f"{pom} has no <kafka.version> property.")
    return match.group(1)


def _find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError(_INSTALL_JAVA)
    return java


def _random_cluster_id() -> str:
    """A cluster id as ``kafka-storage random-uuid`` makes one, without paying for a JVM start."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


def _read_properties(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    props: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _is_kafka_process(pid: int, config: Path | None = None) -> bool:
    """Whether ``pid`` is a live Kafka JVM, so a stale pid file whose pid was reused is not taken for one.

    With ``config``: the broker started with that ``server.properties`` (its argument after the main
    class, resolved against the process's working directory), i.e. the broker of that data directory
    and no other: pids come round quickly (pid_max may be 32768), and a stale pid file may name
    another data directory's broker.
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if MAIN_CLASS.encode() not in argv:
        return False
    if config is None:
        return True
    after = argv.index(MAIN_CLASS.encode()) + 1
    if after >= len(argv) or not argv[after]:
        return False
    given = Path(os.fsdecode(argv[after]))
    try:
        if not given.is_absolute():
            given = Path(os.readlink(f"/proc/{pid}/cwd")) / given
    except OSError:
        return False
    return os.path.realpath(given) == os.path.realpath(config)


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def _errors_since(path: Path, offset: int, limit: int = 12) -> list[str]:
    """ERROR/FATAL lines (and the exception message under each) since ``offset``: the cause, not the shutdown."""
    try:
        with path.open("rb") as f:
            f.seek(offset if offset <= path.stat().st_size else 0)
            lines = f.read(8 * 1024 * 1024).decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    found: list[str] = []
    for i, line in enumerate(lines):
        if "] ERROR " in line or "] FATAL " in line:
            found.append(line)
            if i + 1 < len(lines) and not lines[i + 1].startswith(("[", "\tat ")):
                found.append(lines[i + 1])
        if len(found) >= limit:
            break
    return found


def _run_tool(cmd: list[str], timeout: float, doing: str) -> subprocess.CompletedProcess[str]:
    """Run a one-shot tool (Maven, Kafka's storage tool) without input, its output kept; a hang is an error."""
    try:
        return subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LocalKafkaError(f"{doing} took over {timeout:.0f} s.") from exc


def _terminate(proc: subprocess.Popen[bytes], timeout: float, pid_file: Path) -> None:
    """SIGTERM the broker's process group, SIGKILL it after ``timeout`` s; module-level so a finalizer can run it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _log.warning("Kafka (pid %d) still up %.0f s after SIGTERM; killing it", proc.pid, timeout)
            _kill(proc)
    _remove_pid_file(pid_file, proc.pid)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _remove_pid_file(pid_file: Path, pid: int) -> None:
    try:
        if pid_file.read_text().strip() == str(pid):
            pid_file.unlink()
    except OSError:
        pass


@dataclass(frozen=True, slots=True)
class RunningBroker:
    """A live broker of a data dir, as its files announce it: where it listens and which cluster it is."""

    data_dir: Path
    pid: int
    port: int
    cluster_id: str

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"


def running_broker(data_dir: Path) -> RunningBroker | None:
    """The broker of ``data_dir`` if one runs: its pid file names a live Kafka JVM started with this data
    directory's ``server.properties`` (by any process; a JVM of another data directory is not it).

    Its port and cluster id are those the data dir was last started with (``local-kafka.properties``),
    which is what `metering produce`, `usage` and the other commands connect to.
    """
    try:
        pid = int((data_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    state = _read_properties(data_dir / STATE_FILE)
    port = state.get("port", "")
    if not _is_kafka_process(pid, data_dir / CONFIG_FILE) or not port.isdigit():
        return None
    return RunningBroker(data_dir, pid, int(port), state.get("cluster.id", ""))


def stop_running_broker(broker: RunningBroker, timeout: float = 30.0) -> None:
    """Stop a broker this process did not start (SIGTERM, SIGKILL after ``timeout`` s) and wait until it is gone."""
    config = broker.data_dir / CONFIG_FILE
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        if not _is_kafka_process(broker.pid, config):  # checked before every signal: never another one's
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(broker.pid, sig)
        deadline = time.monotonic() + wait
        while _is_kafka_process(broker.pid, config) and time.monotonic() < deadline:
            time.sleep(0.1)
    if _is_kafka_process(broker.pid, config):
        raise LocalKafkaError(f"the Kafka broker (pid {broker.pid}) of {broker.data_dir} does not stop: kill it")
    _remove_pid_file(broker.data_dir / PID_FILE, broker.pid)


def data_dir_cluster_id(data_dir: Path) -> str | None:
    """The cluster id ``data_dir`` was formatted with, if it ever held a broker."""
    return _read_properties(data_dir / KRAFT_DIR / "meta.properties").get("cluster.id") or _read_properties(
        data_dir / STATE_FILE
    ).get("cluster.id")


class LocalKafka:
    """A single-node KRaft broker started from the jars in deploy/local/lib.

    Integration tests and ``metering run`` need a real broker without Docker. The broker runs as a
    child JVM in its own process group with all its output under ``data_dir``; the data, the
    cluster id and the ports survive :meth:`stop` / :meth:`start`, and a broker left running is
    stopped when the interpreter exits.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        heap_mb: int = 512,
        *,
        preferred_port: int | None = None,
        die_with_parent: bool = True,
    ) -> None:
        """Ports left as ``None`` are picked at the first :meth:`start` and kept for later ones.

        A port left to pick is the data dir's last one if free, else ``preferred_port`` if free, else
        any free one. ``die_with_parent``: the broker stops when the process that started it dies.
        """
        if port is not None and port == controller_port:
            raise ValueError(f"port and controller_port must differ (both are {port})")
        if heap_mb < 128:
            raise ValueError(f"heap_mb={heap_mb} is too small for a Kafka broker; use at least 128")
        self.data_dir = Path(data_dir)
        self.heap_mb = heap_mb
        self._port = port
        self._controller_port = controller_port
        self._preferred_port = preferred_port
        self._die_with_parent = die_with_parent
        self._cluster_id: str | None = None
        self._log_offset = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes], float, Path], LocalKafka] | None = None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running else "stopped"
        return f"LocalKafka({str(self.data_dir)!r}, port={self._port}, {state})"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int | None:
        """The client (PLAINTEXT) port, once chosen."""
        return self._port

    @property
    def controller_port(self) -> int | None:
        """The KRaft controller port, once chosen."""
        return self._controller_port

    @property
    def bootstrap(self) -> str:
        """``bootstrap.servers`` for clients; valid from the first :meth:`start` on."""
        if self._port is None:
            raise LocalKafkaError("LocalKafka has no port yet: call start() first.")
        return f"{HOST}:{self._port}"

    @property
    def pid(self) -> int | None:
        """The broker JVM's pid while it runs."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the JVM this instance started is still alive (not whether it serves requests)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def cluster_id(self) -> str | None:
        """The KRaft cluster id the data dir was formatted with, once started."""
        return self._cluster_id

    @property
    def log_path(self) -> Path:
        """The broker's log4j log, the first place to look when something is off."""
        return self.data_dir / LOGS_DIR / SERVER_LOG

    def log_tail(self, lines: int = 30) -> str:
        """Errors the broker logged since its last start, then the last lines of its log and stdout/stderr."""
        errors = _errors_since(self.log_path, self._log_offset)
        return (
            (f"--- errors in {self.log_path} since start ---\n" + "\n".join(errors) + "\n" if errors else "")
            + f"--- tail of {self.log_path} ---\n{_tail(self.log_path, lines)}\n"
            + f"--- tail of {self.data_dir / OUT_FILE} ---\n{_tail(self.data_dir / OUT_FILE, lines)}"
        )

    def ensure_jars(self) -> None:
        """Fetch the pinned Kafka jars with Maven unless they are there (what deploy/local/fetch.sh does)."""
        dist = dist_dir()
        lib = dist / "lib"
        version = kafka_version()
        if self._jars_present(lib, version):
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalKafkaError(
                f"Maven (mvn) not found: install Maven 3.6+ (e.g. apt-get install maven) to fetch Kafka "
                f"{version} into {lib}, or set {DIST_ENV} to a directory whose lib/ holds the Kafka jars."
            )
        _find_java()
        (dist / "target").mkdir(parents=True, exist_ok=True)
        with (dist / "target" / "fetch.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._jars_present(lib, version):
                return
            self._fetch(mvn, lib, version)

    @staticmethod
    def _jars_present(lib: Path, version: str) -> bool:
        if os.environ.get(DIST_ENV):
            return any(lib.glob("kafka_2.13-*.jar"))
        return (lib / f"kafka_2.13-{version}.jar").is_file()

    @staticmethod
    def _fetch(mvn: str, lib: Path, version: str) -> None:
        partial = lib.parent / "target" / f"lib.partial.{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(dist_file("pom.xml")),
            "dependency:copy-dependencies",
            f"-Dlib.dir={partial}",
        ]
        _log.info("Fetching Kafka %s jars into %s", version, lib)
        started = time.monotonic()
        try:
            result = _run_tool(cmd, _MVN_TIMEOUT_S, f"Fetching Kafka {version} with Maven")
            if result.returncode != 0 or not (partial / f"kafka_2.13-{version}.jar").is_file():
                output = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
                raise LocalKafkaError(
                    f"Fetching Kafka {version} with Maven failed (exit {result.returncode}); Maven Central must be "
                    f"reachable (check ~/.m2/settings.xml for mirrors/proxies). Command: {' '.join(cmd)}\n{output}"
                )
            shutil.rmtree(lib, ignore_errors=True)
            partial.rename(lib)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        _log.info("Fetched Kafka %s in %.1f s", version, time.monotonic() - started)

    def start(self, timeout: float = 60.0) -> str:
        """Start the broker (formatting the data dir the first time) and return its bootstrap address.

        Returns once the broker answers a metadata request listing itself, so topics can be created
        right away. Does nothing but return the address if this instance's broker already runs.
        """
        if self.is_running:
            return self.bootstrap
        self.ensure_jars()
        started = time.monotonic()
        deadline = started + timeout
        java = _find_java()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._refuse_foreign_broker()
        state = _read_properties(self.data_dir / STATE_FILE)
        self._choose_ports(state)
        self._write_config()
        self._cluster_id = self._format(java, state.get("cluster.id"))
        (self.data_dir / STATE_FILE).write_text(
            f"cluster.id={self._cluster_id}\nport={self._port}\ncontroller.port={self._controller_port}\n"
        )
        self._launch(java)
        self._wait_until_ready(deadline)
        _log.info(
            "Kafka %s up on %s (pid %s) in %.1f s",
            kafka_version(),
            self.bootstrap,
            self.pid,
            time.monotonic() - started,
        )
        return self.bootstrap

    def stop(self, timeout: float = 20.0) -> None:
        """Shut the broker down cleanly (SIGTERM), killing it if it is still up after ``timeout`` s."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _terminate(proc, timeout, self.data_dir / PID_FILE)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would; the next :meth:`start` recovers its logs."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _kill(proc)
            _remove_pid_file(self.data_dir / PID_FILE, proc.pid)

    def create_topics(
        self,
        topics: Mapping[str, int],
        config: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Create each ``name: partitions`` topic (replication factor 1) unless it exists, and wait until all lead.

        Raises :class:`LocalKafkaError` if a topic already exists with another partition count.
        """
        if not topics:
            return
        if not self.is_running:
            raise LocalKafkaError("Kafka is not running: call start() before create_topics().")
        deadline = time.monotonic() + timeout
        admin = self._admin()
        new = [
            NewTopic(name, num_partitions=n, replication_factor=1, config=dict(config or {}))
            for name, n in topics.items()
        ]
        futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                error = exc.args[0]
                if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise LocalKafkaError(f"Creating topic {name!r} on {self.bootstrap} failed: {error}") from exc
        while True:
            metadata = admin.list_topics(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            pending = []
            for name, partitions in topics.items():
                topic = metadata.topics.get(name)
                if topic is None or topic.error is not None:
                    pending.append(name)
                elif len(topic.partitions) != partitions:
                    raise LocalKafkaError(
                        f"Topic {name!r} already exists with {len(topic.partitions)} partitions, not {partitions}; "
                        f"delete it or use a fresh data dir."
                    )
                elif any(p.leader < 0 for p in topic.partitions.values()):
                    pending.append(name)
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise LocalKafkaError(
                    f"Topics {pending} were created but not all their partitions had a leader within {timeout} s.\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    def _admin(self) -> AdminClient:
        return AdminClient(
            {
                "bootstrap.servers": self.bootstrap,
                "reconnect.backoff.ms": 50,
                "reconnect.backoff.max.ms": 500,
            },
            logger=_log,
        )

    def _refuse_foreign_broker(self) -> None:
        try:
            pid = int((self.data_dir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return
        if _is_kafka_process(pid, self.data_dir / CONFIG_FILE):
            raise LocalKafkaError(
                f"A Kafka broker (pid {pid}) already runs on {self.data_dir}; stop it first "
                f"({DEPLOY_DIR / 'stop.sh'} {self.data_dir}) or use another data dir."
            )

    def _choose_ports(self, state: Mapping[str, str]) -> None:
        """Keep ports already chosen, else reuse the data dir's last ones if free, so a bootstrap stays valid."""

        def pick(wanted: tuple[str | None, ...], taken: int | None) -> int:
            for port_text in wanted:
                if port_text and port_text.isdigit() and int(port_text) != taken and _port_is_free(int(port_text)):
                    return int(port_text)
            while (port := free_port()) == taken:
                pass
            return port

        preferred = None if self._preferred_port is None else str(self._preferred_port)
        if self._port is None:
            self._port = pick((state.get("port"), preferred), self._controller_port)
        if self._controller_port is None:
            self._controller_port = pick((state.get("controller.port"),), self._port)

    def _write_config(self) -> None:
        template = Template(dist_file(CONFIG_FILE).read_text())
        config = template.substitute(
            KAFKA_PORT=self._port,
            KAFKA_CONTROLLER_PORT=self._controller_port,
            KAFKA_LOG_DIR=self.data_dir.resolve() / KRAFT_DIR,
        )
        (self.data_dir / CONFIG_FILE).write_text(config)
        (self.data_dir / LOGS_DIR).mkdir(exist_ok=True)

    def _jvm_args(self, heap_mb: int) -> list[str]:
        return [
            f"-Xmx{heap_mb}m",
            f"-Xms{min(heap_mb, 128)}m",
            f"-Dkafka.logs.dir={(self.data_dir / LOGS_DIR).resolve()}",
            f"-Dlog4j2.configurationFile={dist_file('log4j2.yaml')}",
            "-Djava.awt.headless=true",
            "-cp",
            f"{dist_dir() / 'lib'}/*",
        ]

    def _format(self, java: str, stored_cluster_id: str | None) -> str:
        """Format the storage once, with the cluster id the data dir had before (if any), and return that id."""
        meta = _read_properties(self.data_dir / KRAFT_DIR / "meta.properties")
        if "cluster.id" in meta:
            return meta["cluster.id"]
        cluster_id = stored_cluster_id or _random_cluster_id()
        # Static quorum (controller.quorum.voters): no --standalone, which is for dynamic quorums.
        cmd = [
            java,
            *self._jvm_args(256),
            STORAGE_TOOL_CLASS,
            "format",
            "--config",
            str(self.data_dir / CONFIG_FILE),
            "--cluster-id",
            cluster_id,
            "--ignore-formatted",
        ]
        result = _run_tool(cmd, _FORMAT_TIMEOUT_S, f"Formatting {self.data_dir / KRAFT_DIR}")
        with (self.data_dir / OUT_FILE).open("a") as out:
            out.write(result.stdout + result.stderr)
        if result.returncode != 0:
            hint = " Kafka 4 needs Java 17+." if "UnsupportedClassVersionError" in result.stderr else ""
            raise LocalKafkaError(
                f"Formatting {self.data_dir / KRAFT_DIR} failed (exit {result.returncode}).{hint}\n"
                f"{result.stdout}{result.stderr}"
            )
        return cluster_id

    def _launch(self, java: str) -> None:
        cmd = [
            java,
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:+ExitOnOutOfMemoryError",
            *self._jvm_args(self.heap_mb),
            MAIN_CLASS,
            str((self.data_dir / CONFIG_FILE).resolve()),  # what running_broker recognises it by
        ]
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with (self.data_dir / OUT_FILE).open("ab") as out:
            out.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting on {self.bootstrap}\n".encode())
            out.flush()
            if self._die_with_parent and sys.platform.startswith("linux"):
                cmd = [sys.executable, "-I", "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._proc = proc
        pid_file = self.data_dir / PID_FILE
        pid_file.write_text(f"{proc.pid}\n")
        self._finalizer = weakref.finalize(self, _terminate, proc, 10.0, pid_file)

    def _wait_until_ready(self, deadline: float) -> None:
        """Wait until this broker (not some other process on the port) lists itself in a metadata response."""
        assert self._proc is not None
        admin: AdminClient | None = None
        last_error = "no connection yet"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self.stop()
                raise LocalKafkaError(
                    f"Kafka exited with code {code} while starting on {self.bootstrap} "
                    f"(a port taken by another process is a common cause).\n{self.log_tail()}"
                )
            if not _accepts_connections(self._port or 0):
                time.sleep(0.1)
                continue
            admin = admin or self._admin()
            try:
                metadata = admin.list_topics(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
            except KafkaException as exc:
                last_error = str(exc.args[0])
                continue
            if metadata.cluster_id != self._cluster_id:
                last_error = f"{self.bootstrap} answers for cluster {metadata.cluster_id}, not {self._cluster_id}"
            elif metadata.brokers:
                return
            else:
                last_error = "broker not registered yet"
            time.sleep(0.1)
        self.stop(timeout=5.0)
        raise LocalKafkaError(
            f"Kafka did not come up on {self.bootstrap} in time ({last_error}); it was stopped.\n{self.log_tail()}"
        )
