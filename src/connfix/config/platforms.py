"""Managed-service profiles: `database.platform` says who runs the server, and so whose
sessions are the platform's own, which slots are reserved beyond PostgreSQL's, and what
way in exists when the ordinary slots are full. Each fact is from the provider's own
documentation (docs/reliability.md, "Managed databases", cites each page); what the lab
emulates and what was never checked against the real service is said there too.

Self-managed is PostgreSQL as shipped: superuser_reserved_connections for superusers,
reserved_connections (16+) for roles with pg_use_reserved_connections.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SELF_MANAGED = "self-managed"
# the setting RDS and Aurora add: slots reserved for members of rds_superuser
RDS_SUPERUSER_RESERVED = "rds.rds_superuser_reserved_connections"
AZURE_RESERVED = 15  # "reserves 15 connections for physical replication and monitoring"


@dataclass(frozen=True)
class Platform:
    """What one platform changes about a server's slots and roles."""

    name: str
    label: str
    # login roles that are the platform's own: their sessions are shown as the platform's,
    # never a leak suspect, never terminated
    roles: tuple[str, ...]
    # the role the customer's administrator is a member of (no superuser is handed out)
    admin_role: str | None
    # the provider's own setting of extra reserved slots, read from the server
    reserved_setting: str | None = None
    # slots reserved by the provider in all (superuser_reserved_connections included),
    # where the documentation gives a number instead of a setting
    reserved_total: int = 0
    # what to configure as database.reserved_dsn when the ordinary slots are full
    way_in: str = ""
    sources: tuple[str, ...] = ()

    @property
    def managed(self) -> bool:
        """Tell whether a provider runs the server (no superuser is handed out)."""
        return self.name != SELF_MANAGED

    def platform_reserved(self, superuser_reserved: int, setting: int) -> int:
        """The slots the platform reserves beyond superuser_reserved_connections and
        reserved_connections, given the server's `setting` of reserved_setting (0 where
        the server has none)."""
        if self.reserved_setting:
            return max(0, setting)
        return max(0, self.reserved_total - superuser_reserved)


_RDS_WAY_IN = (
    "a role that is a member of rds_superuser (the master user is): it may use the"
    f" {RDS_SUPERUSER_RESERVED} slots; on PostgreSQL 16+ a member of rds_reserved may use"
    " the reserved_connections slots. Set database.reserved_dsn to such a role"
)
_RDS_SOURCES = (
    "https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/"
    "Appendix.PostgreSQL.CommonDBATasks.Roles.rds_superuser.html",
    "https://repost.aws/knowledge-center/rds-postgresql-error-connection-slots",
)

# Aurora's role model and reserve are RDS's (the same rds_superuser page, Aurora's guide)
_RDS = Platform(
    name="rds",
    label="Amazon RDS for PostgreSQL",
    roles=("rdsadmin", "rdsrepladmin"),
    admin_role="rds_superuser",
    reserved_setting=RDS_SUPERUSER_RESERVED,
    way_in=_RDS_WAY_IN,
    sources=_RDS_SOURCES,
)

PLATFORMS: dict[str, Platform] = {
    SELF_MANAGED: Platform(
        name=SELF_MANAGED,
        label="self-managed PostgreSQL",
        roles=(),
        admin_role=None,
        way_in=(
            "database.reserved_dsn (a role granted pg_use_reserved_connections, PostgreSQL"
            " 16+) or database.admin_dsn (a superuser)"
        ),
    ),
    "rds": _RDS,
    "aurora": replace(
        _RDS,
        name="aurora",
        label="Amazon Aurora PostgreSQL",
        sources=(
            "https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/"
            "Appendix.PostgreSQL.CommonDBATasks.Roles.rds_superuser.html",
            _RDS_SOURCES[1],
        ),
    ),
    "cloudsql": Platform(
        name="cloudsql",
        label="Google Cloud SQL for PostgreSQL",
        roles=("cloudsqladmin", "cloudsqlagent", "cloudsqlimportexport", "cloudsqlreplica"),
        admin_role="cloudsqlsuperuser",
        way_in=(
            "Cloud SQL hands out no superuser (cloudsqlsuperuser is not one), so the"
            " superuser_reserved_connections slots are the platform's. On PostgreSQL 16+,"
            " set the reserved_connections flag and grant pg_use_reserved_connections to a"
            " role, then set database.reserved_dsn to it"
        ),
        sources=("https://cloud.google.com/sql/docs/postgres/users",),
    ),
    "azure": Platform(
        name="azure",
        label="Azure Database for PostgreSQL flexible server",
        roles=("azuresu", "azure_superuser"),
        admin_role="azure_pg_admin",
        reserved_total=AZURE_RESERVED,
        way_in=(
            "Azure hands out no superuser (azure_pg_admin is not one), so its 15 reserved"
            " slots are the platform's. On PostgreSQL 16+, set reserved_connections and"
            " grant pg_use_reserved_connections to a role, then set database.reserved_dsn"
            " to it"
        ),
        sources=("https://learn.microsoft.com/azure/postgresql/flexible-server/concepts-limits",),
    ),
}

NAMES = tuple(PLATFORMS)


def platform(name: str) -> Platform:
    """The profile named `name` (one of NAMES)."""
    return PLATFORMS[name]
