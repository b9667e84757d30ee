"""The `streamwatch` connection type: the host (an endpoint such as
`https://streamwatch.internal:50051`, or a host with the port in its own
field), the tenant's token as the password, and TLS in the extras:
`{"tls": true, "ca_certificate": "/path/ca.pem", "server_name": "...",
"client_certificate": "/path/crt.pem", "client_key": "/path/key.pem"}`
(`ca_certificate_pem` takes the PEM itself). Makes clients; calls nothing.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Union

from airflow.sdk import BaseHook

from streamwatch import TLS, AsyncClient, Backoff, Client

_TLS_EXTRAS = ("ca_certificate", "ca_certificate_pem", "server_name", "client_certificate", "client_key")


def client_settings(conn: Any) -> Dict[str, Any]:
    """`Client` keyword arguments (endpoint, token, tls) from an Airflow connection."""
    host = (conn.host or "").strip()
    if not host:
        raise ValueError(f"connection {conn.conn_id!r} has no host: set it to the streamwatch endpoint")
    extra = conn.extra_dejson or {}
    unknown = sorted(set(extra) - {"tls", *_TLS_EXTRAS})
    if unknown:
        raise ValueError(f"connection {conn.conn_id!r} has unknown extras {unknown}; known: tls, {', '.join(_TLS_EXTRAS)}")
    endpoint = host if conn.port is None else f"{host}:{conn.port}"
    tls: Union[None, bool, TLS] = None
    if extra.get("tls") is not None:
        if not isinstance(extra["tls"], bool):
            raise ValueError(f"connection {conn.conn_id!r}: the extra tls must be true or false")
        tls = extra["tls"]
    if any(extra.get(k) for k in _TLS_EXTRAS):
        if tls is False:
            raise ValueError(f"connection {conn.conn_id!r}: TLS extras given with tls false")
        ca: Optional[Union[str, bytes]] = extra.get("ca_certificate")
        if extra.get("ca_certificate_pem"):
            ca = extra["ca_certificate_pem"].encode()
        tls = TLS(
            ca_certificate=ca,
            server_name=extra.get("server_name") or None,
            client_certificate=extra.get("client_certificate"),
            client_key=extra.get("client_key"),
        )
    if tls and "://" not in endpoint:
        endpoint = "https://" + endpoint
    return {"endpoint": endpoint, "token": conn.password or None, "tls": tls}


class StreamwatchHook(BaseHook):
    """Clients for the streamwatch server a connection names."""

    conn_name_attr = "streamwatch_conn_id"
    default_conn_name = "streamwatch_default"
    conn_type = "streamwatch"
    hook_name = "streamwatch"

    def __init__(self, streamwatch_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.streamwatch_conn_id = streamwatch_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> Dict[str, Any]:
        return {
            "hidden_fields": ["schema", "login"],
            "relabeling": {"host": "Endpoint", "password": "Token"},
            "placeholders": {
                "host": "https://streamwatch.internal:50051",
                "password": "the tenant's bearer token",
                "extra": json.dumps({"tls": True, "ca_certificate": "/etc/streamwatch/ca.pem"}),
            },
        }

    def get_client(self) -> Client:
        return Client(**client_settings(self.get_connection(self.streamwatch_conn_id)))

    async def get_async_client(self, backoff: Backoff = Backoff()) -> AsyncClient:
        conn = await self.aget_connection(self.streamwatch_conn_id)
        return AsyncClient(**client_settings(conn), backoff=backoff)
