"""An identity provider's signing keys, fetched from its JWKS URL (RS256/ES256).

Fetching costs the identity provider a request and the caller a round trip, and any client can
send a token naming a key id of its choosing, so fetches are few and never pile up:
- one at a time: a verification that needs the keys while a fetch is under way waits for that
  fetch instead of starting its own (a burst of 40 tokens with unknown key ids: one fetch);
- an unknown key id (the provider may have rotated its keys) fetches again at most every
  REFETCH_SECONDS, counted from when the last fetch started;
- through an HTTP client of its own, so a fetch never queues behind other outgoing requests
  (tornado's shared client takes 10 at a time) nor they behind it. It is made on the first
  fetch, on the loop that serves (a client belongs to the loop it was made on); `close()` it
  when the application stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Callable

import jwt
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

log = logging.getLogger(__name__)

REFETCH_SECONDS = 10
FETCH_TIMEOUT_SECONDS = 5


class JwksKeys:
    def __init__(self, url: str, algorithm: str, cache_seconds: float,
                 clock: Callable[[], float] = time.monotonic):
        self._url = url
        self._algorithm = algorithm
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._fetch: asyncio.Task | None = None
        self._client: AsyncHTTPClient | None = None
        # Counts the key sets fetched: a token verified with an older one is checked again.
        self.generation = 0

    def fresh(self) -> bool:
        """Within `auth.jwks_cache_seconds` of the last fetch (or of a failed one, for 10 s)."""
        return self._clock() - self._fetched_at < self._cache_seconds

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        """The key a token's `kid` names (the only key, when the token names none), or None."""
        if self._fetch is not None or not self.fresh() or (kid not in self._keys
                                                           and self._may_refetch()):
            await self._refresh()
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def close(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
        if self._client is not None:
            self._client.close()
            self._client = None

    def _may_refetch(self) -> bool:
        return self._clock() - self._attempted_at > REFETCH_SECONDS

    async def _refresh(self) -> None:
        """Join the fetch under way, or start one."""
        if self._fetch is None:
            self._attempted_at = self._clock()
            self._fetch = asyncio.get_running_loop().create_task(self._fetch_keys())
        # Shielded: one waiting request given up must not cancel the fetch the others wait for.
        await asyncio.shield(self._fetch)

    async def _fetch_keys(self) -> None:
        try:
            if self._client is None:
                self._client = AsyncHTTPClient(force_instance=True)
            try:
                response = await self._client.fetch(self._url, request_timeout=FETCH_TIMEOUT_SECONDS)
                keys = self._parse(response.body)
            except (HTTPClientError, OSError, ValueError, AttributeError) as error:
                log.warning("could not fetch JWKS from %s: %s", self._url, error)
                # Keep the keys there are and try again in REFETCH_SECONDS, not on every request.
                self._fetched_at = self._clock() - self._cache_seconds + REFETCH_SECONDS
                return
            self._keys = keys
            self._fetched_at = self._clock()
            self.generation += 1
        finally:
            self._fetch = None

    def _parse(self, body: bytes) -> dict[str | None, jwt.PyJWK]:
        keys = {}
        for entry in json.loads(body).get("keys", []):
            if entry.get("use", "sig") != "sig":
                continue
            try:
                keys[entry.get("kid")] = jwt.PyJWK(entry, algorithm=self._algorithm)
            except jwt.PyJWTError:
                continue
        return keys
