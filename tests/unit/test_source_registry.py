"""The one source registry: every adapter declares itself, the HTTP route and the docs follow it."""

from __future__ import annotations

from pathlib import Path

from ingest import sources
from ingest.routes import SourceName

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "sources.md").read_text(encoding="utf-8")


def test_every_adapter_is_registered_under_the_name_it_declares() -> None:
    for name, adapter in sources.ADAPTERS.items():
        assert adapter.name == name
        module = __import__(f"ingest.sources.{name.replace('-', '_')}", fromlist=["SOURCE"])
        assert module.SOURCE == name
        assert module.ADAPTER is adapter


def test_the_webhook_route_serves_exactly_the_webhook_sources() -> None:
    patterns = [getattr(m, "pattern", None) for m in SourceName.__metadata__[0].metadata]
    assert f"^({'|'.join(sources.WEBHOOK_SOURCES)})$" in patterns
    assert all(sources.get(name).signature is not None for name in sources.WEBHOOK_SOURCES)


def test_the_docs_name_every_source_and_how_it_authenticates() -> None:
    for name, adapter in sources.ADAPTERS.items():
        assert f"`{name}`" in DOCS, f"docs/sources.md does not name the {name} source"
        if adapter.signature is not None:
            assert adapter.signature.header in DOCS, f"docs/sources.md does not give {name}'s header"
