"""schemathesis against the server's own OpenAPI schema, generation endpoints only, bounded examples:
whatever it sends, the server never answers 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from pagedserve.server.app import create_app
from pagedserve.server_config import ServerConfig

from .conftest import ServerProcess

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]
MAX_EXAMPLES = 30
# Keep generations short on a CPU: any larger positive token budget is clamped (other values pass as made).
MAX_TOKENS_CAP = 8

_OPENAPI = create_app(ServerConfig(), lambda: None, ["SmolLM2-135M-Instruct"]).openapi()  # type: ignore[arg-type,return-value]
schema = schemathesis.openapi.from_dict(_OPENAPI).include(path_regex=r"^/v1/(chat/)?completions$")


def _clamp(body: Any) -> None:
    """Bound the generation length (absent or null means the rest of the 2048-token context)."""
    if not isinstance(body, dict):
        return
    for field in ("max_tokens", "max_completion_tokens", "min_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS_CAP:
            body[field] = MAX_TOKENS_CAP
    if body.get("max_completion_tokens") is None and body.get("max_tokens") is None:
        body["max_tokens"] = MAX_TOKENS_CAP


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_generation_endpoints_never_5xx(case: Any, server: ServerProcess) -> None:
    _clamp(case.body)
    response = case.call(base_url=server.url, timeout=120)
    assert response.status_code < 500, (case.body, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["type"] and len(error["message"]) <= 1024
