"""Sessions: a client's visits are counted in one guest, the one its ``popek-session`` cookie names.

The cookie is ``<client id>.<vm id>``: the client id (16 hex digits, the guest's key for its counter) and the
VM that holds the count, so the front-end keeps no table and several front-ends agree. A first visit, an
unreadable cookie, or a cookie naming a VM that is not running gets a VM from the policy (and a new cookie).
"""

from __future__ import annotations

import re
import secrets

from popek.vmm.serve.dispatch import Dispatcher, Reply, ServeError, estimate_cost
from popek.vmm.serve.services import Request

COOKIE = "popek-session"
_COOKIE = re.compile(r"^([0-9a-f]{16})\.([A-Za-z0-9_-]{1,32})$")


class Sessions:
    """Routes ``/session`` to the VM that holds the client's count."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def visit(self, cookie: str, request_id: str = "") -> tuple[Reply, str]:
        """Count a visit; return the guest's reply and the cookie the client should hold from now on."""
        m = _COOKIE.match(cookie or "")
        client, vm_id = (m.group(1), m.group(2)) if m else (secrets.token_hex(8), "")
        request = Request("session", client.encode(), cost=estimate_cost("session", b""), request_id=request_id)
        names = self.dispatcher.names
        pinned = next((r for r in names.serving("session") if r.id == vm_id and r.running), None)
        if pinned is None:  # a new client, or its VM is gone (and its count with it)
            candidates = names.candidates(request)
            if not candidates:
                raise ServeError(503, "no running replica of session")
            pinned = candidates[0]
        reply = await self.dispatcher.call_on(pinned, request)
        return reply, f"{client}.{pinned.id}"
