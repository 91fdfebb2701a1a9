"""A gRPC server interceptor that times every unary call where it is served.

The time runs from the handler receiving the decoded request to it returning the response (or
ending the call with a status), into the method's histogram in :class:`Latencies`: what the
server itself adds, without the network, the client or the queue before a worker thread takes
the call. Streaming methods (Watch) last as long as the client wants and are not timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from guestinit.fabric import api
from guestinit.fabric.latency import Latencies


def method_name(full: str) -> str:
    """``/guestinit.fabric.v1.FabricController/ListPartitions`` -> ``ListPartitions``; the
    methods of other services keep their service: ``grpc.health.v1.Health/Check``."""
    service, _, method = full.lstrip("/").rpartition("/")
    return method if service == api.SERVICE else f"{service}/{method}"


class LatencyInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, latencies: Latencies) -> None:
        self.latencies = latencies

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        histogram = self.latencies.histogram(method_name(details.method))
        behavior = handler.unary_unary

        def timed(request: Any, context: Any) -> Any:
            ok = False
            start = time.perf_counter()
            try:
                response = behavior(request, context)
                ok = True
                return response
            finally:
                histogram.record(time.perf_counter() - start, ok)

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
