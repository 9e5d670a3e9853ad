"""/docs works on a closed network: every asset comes from the gateway (a pinned package), and the page says why it
cannot sign requests."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from swagger_ui_bundle import swagger_ui_path

from gateway.settings import load_settings
from tests.helpers.gateways import running_gateway


async def test_docs_load_nothing_from_elsewhere_and_say_they_cannot_sign(tmp_path: Path, credit_url: str) -> None:
    settings = load_settings(data_dir=tmp_path, upstream_urls={"credit": credit_url})
    async with running_gateway(settings) as gateway, httpx.AsyncClient(base_url=gateway.url) as client:
        page = await client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'self'" in csp, "a browser may load nothing from a CDN"
        html = page.text
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "no asset from another host"
        assert "<script>" not in html, "no inline script (the CSP would refuse it)"
        notice = re.search(r'<p id="signing-notice"[^>]*>(.*?)</p>', html, flags=re.DOTALL)
        assert notice is not None and "cannot sign requests" in notice.group(1)
        assert "private key" in notice.group(1) and "msjx-gateway call" in notice.group(1)

        loaded = re.findall(r"""(?:src|href)="(/docs/assets/[^"]+)\"""", html)
        assert set(loaded) == {
            "/docs/assets/swagger-ui.css",
            "/docs/assets/favicon-32x32.png",
            "/docs/assets/swagger-ui-bundle.js",
            "/docs/assets/init.js",
        }
        package = Path(str(swagger_ui_path))
        for path in loaded:
            asset = await client.get(path)
            assert asset.status_code == 200, path
            if path != "/docs/assets/init.js":
                assert asset.content == (package / path.rsplit("/", 1)[1]).read_bytes(), (
                    "served as the package ships it"
                )
        init = (await client.get("/docs/assets/init.js")).text
        assert '"/openapi.json"' in init and "validatorUrl: null" in init, "no call to the public validator either"
        assert not re.search(r"https?://", init)

        for name in ("../../../../etc/passwd", "index.j2", "swagger-ui-bundle.js.map"):
            assert (await client.get(f"/docs/assets/{name}")).status_code == 404, name
        spec = (await client.get("/openapi.json")).json()
        assert not any(path.startswith("/docs") for path in spec["paths"])
