"""The leaderboard: per model × GPU type × engine, the best cost per 1M output tokens and
the best throughput measured at the SLO; and its results as a versioned JSON bundle
(export, and an import that validates everything before writing anything)."""

import hashlib

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from lab import bundles
from lab.models import LeaderboardEntry, ResultSource

FILTERS = ("model", "gpu_type", "engine", "family")


def entries_visible(*, org) -> QuerySet[LeaderboardEntry]:
    """This organization's results and the shared ones (published or imported by staff)."""
    return LeaderboardEntry.objects.filter(Q(organization__isnull=True) | Q(organization=org))


def _filtered(qs, filters: dict) -> QuerySet[LeaderboardEntry]:
    for key in FILTERS:
        value = (filters.get(key) or "").strip()
        if value:
            qs = qs.filter(**{key: value[:100]})
    return qs


def leaderboard(*, org, filters: dict | None = None) -> list[dict]:
    """One row per model × GPU type × engine: the best throughput and the best cost, each
    with the entry it came from."""
    rows: dict[tuple, dict] = {}
    for e in _filtered(entries_visible(org=org), filters or {}).order_by("pk"):
        key = (e.model, e.gpu_type, e.engine)
        row = rows.setdefault(
            key,
            {
                "model": e.model,
                "family": e.family,
                "gpu_type": e.gpu_type,
                "engine": e.engine,
                "best_throughput": None,
                "best_cost": None,
                "results": 0,
            },
        )
        row["results"] += 1
        if (
            row["best_throughput"] is None
            or e.output_tokens_per_s > row["best_throughput"].output_tokens_per_s
        ):
            row["best_throughput"] = e
        if e.cost_per_1m_output_tokens is not None and (
            row["best_cost"] is None
            or e.cost_per_1m_output_tokens < row["best_cost"].cost_per_1m_output_tokens
        ):
            row["best_cost"] = e
    return sorted(rows.values(), key=lambda r: (r["model"], r["gpu_type"], r["engine"]))


def entry_as_result(e: LeaderboardEntry) -> dict:
    return {
        "model": e.model,
        "family": e.family,
        "engine": e.engine,
        "engine_version": e.engine_version,
        "gpu_type": e.gpu_type,
        "gpu_count": e.gpu_count,
        "objective": e.objective,
        "launch": e.launch,
        "output_tokens_per_s": e.output_tokens_per_s,
        "ttft_p95_ms": e.ttft_p95_ms,
        "itl_p95_ms": e.itl_p95_ms,
        "cost_per_1m_output_tokens": e.cost_per_1m_output_tokens,
        "slo": e.slo,
        "workload": e.workload,
        "provenance": e.provenance,
        "measured_at": e.measured_at.isoformat(),
    }


def leaderboard_export(*, org, filters: dict | None = None) -> dict:
    entries = _filtered(entries_visible(org=org), filters or {}).order_by("pk")
    return bundles.render_bundle([entry_as_result(e) for e in entries], exported_at=timezone.now())


@transaction.atomic
def leaderboard_import(*, org, user, raw: bytes | str) -> list[LeaderboardEntry]:
    """Import a bundle: all results or none. Staff imports are shared with every
    organization; a member's stay with their organization. A result already imported
    (same content) is not added twice."""
    results = bundles.parse_bundle(raw)
    if not results:
        raise ValidationError({"bundle": "results: the bundle holds no results."})
    owner = None if getattr(user, "is_staff", False) else org
    created = []
    for r in results:
        digest = hashlib.sha256(repr(sorted(r.items())).encode()).hexdigest()[:32]
        if entries_visible(org=org).filter(provenance__import_digest=digest).exists():
            continue
        created.append(
            LeaderboardEntry.objects.create(
                organization=owner,
                source=ResultSource.IMPORT,
                **{k: r[k] for k in r if k != "provenance"},
                provenance={**r["provenance"], "import_digest": digest},
            )
        )
    return created
