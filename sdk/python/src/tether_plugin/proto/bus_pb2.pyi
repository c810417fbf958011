from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_PUBLISH: _ClassVar[Action]
    ACTION_SUBSCRIBE: _ClassVar[Action]
ACTION_UNSPECIFIED: Action
ACTION_PUBLISH: Action
ACTION_SUBSCRIBE: Action

class Grant(_message.Message):
    __slots__ = ("topic", "action")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    topic: str
    action: Action
    def __init__(self, topic: _Optional[str] = ..., action: _Optional[_Union[Action, str]] = ...) -> None: ...

class RefusedGrant(_message.Message):
    __slots__ = ("grant", "reason")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    grant: Grant
    reason: str
    def __init__(self, grant: _Optional[_Union[Grant, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class Subscription(_message.Message):
    __slots__ = ("topic", "group", "ack_deadline_ms", "max_deliver")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ACK_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_DELIVER_FIELD_NUMBER: _ClassVar[int]
    topic: str
    group: str
    ack_deadline_ms: int
    max_deliver: int
    def __init__(self, topic: _Optional[str] = ..., group: _Optional[str] = ..., ack_deadline_ms: _Optional[int] = ..., max_deliver: _Optional[int] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("delivery_id", "topic", "data", "headers", "sequence", "redelivered", "subscription")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REDELIVERED_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    topic: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    sequence: int
    redelivered: int
    subscription: str
    def __init__(self, delivery_id: _Optional[str] = ..., topic: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., sequence: _Optional[int] = ..., redelivered: _Optional[int] = ..., subscription: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("protocol_major", "instance_id", "pool_type", "image", "tags", "requested_grants", "token")
    PROTOCOL_MAJOR_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_TYPE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_GRANTS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    protocol_major: int
    instance_id: str
    pool_type: str
    image: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    requested_grants: _containers.RepeatedCompositeFieldContainer[Grant]
    token: str
    def __init__(self, protocol_major: _Optional[int] = ..., instance_id: _Optional[str] = ..., pool_type: _Optional[str] = ..., image: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., requested_grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ..., token: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("protocol_major", "session", "granted", "refused")
    PROTOCOL_MAJOR_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    protocol_major: int
    session: str
    granted: _containers.RepeatedCompositeFieldContainer[Grant]
    refused: _containers.RepeatedCompositeFieldContainer[RefusedGrant]
    def __init__(self, protocol_major: _Optional[int] = ..., session: _Optional[str] = ..., granted: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ..., refused: _Optional[_Iterable[_Union[RefusedGrant, _Mapping]]] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeregisterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("topic", "data", "headers", "idempotency_key")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    topic: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    idempotency_key: str
    def __init__(self, topic: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("sequence", "duplicate")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    duplicate: bool
    def __init__(self, sequence: _Optional[int] = ..., duplicate: bool = ...) -> None: ...

class PublishBatchRequest(_message.Message):
    __slots__ = ("publishes",)
    PUBLISHES_FIELD_NUMBER: _ClassVar[int]
    publishes: _containers.RepeatedCompositeFieldContainer[PublishRequest]
    def __init__(self, publishes: _Optional[_Iterable[_Union[PublishRequest, _Mapping]]] = ...) -> None: ...

class PublishBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PublishOutcome]
    def __init__(self, results: _Optional[_Iterable[_Union[PublishOutcome, _Mapping]]] = ...) -> None: ...

class PublishOutcome(_message.Message):
    __slots__ = ("published", "failed")
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    published: PublishResponse
    failed: PublishFailure
    def __init__(self, published: _Optional[_Union[PublishResponse, _Mapping]] = ..., failed: _Optional[_Union[PublishFailure, _Mapping]] = ...) -> None: ...

class PublishFailure(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("subscription",)
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    subscription: Subscription
    def __init__(self, subscription: _Optional[_Union[Subscription, _Mapping]] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("delivery_ids",)
    DELIVERY_IDS_FIELD_NUMBER: _ClassVar[int]
    delivery_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, delivery_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("acked",)
    ACKED_FIELD_NUMBER: _ClassVar[int]
    acked: int
    def __init__(self, acked: _Optional[int] = ...) -> None: ...

class NackRequest(_message.Message):
    __slots__ = ("delivery_id", "delay_ms")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    delay_ms: int
    def __init__(self, delivery_id: _Optional[str] = ..., delay_ms: _Optional[int] = ...) -> None: ...

class NackResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("delivery_ids",)
    DELIVERY_IDS_FIELD_NUMBER: _ClassVar[int]
    delivery_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, delivery_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...

class PluginMessage(_message.Message):
    __slots__ = ("hello", "publish", "ack", "nack", "health")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    publish: PluginPublish
    ack: PluginAck
    nack: PluginNack
    health: HealthAnswer
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., publish: _Optional[_Union[PluginPublish, _Mapping]] = ..., ack: _Optional[_Union[PluginAck, _Mapping]] = ..., nack: _Optional[_Union[PluginNack, _Mapping]] = ..., health: _Optional[_Union[HealthAnswer, _Mapping]] = ...) -> None: ...

class SidecarMessage(_message.Message):
    __slots__ = ("welcome", "delivery", "health_check", "stop", "publish_result")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_RESULT_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    delivery: Delivery
    health_check: HealthCheck
    stop: Stop
    publish_result: PublishResult
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., delivery: _Optional[_Union[Delivery, _Mapping]] = ..., health_check: _Optional[_Union[HealthCheck, _Mapping]] = ..., stop: _Optional[_Union[Stop, _Mapping]] = ..., publish_result: _Optional[_Union[PublishResult, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_major", "subscriptions", "client")
    PROTOCOL_MAJOR_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    protocol_major: int
    subscriptions: _containers.RepeatedCompositeFieldContainer[Subscription]
    client: str
    def __init__(self, protocol_major: _Optional[int] = ..., subscriptions: _Optional[_Iterable[_Union[Subscription, _Mapping]]] = ..., client: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("protocol_major", "instance_id", "granted")
    PROTOCOL_MAJOR_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    protocol_major: int
    instance_id: str
    granted: _containers.RepeatedCompositeFieldContainer[Grant]
    def __init__(self, protocol_major: _Optional[int] = ..., instance_id: _Optional[str] = ..., granted: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ...) -> None: ...

class PluginPublish(_message.Message):
    __slots__ = ("request_id", "topic", "data", "headers", "idempotency_key")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    topic: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    idempotency_key: str
    def __init__(self, request_id: _Optional[int] = ..., topic: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class PublishResult(_message.Message):
    __slots__ = ("request_id", "accepted", "refused")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    accepted: PublishAccepted
    refused: PublishRefused
    def __init__(self, request_id: _Optional[int] = ..., accepted: _Optional[_Union[PublishAccepted, _Mapping]] = ..., refused: _Optional[_Union[PublishRefused, _Mapping]] = ...) -> None: ...

class PublishAccepted(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class PublishRefused(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class PluginAck(_message.Message):
    __slots__ = ("delivery_id",)
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    def __init__(self, delivery_id: _Optional[str] = ...) -> None: ...

class PluginNack(_message.Message):
    __slots__ = ("delivery_id", "delay_ms", "reason")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    delay_ms: int
    reason: str
    def __init__(self, delivery_id: _Optional[str] = ..., delay_ms: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class HealthAnswer(_message.Message):
    __slots__ = ("id", "healthy", "detail")
    ID_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: int
    healthy: bool
    detail: str
    def __init__(self, id: _Optional[int] = ..., healthy: bool = ..., detail: _Optional[str] = ...) -> None: ...

class Stop(_message.Message):
    __slots__ = ("drain_timeout_ms",)
    DRAIN_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    drain_timeout_ms: int
    def __init__(self, drain_timeout_ms: _Optional[int] = ...) -> None: ...
