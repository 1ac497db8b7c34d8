"""Reading ``/metrics`` in tests through prometheus_client's own parser: a test names the sample it means (name and
labels) rather than how the exposition happens to write it (label order, ``1`` or ``1.0``)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def metric_samples(text: str, name: str, **labels: str) -> list[Sample]:
    """The samples named ``name`` (as exposed: ``lwc_http_requests_total``, ``..._bucket``) whose labels include
    ``labels``."""
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample named ``name`` with exactly ``labels``; None when there is none."""
    values = [sample.value for sample in metric_samples(text, name, **labels) if sample.labels == labels]
    assert len(values) <= 1, f"{name} {labels}: {len(values)} samples"
    return values[0] if values else None
