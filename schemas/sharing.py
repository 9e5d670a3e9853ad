"""Bodies of the catalog (资源目录) and sharing-request (共享需求) API, with the law's vocabulary as enums.

Enum values are English codes; the Chinese terms of 《政务数据共享条例》 are accepted as aliases on input
(e.g. `有条件` for `conditional`) and returned as `*_label` on output. Errors raised here carry their own
stable type (e.g. `legal_basis_kind_unknown`), which the gateway uses as the problem code.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt
from pydantic_core import PydanticCustomError

from schemas.problems import ProblemCode

from .api import IDENTIFIER_PATTERN, PURPOSE_PATTERN
from .times import BeijingDatetime

ShareAttributeCode = Literal["unconditional", "conditional", "not_shared"]
ShareMethodCode = Literal["api", "batch", "api+batch", "file"]
LegalBasisKindCode = Literal["law", "administrative_regulation", "state_council_decision"]
UpdateFrequencyCode = Literal["realtime", "daily", "weekly", "monthly", "quarterly", "yearly", "irregular"]
LevelCode = Literal["general", "important", "core"]
DataTypeCode = Literal["string", "integer", "number", "decimal", "boolean", "date", "datetime", "array", "object"]

SHARE_ATTRIBUTE_LABELS = {"unconditional": "无条件共享", "conditional": "有条件共享", "not_shared": "不予共享"}
SHARE_METHOD_LABELS = {"api": "服务接口", "batch": "批量交换", "api+batch": "服务接口+批量交换", "file": "文件下载"}
LEGAL_BASIS_KIND_LABELS = {
    "law": "法律",
    "administrative_regulation": "行政法规",
    "state_council_decision": "国务院决定",
}
UPDATE_FREQUENCY_LABELS = {
    "realtime": "实时",
    "daily": "每日",
    "weekly": "每周",
    "monthly": "每月",
    "quarterly": "每季度",
    "yearly": "每年",
    "irregular": "不定期",
}
LEVEL_LABELS = {"general": "一般数据", "important": "重要数据", "core": "核心数据"}
STATE_LABELS = {
    "draft": "草稿",
    "submitted": "已提交",
    "approved": "已同意",
    "refused": "不予共享",
    "returned": "退回补正",
    "granted": "已授权",
    "revoked": "已撤销",
    "expired": "已到期",
}
DELIVERY_LABELS = {"pending": "待交付", "delivered": "已交付", "overdue": "逾期未交付", "cancelled": "已取消"}


def _choice(
    labels: dict[str, str], code: ProblemCode, what: str, extra: dict[str, str] | None = None
) -> Callable[[Any], Any]:
    """A validator accepting a code or its Chinese label (and `extra` aliases), refusing others with `code`."""
    aliases = {label: value for value, label in labels.items()} | (extra or {})

    def normalize(value: Any) -> Any:
        if isinstance(value, str):
            if value in labels:
                return value
            if value in aliases:
                return aliases[value]
        allowed = ", ".join(f"{value} ({label})" for value, label in labels.items())
        raise PydanticCustomError(
            code,
            "unknown {what} '{value}'; expected one of: {allowed}",
            {
                "what": what,
                "value": value,
                "allowed": allowed,
            },
        )

    return normalize


ShareAttribute = Annotated[
    ShareAttributeCode,
    BeforeValidator(
        _choice(
            SHARE_ATTRIBUTE_LABELS,
            ProblemCode.SHARE_ATTRIBUTE_UNKNOWN,
            "share attribute",
            {"无条件": "unconditional", "有条件": "conditional"},
        )
    ),
]
ShareMethod = Annotated[
    ShareMethodCode,
    BeforeValidator(
        _choice(
            SHARE_METHOD_LABELS,
            ProblemCode.SHARE_METHOD_UNKNOWN,
            "share method",
            {"接口": "api", "批量": "batch", "接口+批量": "api+batch", "文件": "file"},
        )
    ),
]
LegalBasisKind = Annotated[
    LegalBasisKindCode,
    BeforeValidator(_choice(LEGAL_BASIS_KIND_LABELS, ProblemCode.LEGAL_BASIS_KIND_UNKNOWN, "legal basis kind")),
]
UpdateFrequency = Annotated[
    UpdateFrequencyCode,
    BeforeValidator(_choice(UPDATE_FREQUENCY_LABELS, ProblemCode.UPDATE_FREQUENCY_UNKNOWN, "update frequency")),
]
Level = Annotated[
    LevelCode, BeforeValidator(_choice(LEVEL_LABELS, ProblemCode.CLASSIFICATION_UNKNOWN, "classification level"))
]


def _positive(what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            raise PydanticCustomError(
                ProblemCode.QUOTA_INVALID,
                "{what} must be a positive whole number, got {value}",
                {
                    "what": what,
                    "value": value,
                },
            )
        return value

    return check


# Strict: JSON's true is not 1, nor "5000" a number; the schema says integer, and pydantic's lax mode took both.
Quota = Annotated[StrictInt, BeforeValidator(_positive("a daily quota")), Field(ge=1, le=100_000_000)]
Volume = Annotated[StrictInt, BeforeValidator(_positive("an expected daily volume")), Field(ge=1, le=100_000_000)]
RateLimit = Annotated[
    str,
    Field(
        max_length=64,
        description="a rate in the `limits` notation: `20/second`, `600/minute`, `10 per second`",
        examples=["20/second"],
    ),
]
Text = Annotated[str, Field(min_length=1, max_length=2000)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataItem(_In):
    """One 数据项 of a catalog item: a field of the delivering operation's answer, its type and 分类分级."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", description="the field name in the answer")
    title: Name = Field(description="Chinese name, e.g. 是否失信被执行人")
    type: DataTypeCode
    level: Level = Field(description="数据分类分级: general 一般数据, important 重要数据, core 核心数据")
    description: str | None = Field(default=None, max_length=2000)


class Conditions(_In):
    """使用条件 of a 有条件共享 item: the scope and purpose a request must fit."""

    scope: Text = Field(description="使用范围 the provider accepts")
    purpose: Text = Field(description="用途 the provider accepts")


class LegalBasis(_In):
    """Why an item is 不予共享: only a 法律, 行政法规 or 国务院决定 may forbid sharing, and it must be cited."""

    kind: LegalBasisKind = Field(
        description="law 法律, administrative_regulation 行政法规, state_council_decision 国务院决定"
    )
    title: Name = Field(description="e.g. 《中华人民共和国税收征收管理法》")
    article: Name = Field(description="e.g. 第八条")


class CatalogItemIn(_In):
    """A catalog item a provider department registers."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "code": "FGW-XY-0002",
                    "name": "经营异常名录信息",
                    "data_items": [
                        {"name": "uscc", "title": "统一社会信用代码", "type": "string", "level": "general"},
                        {"name": "listed", "title": "是否列入经营异常名录", "type": "boolean", "level": "general"},
                        {"name": "entries", "title": "列入记录", "type": "array", "level": "important"},
                    ],
                    "service": "credit",
                    "operation": "abnormal-operation",
                    "share_attribute": "conditional",
                    "conditions": {"scope": "本市惠企政策兑现", "purpose": "免申即享资格比对"},
                    "share_method": "api",
                    "update_frequency": "daily",
                }
            ]
        },
    )

    code: str = Field(pattern=CODE_PATTERN, description="目录编码, unique")
    name: Name = Field(description="数据目录名称")
    provider: Name | None = Field(
        default=None, description="提供单位; a department registers for itself (default), an admin must name it"
    )
    description: str | None = Field(default=None, max_length=2000)
    data_items: list[DataItem] = Field(min_length=1, description="数据项")
    service: str | None = Field(default=None, description="the gateway service that delivers the item")
    operation: str | None = Field(default=None, description="the operation of that service")
    share_attribute: ShareAttribute = Field(
        description="共享属性: unconditional 无条件, conditional 有条件, not_shared 不予共享"
    )
    conditions: Conditions | None = Field(default=None, description="required for conditional items")
    legal_basis: LegalBasis | None = Field(default=None, description="required for not_shared items")
    share_method: ShareMethod = Field(
        default="api", description="共享方式: api 接口, batch 批量, api+batch 接口和批量, file 文件"
    )
    data_format: str = Field(default="json", min_length=1, max_length=32, description="数据格式")
    update_frequency: UpdateFrequency = Field(description="更新频率")


class CatalogItemPatch(_In):
    """Changes to a catalog item; only the fields given change (its code never does). A new share attribute drops
    the conditions or legal basis of the old one unless given anew."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"share_attribute": "unconditional"}, {"provider": "市发改委", "name": "失信被执行人信息"}]
        },
    )

    name: Name | None = None
    provider: Name | None = Field(
        default=None, description="an admin names the department it acts for (default: the item's provider)"
    )
    description: str | None = Field(default=None, max_length=2000)
    data_items: list[DataItem] | None = Field(default=None, min_length=1)
    service: str | None = None
    operation: str | None = None
    share_attribute: ShareAttribute | None = None
    conditions: Conditions | None = None
    legal_basis: LegalBasis | None = None
    share_method: ShareMethod | None = None
    data_format: str | None = Field(default=None, min_length=1, max_length=32)
    update_frequency: UpdateFrequency | None = None


class DataItemOut(BaseModel):
    name: str
    title: str
    type: str
    level: str
    level_label: str
    description: str | None = None


class LegalBasisOut(BaseModel):
    kind: str
    kind_label: str
    title: str
    article: str


class CatalogItemOut(BaseModel):
    item_id: str
    code: str
    name: str
    provider: str = Field(description="提供单位: the department that published the item")
    service_owner: str | None = Field(
        description="the department owning the delivering service now: it decides requests for the item"
    )
    description: str | None
    data_items: list[DataItemOut]
    service: str | None
    operation: str | None
    share_attribute: str
    share_attribute_label: str
    conditions: Conditions | None
    legal_basis: LegalBasisOut | None
    share_method: str
    share_method_label: str
    data_format: str
    update_frequency: str
    update_frequency_label: str
    created_at: datetime


class PurposeOut(BaseModel):
    code: str
    name: str | None


class GrantHolder(BaseModel):
    """A department holding grants on an item, and for which purposes; never which caller, never any subject."""

    department: str
    purposes: list[PurposeOut]


class PublicCatalogItem(CatalogItemOut):
    grants: list[GrantHolder]


class PublicCatalog(BaseModel):
    items: list[PublicCatalogItem]


class Deadline(BaseModel):
    start: date
    working_days: int
    due: date
    provisional: bool = Field(description="true when the count touched a year with no loaded holiday schedule")
    source: str = Field(description="provisional when any counted year is; else the source of the due day's year")
    sources: dict[int, str] = Field(description="each counted year's source")
    calendar: str = Field(description="what counted each year")
    # A list, not tuple[int, int]: a tuple becomes `items: [...]`, which OpenAPI 3.1 does not allow.
    years: list[int] = Field(min_length=2, max_length=2, description="first and last year chinese-calendar knows")


class Purpose(_In):
    code: str = Field(pattern=PURPOSE_PATTERN, description="policy code, the `purpose` the platform will send")
    name: Name = Field(description="policy name")


class SharingRequestIn(_In):
    """A 共享需求 as the requesting department files it (a draft until its head endorses it)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "item_id": "cat-0123456789abcdef",
                    "fields": ["uscc", "listed"],
                    "purpose": {"code": "XM-2025-002", "name": "厦门市企业研发费用补助（免申即享）"},
                    "basis": "《厦门市惠企政策免申即享工作方案》",
                    "scenario": "免申即享资格比对：排除列入经营异常名录的企业",
                    "scope": "市数据管理局免申即享平台，仅用于资格比对",
                    "valid_to": "2026-12-31T23:59:59+08:00",
                    "daily_volume": 5000,
                    "callers": ["platform"],
                }
            ]
        },
    )

    item_id: str = Field(min_length=1, max_length=64, description="the catalog item asked for")
    fields: list[str] = Field(min_length=1, description="数据项 wanted: a subset of the item's")
    purpose: Purpose = Field(description="the policy the data is used for")
    basis: Text = Field(description="使用依据")
    scenario: Text = Field(description="使用场景")
    scope: Text = Field(description="使用范围")
    share_method: ShareMethod | None = Field(default=None, description="共享方式; default: the item's")
    valid_from: BeijingDatetime | None = Field(
        default=None, description="使用时限 start; default: from approval (a date or a naive time is Beijing time)"
    )
    valid_to: BeijingDatetime = Field(description="使用时限 end (a date or a naive time is Beijing time)")
    daily_volume: Volume = Field(description="expected calls a day; the default daily quota")
    callers: list[Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]] = Field(
        min_length=1, description="the requesting department's callers that will call (one grant each)"
    )


class SharingRequestPatch(_In):
    """Changes to a draft or returned request; only the fields given change."""

    fields: list[str] | None = Field(default=None, min_length=1)
    purpose: Purpose | None = None
    basis: Text | None = None
    scenario: Text | None = None
    scope: Text | None = None
    share_method: ShareMethod | None = None
    valid_from: BeijingDatetime | None = None
    valid_to: BeijingDatetime | None = None
    daily_volume: Volume | None = None
    callers: list[Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]] | None = Field(default=None, min_length=1)


class EndorseIn(_In):
    """The requesting department head's approval (本部门负责人审核), which submits the request."""

    note: str | None = Field(default=None, max_length=2000)


class ApproveIn(_In):
    """The provider's approval; the grant takes these terms (defaults: the request's)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"daily_quota": 5000, "rate_limit": "20/second"},
                {"fields": ["uscc", "listed"], "daily_quota": 2000, "valid_to": "2026-06-30T23:59:59+08:00"},
            ]
        },
    )

    fields: list[str] | None = Field(
        default=None,
        min_length=1,
        description="partial approval: a subset of the requested fields; the request is narrowed to them (recorded"
        " with before and after). Default: all requested",
    )
    daily_quota: Quota | None = Field(
        default=None, description="calls a day, at most the expected daily volume; default: the expected daily volume"
    )
    rate_limit: RateLimit | None = Field(default=None, description="default: 20/second")
    valid_to: BeijingDatetime | None = Field(default=None, description="at most the requested end; default: it")
    note: str | None = Field(default=None, max_length=2000)


class ConditionNotMet(_In):
    condition: Literal["scope", "purpose"] = Field(description="which of the item's 使用条件 the request does not meet")
    explanation: Text


class RefuseIn(_In):
    """A refusal (不予共享的理由): reasons, and its ground: a legal basis, or the 使用条件 the request does not meet.

    共享为常态: a provider may not refuse an item it lists as shareable without one of the two.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "reasons": ["使用范围超出本目录的共享条件"],
                    "condition_not_met": {"condition": "scope", "explanation": "仅限本市惠企政策兑现使用"},
                },
                {
                    "reasons": ["涉及纳税人商业秘密"],
                    "legal_basis": {"kind": "law", "title": "《中华人民共和国税收征收管理法》", "article": "第八条"},
                },
            ]
        },
    )

    reasons: list[Text] = Field(min_length=1)
    condition_not_met: ConditionNotMet | None = Field(
        default=None, description="the item's 使用条件 not met; this or `legal_basis` is required"
    )
    legal_basis: LegalBasis | None = Field(
        default=None,
        description="a 法律, 行政法规 or 国务院决定 that forbids this sharing, as a 不予共享 item cites it;"
        " this or `condition_not_met` is required",
    )


class MissingItem(_In):
    item: Name = Field(description="what is missing or must be corrected, e.g. `basis` or a document")
    reason: Text


class ReturnIn(_In):
    """退回补正: every missing item at once (一次性告知)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "missing": [
                        {"item": "basis", "reason": "请补充政策文件文号"},
                        {"item": "scope", "reason": "请说明数据使用的系统和人员范围"},
                    ]
                }
            ]
        },
    )

    missing: list[MissingItem] = Field(min_length=1)
    note: str | None = Field(default=None, max_length=2000)


class ExtendIn(_In):
    """One extension of a 有条件 request's deadline, by at most 10 working days, with a reason for the requester."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"working_days": 5, "reason": "需征求数据主管部门意见"}]}
    )

    working_days: StrictInt = Field(description="1 to 10")
    reason: Text


class RevokeIn(_In):
    reason: Text


class DeliverIn(_In):
    """The provider's statement that the approved data is delivered and usable (条例: within 20 working days)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"note": "服务接口已开通，已通知需求方联调"}]}
    )

    note: str | None = Field(default=None, max_length=2000, description="how it was delivered, for the requester")


class SuspendIn(_In):
    """Suspension of a grant for misuse (暂停共享): refused until resumed; unlike a revocation, it can end."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "发现超出授权范围使用数据"}]})

    reason: Text


class ResumeIn(_In):
    reason: str | None = Field(default=None, min_length=1, max_length=2000)


DATA_USE_KIND_LABELS = {"use": "使用", "storage": "存储", "destruction": "销毁"}
DataUseKind = Annotated[
    Literal["use", "storage", "destruction"],
    BeforeValidator(_choice(DATA_USE_KIND_LABELS, ProblemCode.DATA_USE_KIND_UNKNOWN, "register entry kind")),
]


class DataUseIn(_In):
    """One entry of the requesting department's register of received data (使用、存储、销毁记录)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "storage",
                    "description": "比对结果存入免申即享平台数据库，仅保存是否失信标记",
                    "location": "市政务云 免申即享平台 库表 t_match_result",
                    "volume": 30000,
                },
                {"kind": "destruction", "description": "政策兑现完成，比对结果已删除", "location": "t_match_result"},
            ]
        },
    )

    kind: DataUseKind = Field(description="use 使用, storage 存储, destruction 销毁")
    occurred_at: BeijingDatetime | None = Field(
        default=None, description="when it happened (a date or a naive time is Beijing time); default: now"
    )
    description: Text
    location: str | None = Field(default=None, min_length=1, max_length=2000, description="system, table or place")
    volume: StrictInt | None = Field(default=None, ge=0, le=1_000_000_000, description="records concerned, if counted")


class DataUseOut(BaseModel):
    entry_id: str
    grant_id: str
    sharing_request_id: str | None
    department: str
    kind: str
    kind_label: str
    occurred_at: datetime
    description: str
    location: str | None
    volume: int | None
    recorded_by: str
    recorded_at: datetime
    keep_until: date


class DataUseRegister(BaseModel):
    """A grant's register: `destroyed` once a destruction is recorded; every entry kept until `keep_until`."""

    grant_id: str
    department: str
    state: Literal["open", "destroyed"]
    entries: list[DataUseOut]


class DeliveryOut(BaseModel):
    """Delivery of a request's grants: `pending` until each is usable, `overdue` after the due day has ended,
    `cancelled` when every grant ended before it was delivered."""

    state: Literal["pending", "delivered", "overdue", "cancelled"]
    state_label: str
    due: date | None
    provisional: bool = Field(default=False, description="the due day is counted over an unloaded year")
    delivered_at: datetime | None


class SharingEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from the table row, field by field

    at: datetime
    actor: str
    actor_department: str | None
    action: str
    from_state: str | None
    to_state: str
    changes: dict[str, Any]
    note: dict[str, Any] | None


class GrantRef(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from the table row, field by field

    grant_id: str
    caller_id: str
    revoked_at: datetime | None
    suspended_at: datetime | None = None
    delivered_at: datetime | None = None


class SharingRequestOut(BaseModel):
    request_id: str
    item_id: str
    item_code: str
    item_name: str
    share_attribute: str
    requester_department: str
    provider_department: str
    filed_by: str
    endorsed_by: str | None
    callers: list[str]
    fields: list[str]
    purpose: PurposeOut
    basis: str
    scenario: str
    scope: str
    share_method: str
    valid_from: datetime | None
    valid_to: datetime
    daily_volume: int
    state: str
    state_label: str
    submitted_at: datetime | None
    due_date: date | None
    deadline_provisional: bool = Field(
        default=False,
        description="the deadline counted days of a year with no loaded holiday schedule; loading it recomputes it",
    )
    deadline_source: str | None = Field(
        default=None, description="what counted the deadline: imported, chinese-calendar or provisional"
    )
    overdue: bool
    extended_days: int | None
    extension_reason: str | None
    escalated_at: datetime | None
    decided_at: datetime | None
    decided_by: str | None
    decision: dict[str, Any] | None
    returned_items: list[str] | None
    ended_at: datetime | None
    ended_by: str | None
    end_reason: str | None
    grants: list[GrantRef]
    delivery: DeliveryOut | None = Field(default=None, description="once approved: delivery within 20 working days")
    created_at: datetime
    updated_at: datetime
    history: list[SharingEventOut] | None = None


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    CatalogItemIn,
    CatalogItemPatch,
    SharingRequestIn,
    SharingRequestPatch,
    EndorseIn,
    ApproveIn,
    RefuseIn,
    ReturnIn,
    ExtendIn,
    RevokeIn,
    DeliverIn,
    SuspendIn,
    ResumeIn,
    DataUseIn,
)
"""Bodies that routes read raw (to check the signature's digest); the OpenAPI names them as components."""
