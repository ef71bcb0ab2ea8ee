"""The request path's CPU per document (issue 17, section 6): the HTTP client skips the cookie
jar for answers that set no cookie, and still keeps a cookie an answer sets."""

from __future__ import annotations

import http.cookiejar

import httpx
import pytest

from extractkit import ZeroShot
from extractkit._llm import make_client

from .conftest import BASE_URL


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_answers_without_a_cookie_skip_the_cookie_jar_and_one_with_a_cookie_is_kept(
    mock_api, monkeypatch, transport
):
    passes = []
    real = http.cookiejar.CookieJar.extract_cookies

    def counted(self, response, request):
        passes.append(1)
        return real(self, response, request)

    monkeypatch.setattr(http.cookiejar.CookieJar, "extract_cookies", counted)
    mock_api.get("/plain").mock(return_value=httpx.Response(200, json={}))
    mock_api.get("/sets").mock(
        return_value=httpx.Response(200, json={}, headers={"set-cookie": "route=b; Path=/"})
    )
    client = make_client(
        ZeroShot(model="gpt-4o-mini", api_key="sk-test", base_url=BASE_URL, transport=transport)
    )
    try:
        http_client = client._client
        await http_client.get(f"{BASE_URL}/plain")
        assert passes == [] and len(http_client.cookies) == 0
        await http_client.get(f"{BASE_URL}/sets")
        assert passes == [1] and http_client.cookies.get("route") == "b"
    finally:
        await client.close()
