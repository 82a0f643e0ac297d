"""The request body side of a client connection's exchange (a base of exchange.Exchange): the
body on its way to the backend as the router framed it (a length, or chunks through the trailer
filter), the app's body limit, the backend's pace, and a client that stops in the middle. Sans-IO
like the rest of the machine."""
from __future__ import annotations

import logging

from mux_router.http1 import HttpError
from mux_router.response import EXCHANGE

log = logging.getLogger("mux-router")


class RequestBodySide:
    """What Exchange does with a request body's bytes (`body`: the bytes still due, an int, or the
    TrailerFilter of a chunked body; None once it is all in)."""

    def backend_write_paused(self, paused: bool) -> None:
        """The backend takes the request body slower than the client sends it (the transport stops
        reading the client meanwhile): the server's pace is what is waited for then."""
        if self.body is None or self.state is not EXCHANGE:
            return
        if paused:
            self.io.client_deadline(None)
            self.io.server_deadline(self.config.timeouts.server)
        else:
            self.io.server_deadline(None)
            self.io.client_deadline(self.config.timeouts.client)

    def _upload(self) -> None:
        data, body = self.buf, self.body
        if data:
            if type(body) is int:
                take = data[:body] if len(data) > body else data
                self.buf = data[len(take):]
                self.body = body = body - len(take)
                out = take
            else:
                try:
                    out, used = body.feed(data)
                    if self.body_limit and body.decoder.body_bytes > self.body_limit:
                        raise HttpError(413, f"the body is larger than {self.body_limit} bytes")
                except HttpError as e:
                    self._bad_body(e)
                    return
                self.buf = data[used:]
                if body.done:
                    self.body = body = 0
            self.body_in += len(out)
            if out:
                self.io.to_backend(out)
            if self.reading_paused:         # piled up while the backend was being found
                self.reading_paused = False
                self.io.client_reading(True)
        if body == 0:
            self.body = None
            self.io.client_deadline(None)
            if self.complete:
                self._end(keep=self.keep)
            elif self.resp is None:
                self._server_deadline()
        elif self.client_eof:
            self._client_gone("client closed in the middle of the request body")
        elif not self.complete:
            self.io.client_deadline(self.config.timeouts.client)

    def _bad_body(self, error: HttpError) -> None:
        self.note = f"bad request body: {error.reason}"
        if self.resp is None and not self.sent:
            self._release(False)
            self._answer(error.status, error.reason, termination="PD")
        else:
            self.termination = "PD"
            self._end(keep=False)

    def _client_gone(self, reason: str) -> None:
        """The client stopped sending its body (closed or too slow)."""
        if self.resp is None and not self.sent:
            self.status = 499
        self.note, self.termination = "client went away during the request body", "CD"
        log.debug("%s: %s", self.route, reason)
        self._end(keep=False)
