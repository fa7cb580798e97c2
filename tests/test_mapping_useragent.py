"""User-agent parsing reproduces the reference's table (amplitude-actions.md section 5.6)."""

from __future__ import annotations

import pytest

from edgeproxy.mapping.useragent import parse_user_agent_properties

CASES = [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
     {"os_name": "Windows", "os_version": "124", "device_model": "Windows"}),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
     {"os_name": "Mac OS", "os_version": "124", "device_model": "Mac OS"}),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15",
     {"os_name": "Mac OS", "os_version": "17", "device_model": "Mac OS"}),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
     {"os_name": "Linux", "os_version": "125", "device_model": "Linux"}),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
     {"os_name": "iOS", "os_version": "17", "device_manufacturer": "Apple", "device_model": "iPhone", "device_type": "mobile"}),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.111 Mobile/15E148 Safari/604.1",
     {"os_name": "iOS", "os_version": "124", "device_manufacturer": "Apple", "device_model": "iPhone", "device_type": "mobile"}),
    ("Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
     {"os_name": "iOS", "os_version": "16", "device_manufacturer": "Apple", "device_model": "iPad", "device_type": "tablet"}),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
     {"os_name": "Android", "os_version": "124", "device_manufacturer": "Google", "device_model": "Pixel 8", "device_type": "mobile"}),
    ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
     {"os_name": "Android", "os_version": "124", "device_model": "K", "device_type": "mobile"}),
    ("Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
     {"os_name": "Android", "os_version": "24", "device_manufacturer": "Samsung", "device_model": "SM-S918B", "device_type": "mobile"}),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", {}),
    ("Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/UQ1A.240205.004)",
     {"os_name": "Android", "device_manufacturer": "Google", "device_model": "Pixel 8", "device_type": "mobile"}),
]


@pytest.mark.parametrize("ua, expected", CASES, ids=[c[0][:40] for c in CASES])
def test_reference_table(ua: str, expected: dict) -> None:
    assert parse_user_agent_properties(ua) == expected


def test_high_entropy_user_agent_data_wins() -> None:
    ua = CASES[1][0]
    got = parse_user_agent_properties(ua, {"platformVersion": "14.4.1", "model": ""})
    assert got == {"os_name": "Mac OS", "os_version": "14.4.1", "device_model": ""}


@pytest.mark.parametrize("ua", [None, "", 5])
def test_no_user_agent(ua) -> None:
    assert parse_user_agent_properties(ua) == {}
