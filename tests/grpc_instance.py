"""A grpcio instance and a router (not started yet) with a `proto=grpc` listener routing to it: what every
gRPC test through the real router starts with."""

from __future__ import annotations

from concurrent import futures

import grpc

from tests.router_proc import RouterProc, free_port


def instance_and_router(handlers: grpc.GenericRpcHandler, prefix: str, *flags: str, options: list | None = None,
                        threads: int = 4) -> tuple[grpc.Server, RouterProc, int]:
    """A started grpcio server with `handlers`, and a router routing `prefix` to it (`proto=grpc`) with an h2c
    listener on a free port beside its HTTP one: (server, router, that listener's port)."""
    srv = grpc.server(futures.ThreadPoolExecutor(threads), options=options)
    srv.add_generic_rpc_handlers((handlers,))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    gport = free_port()
    r = RouterProc("-registry.backend", "static", "-registry.static.routes",
                   f'route add svc {prefix} grpc://127.0.0.1:{port} opts "proto=grpc"', *flags,
                   env={"ROUTER_LISTENER": "own"})
    r.flags[1] += f",127.0.0.1:{gport};proto=grpc"
    return srv, r, gport
