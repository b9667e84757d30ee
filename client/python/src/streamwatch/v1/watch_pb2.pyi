import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_STATE_UNSPECIFIED: _ClassVar[WatchState]
    WATCH_STATE_ACTIVE: _ClassVar[WatchState]
    WATCH_STATE_COMPLETED: _ClassVar[WatchState]
    WATCH_STATE_TIMED_OUT: _ClassVar[WatchState]
    WATCH_STATE_CANCELLED: _ClassVar[WatchState]
    WATCH_STATE_FAILED: _ClassVar[WatchState]

class DeliveryState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_STATE_UNSPECIFIED: _ClassVar[DeliveryState]
    DELIVERY_STATE_PENDING: _ClassVar[DeliveryState]
    DELIVERY_STATE_DELIVERED: _ClassVar[DeliveryState]
    DELIVERY_STATE_FAILED: _ClassVar[DeliveryState]

class DelaySchedule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELAY_SCHEDULE_UNSPECIFIED: _ClassVar[DelaySchedule]
    DELAY_SCHEDULE_FIXED: _ClassVar[DelaySchedule]
    DELAY_SCHEDULE_DIVIDE: _ClassVar[DelaySchedule]
    DELAY_SCHEDULE_EXPONENTIAL: _ClassVar[DelaySchedule]
WATCH_STATE_UNSPECIFIED: WatchState
WATCH_STATE_ACTIVE: WatchState
WATCH_STATE_COMPLETED: WatchState
WATCH_STATE_TIMED_OUT: WatchState
WATCH_STATE_CANCELLED: WatchState
WATCH_STATE_FAILED: WatchState
DELIVERY_STATE_UNSPECIFIED: DeliveryState
DELIVERY_STATE_PENDING: DeliveryState
DELIVERY_STATE_DELIVERED: DeliveryState
DELIVERY_STATE_FAILED: DeliveryState
DELAY_SCHEDULE_UNSPECIFIED: DelaySchedule
DELAY_SCHEDULE_FIXED: DelaySchedule
DELAY_SCHEDULE_DIVIDE: DelaySchedule
DELAY_SCHEDULE_EXPONENTIAL: DelaySchedule

class Policy(_message.Message):
    __slots__ = ("polling", "quiet_period", "expected_count", "adaptive", "marker", "min_objects", "timeout", "late_window", "reconcile", "notify", "notify_reopened")
    POLLING_FIELD_NUMBER: _ClassVar[int]
    QUIET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    MIN_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    LATE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    RECONCILE_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_REOPENED_FIELD_NUMBER: _ClassVar[int]
    polling: PollingRule
    quiet_period: QuietPeriodRule
    expected_count: ExpectedCountRule
    adaptive: AdaptiveRule
    marker: MarkerRule
    min_objects: int
    timeout: _duration_pb2.Duration
    late_window: _duration_pb2.Duration
    reconcile: bool
    notify: _containers.RepeatedCompositeFieldContainer[NotifyTarget]
    notify_reopened: bool
    def __init__(self, polling: _Optional[_Union[PollingRule, _Mapping]] = ..., quiet_period: _Optional[_Union[QuietPeriodRule, _Mapping]] = ..., expected_count: _Optional[_Union[ExpectedCountRule, _Mapping]] = ..., adaptive: _Optional[_Union[AdaptiveRule, _Mapping]] = ..., marker: _Optional[_Union[MarkerRule, _Mapping]] = ..., min_objects: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., late_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reconcile: _Optional[bool] = ..., notify: _Optional[_Iterable[_Union[NotifyTarget, _Mapping]]] = ..., notify_reopened: _Optional[bool] = ...) -> None: ...

class NotifyTarget(_message.Message):
    __slots__ = ("webhook", "sqs", "sns", "manifest")
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    SQS_FIELD_NUMBER: _ClassVar[int]
    SNS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    webhook: WebhookTarget
    sqs: SqsTarget
    sns: SnsTarget
    manifest: S3ManifestTarget
    def __init__(self, webhook: _Optional[_Union[WebhookTarget, _Mapping]] = ..., sqs: _Optional[_Union[SqsTarget, _Mapping]] = ..., sns: _Optional[_Union[SnsTarget, _Mapping]] = ..., manifest: _Optional[_Union[S3ManifestTarget, _Mapping]] = ...) -> None: ...

class WebhookTarget(_message.Message):
    __slots__ = ("url", "secret_ref")
    URL_FIELD_NUMBER: _ClassVar[int]
    SECRET_REF_FIELD_NUMBER: _ClassVar[int]
    url: str
    secret_ref: str
    def __init__(self, url: _Optional[str] = ..., secret_ref: _Optional[str] = ...) -> None: ...

class SqsTarget(_message.Message):
    __slots__ = ("queue_url",)
    QUEUE_URL_FIELD_NUMBER: _ClassVar[int]
    queue_url: str
    def __init__(self, queue_url: _Optional[str] = ...) -> None: ...

class SnsTarget(_message.Message):
    __slots__ = ("topic_arn",)
    TOPIC_ARN_FIELD_NUMBER: _ClassVar[int]
    topic_arn: str
    def __init__(self, topic_arn: _Optional[str] = ...) -> None: ...

class S3ManifestTarget(_message.Message):
    __slots__ = ("bucket", "key")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    key: str
    def __init__(self, bucket: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("seq", "generation", "target", "state", "attempts", "last_status", "last_error", "next_attempt_at", "finished_at", "idempotency_key")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    seq: int
    generation: int
    target: int
    state: DeliveryState
    attempts: int
    last_status: str
    last_error: str
    next_attempt_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    idempotency_key: str
    def __init__(self, seq: _Optional[int] = ..., generation: _Optional[int] = ..., target: _Optional[int] = ..., state: _Optional[_Union[DeliveryState, str]] = ..., attempts: _Optional[int] = ..., last_status: _Optional[str] = ..., last_error: _Optional[str] = ..., next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class PollingRule(_message.Message):
    __slots__ = ("delay", "max_repeats", "schedule")
    DELAY_FIELD_NUMBER: _ClassVar[int]
    MAX_REPEATS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    delay: _duration_pb2.Duration
    max_repeats: int
    schedule: DelaySchedule
    def __init__(self, delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_repeats: _Optional[int] = ..., schedule: _Optional[_Union[DelaySchedule, str]] = ...) -> None: ...

class QuietPeriodRule(_message.Message):
    __slots__ = ("window",)
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    window: _duration_pb2.Duration
    def __init__(self, window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ExpectedCountRule(_message.Message):
    __slots__ = ("objects", "quiet_window")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    QUIET_WINDOW_FIELD_NUMBER: _ClassVar[int]
    objects: int
    quiet_window: _duration_pb2.Duration
    def __init__(self, objects: _Optional[int] = ..., quiet_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AdaptiveRule(_message.Message):
    __slots__ = ("min_window", "max_window", "quantile", "safety_factor")
    MIN_WINDOW_FIELD_NUMBER: _ClassVar[int]
    MAX_WINDOW_FIELD_NUMBER: _ClassVar[int]
    QUANTILE_FIELD_NUMBER: _ClassVar[int]
    SAFETY_FACTOR_FIELD_NUMBER: _ClassVar[int]
    min_window: _duration_pb2.Duration
    max_window: _duration_pb2.Duration
    quantile: float
    safety_factor: float
    def __init__(self, min_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., quantile: _Optional[float] = ..., safety_factor: _Optional[float] = ...) -> None: ...

class MarkerRule(_message.Message):
    __slots__ = ("key", "quiet_window", "verify_manifest")
    KEY_FIELD_NUMBER: _ClassVar[int]
    QUIET_WINDOW_FIELD_NUMBER: _ClassVar[int]
    VERIFY_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    key: str
    quiet_window: _duration_pb2.Duration
    verify_manifest: bool
    def __init__(self, key: _Optional[str] = ..., quiet_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., verify_manifest: _Optional[bool] = ...) -> None: ...

class MarkerStatus(_message.Message):
    __slots__ = ("created_at", "seen", "manifest_files", "manifest_missing", "manifest_problem")
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FILES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_MISSING_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    created_at: _timestamp_pb2.Timestamp
    seen: bool
    manifest_files: int
    manifest_missing: int
    manifest_problem: str
    def __init__(self, created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., seen: _Optional[bool] = ..., manifest_files: _Optional[int] = ..., manifest_missing: _Optional[int] = ..., manifest_problem: _Optional[str] = ...) -> None: ...

class AdaptiveWindow(_message.Message):
    __slots__ = ("window", "gap_quantile", "gaps", "explanation")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    GAP_QUANTILE_FIELD_NUMBER: _ClassVar[int]
    GAPS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    window: _duration_pb2.Duration
    gap_quantile: _duration_pb2.Duration
    gaps: int
    explanation: str
    def __init__(self, window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., gap_quantile: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., gaps: _Optional[int] = ..., explanation: _Optional[str] = ...) -> None: ...

class Watch(_message.Message):
    __slots__ = ("watch_id", "bucket", "prefix", "members", "policy", "state", "object_count", "event_count", "removed_count", "object_bytes", "include", "exclude", "created_at", "last_activity_at", "completed_at", "generation", "last_seq", "reason", "labels", "adaptive_window", "marker", "newest_event_time", "deliveries", "traceparent", "tracestate")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WATCH_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    REMOVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    OBJECT_BYTES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    NEWEST_EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    watch_id: str
    bucket: str
    prefix: str
    members: _containers.RepeatedScalarFieldContainer[str]
    policy: Policy
    state: WatchState
    object_count: int
    event_count: int
    removed_count: int
    object_bytes: int
    include: _containers.RepeatedScalarFieldContainer[str]
    exclude: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    last_activity_at: _timestamp_pb2.Timestamp
    completed_at: _timestamp_pb2.Timestamp
    generation: int
    last_seq: int
    reason: str
    labels: _containers.ScalarMap[str, str]
    adaptive_window: AdaptiveWindow
    marker: MarkerStatus
    newest_event_time: _timestamp_pb2.Timestamp
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    traceparent: str
    tracestate: str
    def __init__(self, watch_id: _Optional[str] = ..., bucket: _Optional[str] = ..., prefix: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., state: _Optional[_Union[WatchState, str]] = ..., object_count: _Optional[int] = ..., event_count: _Optional[int] = ..., removed_count: _Optional[int] = ..., object_bytes: _Optional[int] = ..., include: _Optional[_Iterable[str]] = ..., exclude: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_activity_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., generation: _Optional[int] = ..., last_seq: _Optional[int] = ..., reason: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., adaptive_window: _Optional[_Union[AdaptiveWindow, _Mapping]] = ..., marker: _Optional[_Union[MarkerStatus, _Mapping]] = ..., newest_event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ..., traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class StartWatchRequest(_message.Message):
    __slots__ = ("bucket", "prefix", "policy", "labels", "client_token", "include", "exclude", "members")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    prefix: str
    policy: Policy
    labels: _containers.ScalarMap[str, str]
    client_token: str
    include: _containers.RepeatedScalarFieldContainer[str]
    exclude: _containers.RepeatedScalarFieldContainer[str]
    members: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bucket: _Optional[str] = ..., prefix: _Optional[str] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., client_token: _Optional[str] = ..., include: _Optional[_Iterable[str]] = ..., exclude: _Optional[_Iterable[str]] = ..., members: _Optional[_Iterable[str]] = ...) -> None: ...

class StartWatchResponse(_message.Message):
    __slots__ = ("watch", "created")
    WATCH_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    watch: Watch
    created: bool
    def __init__(self, watch: _Optional[_Union[Watch, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetWatchRequest(_message.Message):
    __slots__ = ("watch_id",)
    WATCH_ID_FIELD_NUMBER: _ClassVar[int]
    watch_id: str
    def __init__(self, watch_id: _Optional[str] = ...) -> None: ...

class GetWatchResponse(_message.Message):
    __slots__ = ("watch",)
    WATCH_FIELD_NUMBER: _ClassVar[int]
    watch: Watch
    def __init__(self, watch: _Optional[_Union[Watch, _Mapping]] = ...) -> None: ...

class ListWatchesRequest(_message.Message):
    __slots__ = ("state", "labels", "page_size", "page_token")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: WatchState
    labels: _containers.ScalarMap[str, str]
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[WatchState, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWatchesResponse(_message.Message):
    __slots__ = ("watches", "next_page_token")
    WATCHES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    watches: _containers.RepeatedCompositeFieldContainer[Watch]
    next_page_token: str
    def __init__(self, watches: _Optional[_Iterable[_Union[Watch, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelWatchRequest(_message.Message):
    __slots__ = ("watch_id", "reason")
    WATCH_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    watch_id: str
    reason: str
    def __init__(self, watch_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelWatchResponse(_message.Message):
    __slots__ = ("watch",)
    WATCH_FIELD_NUMBER: _ClassVar[int]
    watch: Watch
    def __init__(self, watch: _Optional[_Union[Watch, _Mapping]] = ...) -> None: ...

class StreamWatchEventsRequest(_message.Message):
    __slots__ = ("watch_id", "after_seq")
    WATCH_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    watch_id: str
    after_seq: int
    def __init__(self, watch_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("watch_id", "seq", "time", "generation", "traceparent", "tracestate", "started", "progress", "quiet_tick", "completed", "timed_out", "cancelled", "reopened", "delivery_failed")
    class Started(_message.Message):
        __slots__ = ("watch",)
        WATCH_FIELD_NUMBER: _ClassVar[int]
        watch: Watch
        def __init__(self, watch: _Optional[_Union[Watch, _Mapping]] = ...) -> None: ...
    class Progress(_message.Message):
        __slots__ = ("object_count", "event_count", "removed_count", "last_activity_at", "object_bytes")
        OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
        EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
        REMOVED_COUNT_FIELD_NUMBER: _ClassVar[int]
        LAST_ACTIVITY_AT_FIELD_NUMBER: _ClassVar[int]
        OBJECT_BYTES_FIELD_NUMBER: _ClassVar[int]
        object_count: int
        event_count: int
        removed_count: int
        last_activity_at: _timestamp_pb2.Timestamp
        object_bytes: int
        def __init__(self, object_count: _Optional[int] = ..., event_count: _Optional[int] = ..., removed_count: _Optional[int] = ..., last_activity_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., object_bytes: _Optional[int] = ...) -> None: ...
    class QuietTick(_message.Message):
        __slots__ = ("object_count", "repeated", "max_repeats")
        OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
        REPEATED_FIELD_NUMBER: _ClassVar[int]
        MAX_REPEATS_FIELD_NUMBER: _ClassVar[int]
        object_count: int
        repeated: int
        max_repeats: int
        def __init__(self, object_count: _Optional[int] = ..., repeated: _Optional[int] = ..., max_repeats: _Optional[int] = ...) -> None: ...
    class Completed(_message.Message):
        __slots__ = ("object_count", "reason", "object_bytes")
        OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
        REASON_FIELD_NUMBER: _ClassVar[int]
        OBJECT_BYTES_FIELD_NUMBER: _ClassVar[int]
        object_count: int
        reason: str
        object_bytes: int
        def __init__(self, object_count: _Optional[int] = ..., reason: _Optional[str] = ..., object_bytes: _Optional[int] = ...) -> None: ...
    class TimedOut(_message.Message):
        __slots__ = ("object_count", "reason")
        OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
        REASON_FIELD_NUMBER: _ClassVar[int]
        object_count: int
        reason: str
        def __init__(self, object_count: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...
    class Cancelled(_message.Message):
        __slots__ = ("reason",)
        REASON_FIELD_NUMBER: _ClassVar[int]
        reason: str
        def __init__(self, reason: _Optional[str] = ...) -> None: ...
    class Reopened(_message.Message):
        __slots__ = ("object_count", "reason")
        OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
        REASON_FIELD_NUMBER: _ClassVar[int]
        object_count: int
        reason: str
        def __init__(self, object_count: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...
    class DeliveryFailed(_message.Message):
        __slots__ = ("seq", "target", "attempts", "last_error")
        SEQ_FIELD_NUMBER: _ClassVar[int]
        TARGET_FIELD_NUMBER: _ClassVar[int]
        ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
        LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
        seq: int
        target: int
        attempts: int
        last_error: str
        def __init__(self, seq: _Optional[int] = ..., target: _Optional[int] = ..., attempts: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...
    WATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    QUIET_TICK_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    REOPENED_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FAILED_FIELD_NUMBER: _ClassVar[int]
    watch_id: str
    seq: int
    time: _timestamp_pb2.Timestamp
    generation: int
    traceparent: str
    tracestate: str
    started: WatchEvent.Started
    progress: WatchEvent.Progress
    quiet_tick: WatchEvent.QuietTick
    completed: WatchEvent.Completed
    timed_out: WatchEvent.TimedOut
    cancelled: WatchEvent.Cancelled
    reopened: WatchEvent.Reopened
    delivery_failed: WatchEvent.DeliveryFailed
    def __init__(self, watch_id: _Optional[str] = ..., seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., generation: _Optional[int] = ..., traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ..., started: _Optional[_Union[WatchEvent.Started, _Mapping]] = ..., progress: _Optional[_Union[WatchEvent.Progress, _Mapping]] = ..., quiet_tick: _Optional[_Union[WatchEvent.QuietTick, _Mapping]] = ..., completed: _Optional[_Union[WatchEvent.Completed, _Mapping]] = ..., timed_out: _Optional[_Union[WatchEvent.TimedOut, _Mapping]] = ..., cancelled: _Optional[_Union[WatchEvent.Cancelled, _Mapping]] = ..., reopened: _Optional[_Union[WatchEvent.Reopened, _Mapping]] = ..., delivery_failed: _Optional[_Union[WatchEvent.DeliveryFailed, _Mapping]] = ...) -> None: ...

class ListWatchObjectsRequest(_message.Message):
    __slots__ = ("watch_id", "generation", "page_size", "page_token")
    WATCH_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    watch_id: str
    generation: int
    page_size: int
    page_token: str
    def __init__(self, watch_id: _Optional[str] = ..., generation: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class WatchObject(_message.Message):
    __slots__ = ("key", "size", "sequencer", "event_time", "removed", "generation", "recorded_at")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCER_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    key: str
    size: int
    sequencer: str
    event_time: _timestamp_pb2.Timestamp
    removed: bool
    generation: int
    recorded_at: _timestamp_pb2.Timestamp
    def __init__(self, key: _Optional[str] = ..., size: _Optional[int] = ..., sequencer: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., removed: _Optional[bool] = ..., generation: _Optional[int] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReplayWatchRequest(_message.Message):
    __slots__ = ("watch_id", "objects", "policies")
    WATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    watch_id: str
    objects: _containers.RepeatedCompositeFieldContainer[ReplayObject]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    def __init__(self, watch_id: _Optional[str] = ..., objects: _Optional[_Iterable[_Union[ReplayObject, _Mapping]]] = ..., policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ...) -> None: ...

class ReplayObject(_message.Message):
    __slots__ = ("created", "arrived")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    ARRIVED_FIELD_NUMBER: _ClassVar[int]
    created: _timestamp_pb2.Timestamp
    arrived: _timestamp_pb2.Timestamp
    def __init__(self, created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., arrived: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReplayWatchResponse(_message.Message):
    __slots__ = ("objects", "started", "last_created", "outcomes")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    LAST_CREATED_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    objects: int
    started: _timestamp_pb2.Timestamp
    last_created: _timestamp_pb2.Timestamp
    outcomes: _containers.RepeatedCompositeFieldContainer[ReplayOutcome]
    def __init__(self, objects: _Optional[int] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcomes: _Optional[_Iterable[_Union[ReplayOutcome, _Mapping]]] = ...) -> None: ...

class ReplayOutcome(_message.Message):
    __slots__ = ("name", "policy", "completed", "early", "first_completion", "first_completion_objects", "reopens", "delay", "listings", "list_requests")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    EARLY_FIELD_NUMBER: _ClassVar[int]
    FIRST_COMPLETION_FIELD_NUMBER: _ClassVar[int]
    FIRST_COMPLETION_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    REOPENS_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    LISTINGS_FIELD_NUMBER: _ClassVar[int]
    LIST_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    policy: Policy
    completed: bool
    early: bool
    first_completion: _duration_pb2.Duration
    first_completion_objects: int
    reopens: int
    delay: _duration_pb2.Duration
    listings: int
    list_requests: int
    def __init__(self, name: _Optional[str] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., completed: _Optional[bool] = ..., early: _Optional[bool] = ..., first_completion: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., first_completion_objects: _Optional[int] = ..., reopens: _Optional[int] = ..., delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., listings: _Optional[int] = ..., list_requests: _Optional[int] = ...) -> None: ...

class ListWatchObjectsResponse(_message.Message):
    __slots__ = ("objects", "next_page_token")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[WatchObject]
    next_page_token: str
    def __init__(self, objects: _Optional[_Iterable[_Union[WatchObject, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
