"""A RabbitMQ cluster of several nodes on one machine, for tests, benchmarks and operators trying
the cluster shape (README, "Deploy on a cluster").

    python -m devtools.rabbitmq_cluster start [--nodes 3] [--port 5680] [--dir DIR]
    python -m devtools.rabbitmq_cluster stop --dir DIR

Each node gets its own name, AMQP port, distribution port, data folder, config file and env
file (the machine's own /etc/rabbitmq names a node and a listener on 5672, so both are overridden
with RABBITMQ_CONFIG_FILE and RABBITMQ_CONF_ENV_FILE). The nodes run as the ``rabbitmq`` user, in
a folder that user can enter, with the machine's Erlang cookie (HOME=/var/lib/rabbitmq), so the
machine's own node is left alone. Nodes start together; each is pinged until it answers, then
waited for, then joined to the first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
RABBIT_HOME = Path("/var/lib/rabbitmq")  # its .erlang.cookie is the machine's
RABBIT_USER = "rabbitmq"
START_TIMEOUT = 90.0


class ClusterError(RuntimeError):
    """A node did not start, stop or join."""


@dataclass(frozen=True)
class Node:
    name: str  # e.g. uanet1-3fa2@localhost
    port: int  # AMQP
    folder: Path

    @property
    def dist_port(self) -> int:
        return self.port + 20000

    def url(self, vhost: str = "/", user: str = "guest", password: str = "guest") -> str:
        path = "%2F" if vhost == "/" else vhost
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/{path}"


@dataclass
class RabbitCluster:
    """``nodes`` RabbitMQ nodes on ports ``port``, ``port+1``…, data under ``folder``."""

    folder: Path
    port: int = 5680
    size: int = 3
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    nodes: list[Node] = field(init=False)

    def __post_init__(self) -> None:
        self.nodes = [
            Node(f"uanet{i + 1}-{self.tag}@localhost", self.port + i, self.folder / f"node{i + 1}")
            for i in range(self.size)
        ]

    def urls(self, vhost: str = "/") -> str:
        """The value of UANET_AMQP_URL for this cluster: every node, comma-separated."""
        return ",".join(node.url(vhost) for node in self.nodes)

    # -- running the tools as the rabbitmq user ------------------------------------------------

    def _as_rabbit(self, node: Node, tool: str, *args: str) -> list[str]:
        env = [
            f"HOME={RABBIT_HOME}",
            f"RABBITMQ_CONF_ENV_FILE={node.folder / 'rabbitmq-env.conf'}",
            f"RABBITMQ_CONFIG_FILE={node.folder / 'rabbitmq.conf'}",
            f"RABBITMQ_ENABLED_PLUGINS_FILE={node.folder / 'enabled_plugins'}",
            f"RABBITMQ_NODENAME={node.name}",
        ]
        command = ["env", *env, str(RABBIT_BIN / tool), *args]
        if os.geteuid() == 0:
            return ["runuser", "-u", RABBIT_USER, "--", *command]
        return command

    def ctl(self, node: Node, *args: str, timeout: float = 60.0) -> str:
        done = subprocess.run(
            self._as_rabbit(node, "rabbitmqctl", "-n", node.name, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=RABBIT_HOME,
            check=False,
        )
        if done.returncode != 0:
            what = f"rabbitmqctl {' '.join(args)} on {node.name}"
            raise ClusterError(f"{what}: {done.stderr.strip()}")
        return done.stdout

    # -- life cycle ----------------------------------------------------------------------------

    def _prepare(self, node: Node) -> None:
        (node.folder / "log").mkdir(parents=True, exist_ok=True)
        (node.folder / "mnesia").mkdir(exist_ok=True)
        (node.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{node.port}\n"
            "disk_free_limit.absolute = 50MB\n"
            "loopback_users.guest = true\n"
        )
        (node.folder / "rabbitmq-env.conf").write_text(
            f"NODENAME={node.name}\n"
            f"NODE_PORT={node.port}\n"
            f"DIST_PORT={node.dist_port}\n"
            f"MNESIA_BASE={node.folder / 'mnesia'}\n"
            f"LOG_BASE={node.folder / 'log'}\n"
            "ERL_EPMD_ADDRESS=127.0.0.1\n"
            'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n'
        )
        (node.folder / "enabled_plugins").write_text("[].\n")

    def _own(self) -> None:
        """The rabbitmq user must enter every folder up to its data (not a root-only tmp)."""
        if os.geteuid() != 0:
            return
        user = pwd.getpwnam(RABBIT_USER)
        for parent in [self.folder, *self.folder.parents]:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                raise ClusterError(f"{parent} is not enterable by {RABBIT_USER}: use another --dir")
        for path in [self.folder, *self.folder.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)

    def start_node(self, node: Node, *, wait: bool = True) -> None:
        """Start (or restart) one node in the background; with ``wait``, until it runs."""
        subprocess.run(
            self._as_rabbit(node, "rabbitmq-server", "-detached"),
            cwd=RABBIT_HOME,
            check=True,
            capture_output=True,
            timeout=60,
        )
        if wait:
            self.wait_node(node)

    def wait_node(self, node: Node) -> None:
        # await_startup refuses a node epmd does not know yet: ping until it answers first.
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.ctl(node, "ping", timeout=15)
                break
            except (ClusterError, subprocess.TimeoutExpired) as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(f"{node.name} did not answer: {exc}") from None
                time.sleep(0.5)
        self.ctl(node, "await_startup", "--timeout", str(int(START_TIMEOUT)), timeout=START_TIMEOUT)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)
        for node in self.nodes:
            self._prepare(node)
        self._own()
        try:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(self.start_node, self.nodes))
            # One at a time: two nodes joining at once race in Mnesia's schema change.
            for node in self.nodes[1:]:
                self._join_first(node)
        except BaseException:
            self.stop()
            raise

    def _join_first(self, node: Node) -> None:
        self.ctl(node, "stop_app")
        self.ctl(node, "join_cluster", self.nodes[0].name)
        self.ctl(node, "start_app")

    def stop_node(self, node: Node) -> None:
        """A clean stop (what an operator's `systemctl stop` does)."""
        self.ctl(node, "stop", timeout=120)

    def os_pid(self, node: Node) -> int:
        return int(self.ctl(node, "eval", "list_to_integer(os:getpid()).").strip())

    def kill_node(self, node: Node) -> None:
        """SIGKILL of the node's Erlang VM: a machine lost, nothing flushed."""
        self.kill_pid(self.os_pid(node))

    def kill_pid(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """A signal to a node's Erlang VM by its process id (os_pid), and wait until it is gone:
        SIGKILL loses the machine, SIGTERM stops the node cleanly as ``stop`` does."""
        os.kill(pid, sig)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def running(self, node: Node) -> bool:
        try:
            self.ctl(node, "ping", timeout=10)
        except (ClusterError, subprocess.TimeoutExpired):
            return False
        return True

    def stop(self) -> None:
        """Stop every node (killing one that will not stop) and remove the data folder."""

        def halt(node: Node) -> None:
            with contextlib.suppress(ClusterError, subprocess.TimeoutExpired, ValueError):
                pid = self.os_pid(node)
                try:
                    self.ctl(node, "stop", timeout=60)
                except (ClusterError, subprocess.TimeoutExpired):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(halt, self.nodes))
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- queues --------------------------------------------------------------------------------

    def queue_leaders(self, vhost: str) -> dict[str, str]:
        """Queue name -> the node leading it (quorum queues), asked of any running node."""
        for node in self.nodes:
            with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
                out = self.ctl(node, "list_queues", "-p", vhost, "-q", "--no-table-headers",
                               "name", "leader", timeout=30)  # fmt: skip
                leaders = {}
                for line in out.splitlines():
                    name, _, leader = line.partition("\t")
                    if leader.strip():
                        leaders[name.strip()] = leader.strip()
                return leaders
        raise ClusterError("no node answers")

    def add_vhost(self, vhost: str) -> None:
        node = self.nodes[0]
        self.ctl(node, "add_vhost", vhost)
        self.ctl(node, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def node_named(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)


def default_folder() -> Path:
    # Not under a root-only temporary folder: /var/tmp is world-enterable.
    return Path(tempfile.mkdtemp(prefix="uanet-rabbitmq-", dir="/var/tmp"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.rabbitmq_cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a cluster and print its UANET_AMQP_URL")
    start.add_argument("--nodes", type=int, default=3)
    start.add_argument("--port", type=int, default=5680, help="AMQP port of the first node")
    start.add_argument("--dir", type=Path, default=None, help="data folder (default: /var/tmp)")
    stop = sub.add_parser("stop", help="stop the cluster started in --dir and remove it")
    stop.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "start":
        folder = args.dir or default_folder()
        cluster = RabbitCluster(folder, port=args.port, size=args.nodes)
        began = time.monotonic()
        try:
            cluster.start()
        except ClusterError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        (folder / "cluster").write_text(f"{cluster.tag} {cluster.port} {cluster.size}\n")
        print(f"started {cluster.size} nodes in {time.monotonic() - began:.1f}s, data in {folder}")
        print(f"UANET_AMQP_URL={cluster.urls()}")
        return 0
    tag, port, size = (args.dir / "cluster").read_text().split()
    RabbitCluster(args.dir, port=int(port), size=int(size), tag=tag).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
