"""The web server: uvicorn worker processes fed connections round-robin by their parent.

Worker processes that share one listening socket take new connections by racing for them, and
the worker whose event loop is already awake wins: clients that connect at the same moment often
all land in one process, which runs Python on one core while the others idle, and keep-alive
keeps them there. (Node's cluster module documents the same and round-robins by default.) Here
the parent accepts every connection and passes it to the next worker over a UNIX socket
(SCM_RIGHTS); each worker runs uvicorn's HTTP protocol on the connections it is given. A worker
that dies is started again; SIGTERM or SIGINT stops accepting and lets the workers finish
their requests.

    python -m factory.serve [--host 127.0.0.1] [--port 8000] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

import uvicorn

log = logging.getLogger("factory.serve")

APP = "factory.asgi:application"


# --- the parent --------------------------------------------------------------------------------


class Worker:
    """A worker process and the parent's end of the channel it receives connections on."""

    def __init__(self, index: int, options: list[str]) -> None:
        self.index = index
        self.channel, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-m", "factory.serve", "--channel-fd", str(child_end.fileno()), *options]
        self.process = subprocess.Popen(command, pass_fds=[child_end.fileno()])
        child_end.close()

    def alive(self) -> bool:
        return self.process.poll() is None

    def hand(self, connection: socket.socket) -> bool:
        """Pass the connection to the worker; False if the worker is gone."""
        try:
            socket.send_fds(self.channel, [b"c"], [connection.fileno()])
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self.channel.close()  # the worker sees its channel end and finishes
        if self.alive():
            self.process.send_signal(signal.SIGTERM)


class Supervisor:
    def __init__(self, listener: socket.socket, workers: int, options: list[str], grace: float) -> None:
        self.listener = listener
        self.options = options
        self.grace = grace
        self.workers = [Worker(i, options) for i in range(workers)]
        self.next = 0
        self.stopping = False

    def serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            while not self.stopping:
                if selector.select(timeout=0.5):
                    self.accept()
                self.replace_dead_workers()
        self.stop()

    def accept(self) -> None:
        try:
            connection, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        with connection:
            for _ in range(len(self.workers)):
                worker = self.workers[self.next]
                self.next = (self.next + 1) % len(self.workers)
                if worker.alive() and worker.hand(connection):
                    return
            log.error("no worker could take a connection; closing it")

    def replace_dead_workers(self) -> None:
        for i, worker in enumerate(self.workers):
            if not worker.alive() and not self.stopping:
                log.warning("worker %d exited with %s; starting it again", i, worker.process.returncode)
                worker.channel.close()
                self.workers[i] = Worker(i, self.options)

    def stop(self) -> None:
        self.listener.close()
        for worker in self.workers:
            worker.stop()
        deadline = time.monotonic() + self.grace + 1
        for worker in self.workers:
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()


def run_supervisor(args: argparse.Namespace) -> None:
    listener = socket.create_server((args.host, args.port), backlog=2048)
    listener.setblocking(False)
    options = [
        f"--log-level={args.log_level}",
        f"--timeout-keep-alive={args.timeout_keep_alive}",
        f"--timeout-graceful-shutdown={args.timeout_graceful_shutdown}",
    ]
    supervisor = Supervisor(listener, max(1, args.workers), options, args.timeout_graceful_shutdown)

    def stop(signum, frame) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving on http://%s:%d with %d worker(s)", args.host, args.port, len(supervisor.workers))
    supervisor.serve()


# --- a worker ----------------------------------------------------------------------------------


class HandedConnectionsServer(uvicorn.Server):
    """A uvicorn server with no listening socket of its own: it serves the connections the
    parent passes over `channel`, and finishes when the channel closes."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket) -> None:
        super().__init__(config)
        self.channel = channel

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=[])
        loop = asyncio.get_running_loop()
        self.channel.setblocking(False)
        loop.add_reader(self.channel.fileno(), self.receive, loop)

    def receive(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.channel, 1, 1)
            except (BlockingIOError, InterruptedError):
                return
            if not data and not fds:  # the parent closed the channel: finish
                loop.remove_reader(self.channel.fileno())
                self.should_exit = True
                return
            for fd in fds:
                connection = socket.socket(fileno=fd)
                loop.create_task(self.serve_connection(loop, connection))

    async def serve_connection(self, loop: asyncio.AbstractEventLoop, connection: socket.socket) -> None:
        config = self.config

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop
            )

        try:
            await loop.connect_accepted_socket(protocol, connection)
        except OSError:
            connection.close()

    async def shutdown(self, sockets=None) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
        await super().shutdown(sockets=sockets)


def run_worker(args: argparse.Namespace) -> None:
    channel = socket.socket(fileno=args.channel_fd)
    config = uvicorn.Config(
        APP,
        lifespan="off",
        log_level=args.log_level,
        access_log=False,
        timeout_keep_alive=args.timeout_keep_alive,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
    )
    config.load()
    # What loading made (modules, models, URL and template machinery) lives as long as the worker:
    # kept out of the collector's full passes, which pause the event loop, and with many open
    # event streams have their objects to walk already.
    gc.collect()
    gc.freeze()
    HandedConnectionsServer(config, channel).run()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument(
        "--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "0")) or os.cpu_count() or 1
    )
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--timeout-keep-alive", type=int, default=5, help="seconds an idle connection stays open"
    )
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=int,
        default=10,
        help="seconds given to open requests and streams on stop",
    )
    parser.add_argument("--channel-fd", type=int, help=argparse.SUPPRESS)  # a worker's end of its channel
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.channel_fd is not None:
        run_worker(args)
    else:
        run_supervisor(args)


if __name__ == "__main__":
    main()
