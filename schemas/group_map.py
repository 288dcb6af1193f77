"""Which taxonomy queue each ITSM group is: the users' mapping from tool groups to queues.

Owns loading and validating the group-map YAML (`schemas/feedback_groups.yaml` is the
packaged example) and the lookups the feedback adapters make. No I/O besides reading the
file; nothing here guesses: a group that is not listed has no queue, and the feedback
naming it is dead-lettered by `schemas.feedback_parse` with the reason `unknown_group`.

File format (every queue must be a queue of the taxonomy, checked at load):

```yaml
version: 1
servicenow:
  groups:                       # assignment_group sys_id or display name -> queue
    "Network Operations": network_vpn
    "287ebd7da9fe198100f92cc8d1d2154e": network_vpn
  ignore_actors: [svc.ticket-router]   # the integration user writing decisions back
jira:
  team_fields: [Team, customfield_10001]   # changelog items that carry the resolver team
  groups: {"Network Operations": network_vpn}
  ignore_actors: [557058:f58131cb-b67d-43c7-b30d-6b58d40bd077]
zendesk:
  groups: {"360004077472": network_vpn}    # group id (or name) -> queue
  ignore_actors: ["20978001"]
```

Keys match after trimming, ignoring case; an id and a name may both be listed. Events made
by an `ignore_actors` user are not feedback: that is how the router's own write-back of
its decision (the connector setting the group the router chose) is kept from confirming
itself.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.ticket import SourceSystem

DEFAULT_TEAM_FIELDS = ("Team", "Assignment group", "Group")


class GroupMapError(ValueError):
    """The group-map file is missing, unreadable or inconsistent; the message says where."""


def _key(value: str) -> str:
    return value.strip().casefold()


class SourceGroups(BaseModel):
    """One ITSM tool's groups.

    Attributes:
        groups: the tool's group id or name -> taxonomy queue.
        ignore_actors: users whose events are not feedback (integration users).
        team_fields: Jira only: changelog item names or field ids that hold the team.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    groups: dict[str, str] = Field(default_factory=dict)
    ignore_actors: tuple[str, ...] = ()
    team_fields: tuple[str, ...] = DEFAULT_TEAM_FIELDS

    @model_validator(mode="after")
    def _keys_are_unique_ignoring_case(self) -> SourceGroups:
        seen: dict[str, str] = {}
        for name, queue in self.groups.items():
            if not name.strip():
                raise ValueError("groups: a group name is empty")
            earlier = seen.setdefault(_key(name), queue)
            if earlier != queue:
                raise ValueError(
                    f"groups: {name!r} is listed twice (ignoring case) with different queues"
                )
        return self

    def queue_of(self, *candidates: str | None) -> str | None:
        """The queue of the first candidate (id, then name) that is listed; None if none is."""
        table = self._table()
        for candidate in candidates:
            if candidate is not None and candidate.strip():
                queue = table.get(_key(candidate))
                if queue is not None:
                    return queue
        return None

    def is_ignored_actor(self, *candidates: str | None) -> bool:
        """True when any of the actor's ids or names is listed in `ignore_actors`."""
        ignored = {_key(actor) for actor in self.ignore_actors}
        return any(c is not None and _key(c) in ignored for c in candidates)

    def is_team_field(self, *names: str | None) -> bool:
        """True when a changelog item's field name or id is one of `team_fields`."""
        fields = {_key(field) for field in self.team_fields}
        return any(n is not None and _key(n) in fields for n in names)

    def _table(self) -> dict[str, str]:
        return {_key(name): queue for name, queue in self.groups.items()}


class GroupMap(BaseModel):
    """Every tool's groups. Validate against a taxonomy with `check_queues`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = 1
    servicenow: SourceGroups = SourceGroups()
    jira: SourceGroups = SourceGroups()
    zendesk: SourceGroups = SourceGroups()

    def for_source(self, source: SourceSystem) -> SourceGroups:
        """The groups of `source` (the canonical format names queues directly: no groups)."""
        if source is SourceSystem.SERVICENOW:
            return self.servicenow
        if source is SourceSystem.JIRA:
            return self.jira
        if source is SourceSystem.ZENDESK:
            return self.zendesk
        return SourceGroups()

    def check_queues(self, labels: list[str], *, source: str = "<group map>") -> None:
        """Raise `GroupMapError` naming every mapping to a queue that is not in `labels`."""
        known = set(labels)
        wrong = [
            f"{tool}.groups[{name!r}]: {queue!r}"
            for tool in ("servicenow", "jira", "zendesk")
            for name, queue in getattr(self, tool).groups.items()
            if queue not in known
        ]
        if wrong:
            raise GroupMapError(
                f"{source}: not a queue of the taxonomy: {'; '.join(wrong[:10])}"
                + (f" and {len(wrong) - 10} more" if len(wrong) > 10 else "")
            )

    @classmethod
    def from_yaml_text(cls, text: str, *, source: str = "<text>") -> GroupMap:
        """Parse a group-map document.

        Raises:
            GroupMapError: with the source and the offending field named.
        """
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise GroupMapError(f"{source}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise GroupMapError(f"{source}: expected a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                for err in exc.errors()
            )
            raise GroupMapError(f"{source}: invalid group map: {problems}") from exc

    @classmethod
    def load(cls, path: Path | str | None, *, labels: list[str]) -> GroupMap:
        """Load the map at `path` (the packaged example when None), checked against `labels`.

        Raises:
            GroupMapError: missing, invalid, or mapping a group to an unknown queue.
        """
        if path is None:
            text = resources.files("schemas").joinpath("feedback_groups.yaml").read_text("utf-8")
            source = "default group map"
        else:
            try:
                text = Path(path).read_text("utf-8")
            except OSError as exc:
                raise GroupMapError(f"{path}: cannot read group map: {exc.strerror}") from exc
            source = str(path)
        group_map = cls.from_yaml_text(text, source=source)
        group_map.check_queues(labels, source=source)
        return group_map
