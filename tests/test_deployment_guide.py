"""docs/deployment.md is copied into production: what its nginx configuration does must stay
safe."""

from __future__ import annotations

import re
from pathlib import Path

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"


def nginx_configurations(text: str) -> list[str]:
    return re.findall(r"```nginx\n(.*?)```", text, re.DOTALL)


def proxy_blocks(configuration: str) -> list[str]:
    """Each `location` block (its braces balanced) that passes requests on with proxy_pass."""
    blocks = []
    for start in re.finditer(r"\blocation\b[^{;]*\{", configuration):
        depth, end = 1, start.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(configuration[end], 0)
            end += 1
        block = configuration[start.start():end]
        if re.search(r"^\s*proxy_pass\s", block, re.MULTILINE):
            blocks.append(block)
    return blocks


def test_every_proxy_block_of_the_guide_overwrites_x_real_ip():
    """With server.xheaders, tornado takes the client's address from X-Real-IP before
    X-Forwarded-For: a location that does not set it passes on the one the client sent, and
    the client picks its own address (150 bad tokens from rotating addresses were never
    throttled; 61 "from" a victim's address locked the victim out)."""
    blocks = [block for configuration in nginx_configurations(GUIDE.read_text(encoding="utf-8"))
              for block in proxy_blocks(configuration)]
    assert len(blocks) >= 2, "the guide's nginx configuration was not found"
    for block in blocks:
        assert re.search(r"^\s*proxy_set_header\s+X-Real-IP\s+\$remote_addr\s*;", block,
                         re.MULTILINE | re.IGNORECASE), block
