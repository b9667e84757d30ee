"""Completion policies as values: the rule (quiet period, expected count, the
classic polling rule with its delay schedule, the adaptive window learnt
from the producers' gaps, or the producer's marker object) and the limits that apply to every rule.

A `Policy` is immutable; each builder method returns a new one. It converts to
the protobuf `Policy` and decides nothing itself (the server's policy does).
Durations are `datetime.timedelta` or seconds (int or float).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Optional, Union

from google.protobuf import duration_pb2

from streamwatch.v1 import watch_pb2

Seconds = Union[timedelta, int, float]


class DelaySchedule(enum.Enum):
    """How the classic polling rule spaces its samples."""

    FIXED = watch_pb2.DELAY_SCHEDULE_FIXED
    """Every sample waits `delay`."""
    DIVIDE = watch_pb2.DELAY_SCHEDULE_DIVIDE
    """Waits `delay / repeated` (`delay` while `repeated` is 0)."""
    EXPONENTIAL = watch_pb2.DELAY_SCHEDULE_EXPONENTIAL
    """Waits `ceil(delay * exp(-repeated))` whole seconds, at most `delay`."""


@dataclass(frozen=True)
class QuietPeriod:
    """Complete exactly `window` after the last activity."""

    window: timedelta


@dataclass(frozen=True)
class ExpectedCount:
    """Complete when `objects` distinct objects landed; with `quiet_window`,
    also after that long without activity."""

    objects: int
    quiet_window: Optional[timedelta] = None


@dataclass(frozen=True)
class Polling:
    """Sample every `delay` (the server accepts 1s or more); complete after
    `max_repeats` unchanged samples."""

    delay: timedelta
    max_repeats: int
    schedule: DelaySchedule = DelaySchedule.FIXED


@dataclass(frozen=True)
class Adaptive:
    """`safety_factor` x the `quantile` of the observed gaps, clamped to
    [`min_window`, `max_window`]; None takes the server's default (100s, 1h,
    0.99, 1.5; with `reconcile`, 75s, 1h, 0.99, 1.15)."""

    min_window: Optional[timedelta] = None
    max_window: Optional[timedelta] = None
    quantile: Optional[float] = None
    safety_factor: Optional[float] = None


@dataclass(frozen=True)
class Marker:
    """Complete when the producer creates its marker object (`key`, below the
    prefix, e.g. `_SUCCESS`); with `quiet_window`, after that long without
    activity after it; with `verify_manifest`, once every file the marker's
    committer manifest lists is counted (servers with AWS access)."""

    key: str
    quiet_window: Optional[timedelta] = None
    verify_manifest: bool = False


Rule = Union[QuietPeriod, ExpectedCount, Polling, Adaptive, Marker]


@dataclass(frozen=True)
class Webhook:
    """HTTP POST signed with the tenant's callback secret named `secret_ref`."""

    url: str
    secret_ref: str


@dataclass(frozen=True)
class Sqs:
    queue_url: str


@dataclass(frozen=True)
class Sns:
    topic_arn: str


NotifyTarget = Union[Webhook, Sqs, Sns]


def as_timedelta(value: Seconds, what: str = "duration") -> timedelta:
    """`value` as a timedelta; bool, NaN and infinities are refused by name."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a timedelta or a number of seconds, not {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, not {value!r}")
    return timedelta(seconds=value)


def proto_duration(value: timedelta) -> duration_pb2.Duration:
    """The protobuf Duration of `value` (negative ones are sent as they are:
    the server rejects them by field name)."""
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    seconds, rest = divmod(abs(micros), 1_000_000)
    sign = -1 if micros < 0 else 1
    return duration_pb2.Duration(seconds=sign * seconds, nanos=sign * rest * 1000)


@dataclass(frozen=True)
class Policy:
    """A completion policy. `Policy()` has no rule: the server applies its
    default (a 60s quiet period). For example::

        Policy.polling(30, 5).schedule(DelaySchedule.EXPONENTIAL)
        Policy.expected_count(1000).quiet_window(600).timeout(3600)
        Policy.adaptive(min_window=30).late_window(timedelta(hours=1))
        Policy.marker("_SUCCESS").verify_manifest().timeout(3600)
    """

    rule: Optional[Rule] = None
    min_objects_: int = 0
    timeout_: Optional[timedelta] = None
    late_window_: Optional[timedelta] = None
    reconcile_: bool = False
    notify_: tuple[NotifyTarget, ...] = field(default_factory=tuple)
    notify_reopened_: bool = False

    # --- the rules -----------------------------------------------------------

    @classmethod
    def quiet_period(cls, window: Seconds) -> "Policy":
        return cls(rule=QuietPeriod(as_timedelta(window, "quiet_period window")))

    @classmethod
    def expected_count(cls, objects: int) -> "Policy":
        return cls(rule=ExpectedCount(objects))

    @classmethod
    def polling(cls, delay: Seconds, max_repeats: int) -> "Policy":
        """The classic rule with the FIXED schedule. The server refuses a
        `delay` under 1s (INVALID_ARGUMENT naming `policy.polling.delay`)."""
        return cls(rule=Polling(as_timedelta(delay, "polling delay"), max_repeats))

    @classmethod
    def adaptive(
        cls,
        *,
        min_window: Optional[Seconds] = None,
        max_window: Optional[Seconds] = None,
        quantile: Optional[float] = None,
        safety_factor: Optional[float] = None,
    ) -> "Policy":
        """The adaptive rule; bounds left None take the server's defaults."""
        return cls(
            rule=Adaptive(
                min_window=None if min_window is None else as_timedelta(min_window, "min_window"),
                max_window=None if max_window is None else as_timedelta(max_window, "max_window"),
                quantile=quantile,
                safety_factor=safety_factor,
            )
        )

    @classmethod
    def marker(cls, key: str = "_SUCCESS") -> "Policy":
        """The marker rule on `key`, below the watch's prefix."""
        return cls(rule=Marker(key))

    # --- refinements ---------------------------------------------------------

    def schedule(self, schedule: DelaySchedule) -> "Policy":
        """The delay schedule of a polling rule; other rules are left unchanged."""
        if isinstance(self.rule, Polling):
            return dataclasses.replace(self, rule=dataclasses.replace(self.rule, schedule=schedule))
        return self

    def verify_manifest(self) -> "Policy":
        """A marker rule completes only once every file its manifest lists is
        counted; other rules are left unchanged."""
        if isinstance(self.rule, Marker):
            return dataclasses.replace(self, rule=dataclasses.replace(self.rule, verify_manifest=True))
        return self

    def quiet_window(self, window: Seconds) -> "Policy":
        """The quiet window of an expected-count or marker rule; other rules are left unchanged."""
        if isinstance(self.rule, (ExpectedCount, Marker)):
            rule = dataclasses.replace(self.rule, quiet_window=as_timedelta(window, "quiet_window"))
            return dataclasses.replace(self, rule=rule)
        return self

    def min_objects(self, objects: int) -> "Policy":
        """Never complete with fewer distinct objects."""
        return dataclasses.replace(self, min_objects_=objects)

    def timeout(self, timeout: Seconds) -> "Policy":
        """End with TIMED_OUT this long after the watch (or its generation) started."""
        return dataclasses.replace(self, timeout_=as_timedelta(timeout, "timeout"))

    def late_window(self, window: Seconds) -> "Policy":
        """Activity this long after a completion reopens the watch."""
        return dataclasses.replace(self, late_window_=as_timedelta(window, "late_window"))

    def reconcile(self) -> "Policy":
        """Before completing, count objects in S3 that no notification told of."""
        return dataclasses.replace(self, reconcile_=True)

    def notify(self, target: NotifyTarget) -> "Policy":
        """Also deliver terminal events to `target`."""
        return dataclasses.replace(self, notify_=self.notify_ + (target,))

    def notify_reopened(self) -> "Policy":
        """Also deliver REOPENED events to the notify targets."""
        return dataclasses.replace(self, notify_reopened_=True)

    # --- the protobuf --------------------------------------------------------

    def to_proto(self) -> watch_pb2.Policy:
        p = watch_pb2.Policy(
            min_objects=self.min_objects_,
            reconcile=self.reconcile_,
            notify_reopened=self.notify_reopened_,
        )
        rule = self.rule
        if isinstance(rule, QuietPeriod):
            p.quiet_period.window.CopyFrom(proto_duration(rule.window))
        elif isinstance(rule, ExpectedCount):
            p.expected_count.objects = rule.objects
            if rule.quiet_window is not None:
                p.expected_count.quiet_window.CopyFrom(proto_duration(rule.quiet_window))
        elif isinstance(rule, Polling):
            p.polling.delay.CopyFrom(proto_duration(rule.delay))
            p.polling.max_repeats = rule.max_repeats
            p.polling.schedule = rule.schedule.value
        elif isinstance(rule, Adaptive):
            p.adaptive.SetInParent()
            if rule.min_window is not None:
                p.adaptive.min_window.CopyFrom(proto_duration(rule.min_window))
            if rule.max_window is not None:
                p.adaptive.max_window.CopyFrom(proto_duration(rule.max_window))
            # 0 in the protobuf means "the server's default".
            p.adaptive.quantile = rule.quantile or 0.0
            p.adaptive.safety_factor = rule.safety_factor or 0.0
        elif isinstance(rule, Marker):
            p.marker.key = rule.key
            p.marker.verify_manifest = rule.verify_manifest
            if rule.quiet_window is not None:
                p.marker.quiet_window.CopyFrom(proto_duration(rule.quiet_window))
        if self.timeout_ is not None:
            p.timeout.CopyFrom(proto_duration(self.timeout_))
        if self.late_window_ is not None:
            p.late_window.CopyFrom(proto_duration(self.late_window_))
        for target in self.notify_:
            t = p.notify.add()
            if isinstance(target, Webhook):
                t.webhook.url, t.webhook.secret_ref = target.url, target.secret_ref
            elif isinstance(target, Sqs):
                t.sqs.queue_url = target.queue_url
            else:
                t.sns.topic_arn = target.topic_arn
        return p
