"""Every stable problem code the gateway answers with, each with its HTTP status and title: the one registry.

It lives in `schemas` because adapters (upstream errors), security (signature failures) and the sharing bodies'
validators produce codes too, and `schemas` is the one package all of them may import. The README's table of
codes is generated from it (`python -m scripts.problem_codes`); tests/test_problem_codes.py keeps them equal.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ProblemCode"]


class ProblemCode(StrEnum):
    """A stable `code` of problem+json: its value is the wire string clients match on, so it never changes.

    `status` is the code's usual HTTP status and `title` its usual title; `statuses` are every status the code is
    answered with (a few codes are shared by a 404 for a path and a 422 for a body field naming the same thing).
    Field-level codes of a 422 that lists every fault (errors[].code) are here too: the first becomes the answer's
    code when the list has no code of its own.
    """

    status: int
    title: str
    statuses: frozenset[int]

    def __new__(cls, value: str, status: int, title: str, *others: int) -> ProblemCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        member.title = title
        member.statuses = frozenset((status, *others))
        return member

    # --- the HTTP layer -------------------------------------------------------------------------------------
    MALFORMED_REQUEST = "malformed_request", 400, "Malformed HTTP request"
    NOT_FOUND = "not_found", 404, "Not Found"
    METHOD_NOT_ALLOWED = "method_not_allowed", 405, "Method Not Allowed"
    HEADER_TIMEOUT = "header_timeout", 408, "Request headers too slow"
    BODY_TIMEOUT = "body_timeout", 408, "Request body too slow"
    BODY_TOO_LARGE = "body_too_large", 413, "Request body is too large"
    URI_TOO_LONG = "uri_too_long", 414, "Request target too long"
    HEADERS_TOO_LARGE = "headers_too_large", 431, "Request headers too large"
    TOO_MANY_CONNECTIONS = "too_many_connections", 429, "Too many connections"
    UNAUTHENTICATED_RATE_LIMITED = "unauthenticated_rate_limited", 429, "Too many unauthenticated requests"
    CLIENT_CLOSED = "client_closed", 499, "Client closed the connection"
    INTERNAL_ERROR = "internal_error", 500, "Internal error"
    # Any other HTTP error the framework raises (no route raises one): the status is the framework's.
    HTTP_ERROR = "http_error", 400, "HTTP error", *range(401, 600)

    # --- request bodies -------------------------------------------------------------------------------------
    VALIDATION_FAILED = "validation_failed", 422, "Request body is invalid"
    INVALID_JSON = "invalid_json", 422, "Body is not JSON"
    JSON_TOO_DEEP = "json_too_deep", 422, "Body nests too deeply"
    PATH_DOT_SEGMENT = "path_dot_segment", 422, "Request body is invalid"
    NUL_CHARACTER = "nul_character", 422, "Text holds a NUL character"

    # --- signature and key (security/signatures.py, gateway/access/authenticate.py) --------------------------
    SIGNATURE_MISSING = "signature_missing", 401, "Request is not signed"
    SIGNATURE_MALFORMED = "signature_malformed", 401, "Signature headers are malformed"
    SIGNATURE_EXPIRED = "signature_expired", 401, "Signature is outside the accepted time window"
    SIGNATURE_BEFORE_RESTART = "signature_before_restart", 401, "Signature predates the gateway's replay memory"
    SIGNATURE_INVALID = "signature_invalid", 401, "Signature does not verify"
    DIGEST_MISSING = "digest_missing", 401, "Content-Digest is missing"
    DIGEST_MISMATCH = "digest_mismatch", 401, "Content-Digest does not match the body"
    # 401 for a signature's key id; 404 for a caller's key in the admin API; 422 for a key of a schedule file.
    KEY_UNKNOWN = "key_unknown", 401, "Signing key is unknown", 404, 422
    KEY_REVOKED = "key_revoked", 401, "Signing key is revoked"
    NONCE_REPLAYED = "nonce_replayed", 401, "Nonce was already used"

    # --- client certificates (gateway/access/certificates.py) -----------------------------------------------
    CERTIFICATE_INVALID = "certificate_invalid", 401, "Client certificate is unreadable"
    CERTIFICATE_UNVERIFIED = "certificate_unverified", 401, "Client certificate is not verified"
    CERTIFICATE_UNKNOWN = "certificate_unknown", 401, "Client certificate is not registered", 404
    CERTIFICATE_EXPIRED = "certificate_expired", 401, "Client certificate is not valid now"
    CERTIFICATE_EXISTS = "certificate_exists", 409, "Certificate already registered"

    # --- grants and quotas ----------------------------------------------------------------------------------
    NO_GRANT = "no_grant", 403, "No grant"
    PURPOSE_NOT_GRANTED = "purpose_not_granted", 403, "Purpose not granted"
    GRANT_REVOKED = "grant_revoked", 403, "Grant revoked"
    GRANT_SUSPENDED = "grant_suspended", 403, "Grant suspended"
    GRANT_EXPIRED = "grant_expired", 403, "Grant expired"
    GRANT_NOT_VALID = "grant_not_valid", 403, "Grant not valid now"
    ROLE_FORBIDDEN = "role_forbidden", 403, "Not allowed for this caller"
    SHARE_METHOD_NOT_GRANTED = "share_method_not_granted", 403, "Share method not granted"
    RATE_LIMITED = "rate_limited", 429, "Rate limit reached"
    QUOTA_EXHAUSTED = "quota_exhausted", 429, "Daily quota used up"
    UNKNOWN_SERVICE = "unknown_service", 404, "Unknown service", 422
    UNKNOWN_OPERATION = "unknown_operation", 404, "Unknown operation", 422

    # --- callers, keys and grants (admin API) ---------------------------------------------------------------
    CALLER_EXISTS = "caller_exists", 409, "Caller already exists"
    CALLER_UNKNOWN = "caller_unknown", 404, "Caller not found", 422
    KEY_EXISTS = "key_exists", 409, "Key id already in use"
    KEY_INVALID = "key_invalid", 422, "Public key is invalid"
    GRANT_UNKNOWN = "grant_unknown", 404, "Grant not found"
    UNKNOWN_FIELD = "unknown_field", 422, "Grant is invalid"
    VALIDITY_IN_PAST = "validity_in_past", 422, "Validity already ended"
    VALIDITY_EMPTY = "validity_empty", 422, "Validity is empty"
    DEPARTMENT_MISMATCH = "department_mismatch", 422, "Grant is invalid"
    QUOTA_INVALID = "quota_invalid", 422, "Daily quota is invalid"
    RATE_LIMIT_INVALID = "rate_limit_invalid", 422, "Rate limit is invalid"

    # --- stores the gateway depends on ----------------------------------------------------------------------
    AUDIT_UNAVAILABLE = "audit_unavailable", 503, "Audit log unavailable"
    DATABASE_UNAVAILABLE = "database_unavailable", 503, "Database unavailable"
    DATABASE_TIMEOUT = "database_timeout", 503, "Database gave up on the query"
    NONCE_STORE_UNAVAILABLE = "nonce_store_unavailable", 503, "Nonce store unavailable"
    QUOTA_STORE_UNAVAILABLE = "quota_store_unavailable", 503, "Quota store unavailable"
    STATE_STORE_UNAVAILABLE = "state_store_unavailable", 503, "Shared state unavailable"

    # --- upstreams (adapters/errors.py) ---------------------------------------------------------------------
    UPSTREAM_ERROR = "upstream_error", 502, "Upstream failed"
    UPSTREAM_FAULT = "upstream_fault", 502, "Upstream failed"
    UPSTREAM_SUBJECT_UNKNOWN = "upstream_subject_unknown", 502, "Upstream failed"
    UPSTREAM_MALFORMED = "upstream_malformed", 502, "Upstream failed"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable", 502, "Upstream failed"
    UPSTREAM_CIRCUIT_OPEN = "upstream_circuit_open", 503, "Upstream failed"
    UPSTREAM_BUSY = "upstream_busy", 503, "Upstream failed"
    UPSTREAM_TIMEOUT = "upstream_timeout", 504, "Upstream failed"

    # --- registered upstreams (adapters/contracts.py, gateway/upstreams/registry.py) -------------------------
    UPSTREAM_EXISTS = "upstream_exists", 409, "Upstream already registered"
    UPSTREAM_UNKNOWN = "upstream_unknown", 404, "Upstream not found"
    NAME_TAKEN = "name_taken", 409, "Upstream cannot be registered"
    NAME_INVALID = "name_invalid", 422, "Upstream cannot be registered"
    POLICY_INVALID = "policy_invalid", 422, "Upstream cannot be registered"
    CONTRACT_UNREACHABLE = "contract_unreachable", 422, "Upstream cannot be registered"
    CONTRACT_FETCH_FORBIDDEN = "contract_fetch_forbidden", 422, "Upstream cannot be registered"
    CONTRACT_INVALID = "contract_invalid", 422, "Upstream cannot be registered"
    CONTRACT_UNSUPPORTED = "contract_unsupported", 422, "Upstream cannot be registered"
    SECRET_INVALID = "secret_invalid", 422, "Upstream cannot be registered"
    SECRET_MISSING = "secret_missing", 422, "Upstream cannot be registered"

    # --- payments -------------------------------------------------------------------------------------------
    IDEMPOTENCY_KEY_MISSING = "idempotency_key_missing", 400, "Idempotency-Key is required"
    IDEMPOTENCY_KEY_INVALID = "idempotency_key_invalid", 400, "Idempotency-Key is invalid"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused", 422, "Idempotency-Key reused"
    IDEMPOTENCY_IN_FLIGHT = "idempotency_in_flight", 409, "Request with this Idempotency-Key in progress"
    VOUCHER_EXISTS = "voucher_exists", 409, "Voucher already submitted"
    VOUCHER_DUPLICATE = "voucher_duplicate", 409, "Treasury has the voucher already"
    VOUCHER_REFUSED = "voucher_refused", 502, "Treasury refused the voucher"
    VOUCHER_RETURNED = "voucher_returned", 502, "Treasury returned the voucher"
    PAYMENT_PENDING = "payment_pending", 503, "Payment outcome not known yet", 502, 504

    # --- batches (gateway/batches/) ------------------------------------------------------------------------
    BATCH_UNKNOWN = "batch_unknown", 404, "Batch not found"
    BATCH_FINISHED = "batch_finished", 409, "Batch already ended"
    BATCH_RESULTS_EXPIRED = "batch_results_expired", 410, "Batch results deleted"
    OPERATION_REPEATED = "operation_repeated", 422, "Operation named twice"
    OPERATION_NOT_BATCHABLE = "operation_not_batchable", 422, "Operation cannot run in a batch"
    SUBJECTS_ENCODING = "subjects_encoding", 422, "Subjects file is not text"
    SUBJECTS_INVALID = "subjects_invalid", 422, "Batch subjects are invalid"
    TOO_MANY_SUBJECTS = "too_many_subjects", 422, "Too many inline subjects"
    MEDIA_TYPE_UNSUPPORTED = "media_type_unsupported", 415, "Unsupported media type"
    RANGE_INVALID = "range_invalid", 416, "Range not satisfiable"

    # --- the SOAP façade (gateway/soap/) ------------------------------------------------------------------
    SOAP_REQUEST_INVALID = "soap_request_invalid", 400, "SOAP request is invalid"
    SOAP_VERSION_MISMATCH = "soap_version_mismatch", 400, "Not a SOAP envelope"
    SOAP_MUST_UNDERSTAND = "soap_must_understand", 400, "SOAP header not understood"
    XML_DTD_FORBIDDEN = "xml_dtd_forbidden", 400, "SOAP request is invalid"
    WS_SECURITY_REFUSED = "ws_security_refused", 401, "WS-Security UsernameToken is refused"

    # --- audit API ------------------------------------------------------------------------------------------
    RECORD_NOT_FOUND = "record_not_found", 404, "Audit record not found"
    PAYLOAD_SHREDDED = "payload_shredded", 410, "Payload destroyed"
    PAYLOAD_UNREADABLE = "payload_unreadable", 409, "Payload cannot be opened"
    INVALID_CURSOR = "invalid_cursor", 422, "Query parameter is invalid"
    CURSOR_MISMATCH = "cursor_mismatch", 422, "Query parameter is invalid"

    # --- catalog and sharing requests: every fault of a body at once (一次性告知) ---------------------------------
    REQUEST_INCOMPLETE = "request_incomplete", 422, "Sharing request is incomplete or invalid"
    ITEM_INCOMPLETE = "item_incomplete", 422, "Catalog item is incomplete or invalid"
    FIELD_MISSING = "field_missing", 422, "Request is invalid"
    FIELD_UNKNOWN = "field_unknown", 422, "Request is invalid"
    FIELD_INVALID = "field_invalid", 422, "Request is invalid"
    LEGAL_BASIS_KIND_UNKNOWN = "legal_basis_kind_unknown", 422, "Request is invalid"
    SHARE_ATTRIBUTE_UNKNOWN = "share_attribute_unknown", 422, "Request is invalid"
    SHARE_METHOD_UNKNOWN = "share_method_unknown", 422, "Request is invalid"
    UPDATE_FREQUENCY_UNKNOWN = "update_frequency_unknown", 422, "Request is invalid"
    CLASSIFICATION_UNKNOWN = "classification_unknown", 422, "Request is invalid"
    DATA_USE_KIND_UNKNOWN = "data_use_kind_unknown", 422, "Request is invalid"
    NOTHING_TO_CHANGE = "nothing_to_change", 422, "Request is invalid"

    # --- the catalog ----------------------------------------------------------------------------------------
    ITEM_UNKNOWN = "item_unknown", 404, "Catalog item not found", 422
    ITEM_CODE_EXISTS = "item_code_exists", 409, "Catalog code already in use"
    ITEM_NOT_SHARED = "item_not_shared", 422, "Sharing request is incomplete or invalid"
    DATA_ITEM_DUPLICATE = "data_item_duplicate", 422, "Catalog item is incomplete or invalid"
    DELIVERY_MISSING = "delivery_missing", 422, "Catalog item is incomplete or invalid"
    FIELD_NOT_IN_OPERATION = "field_not_in_operation", 422, "Catalog item is incomplete or invalid"
    CONDITIONS_MISSING = "conditions_missing", 422, "Catalog item is incomplete or invalid"
    CONDITIONS_NOT_APPLICABLE = "conditions_not_applicable", 422, "Catalog item is incomplete or invalid"
    LEGAL_BASIS_MISSING = "legal_basis_missing", 422, "Catalog item is incomplete or invalid"
    LEGAL_BASIS_NOT_APPLICABLE = "legal_basis_not_applicable", 422, "Catalog item is incomplete or invalid"
    PROVIDER_MISSING = "provider_missing", 422, "Catalog item is invalid"
    SERVICE_UNOWNED = "service_unowned", 409, "Service has no owner"
    NOT_OWN_DEPARTMENT = "not_own_department", 403, "Not allowed for this caller"
    NOT_SERVICE_OWNER = "not_service_owner", 403, "Not allowed for this caller"
    NOT_ITEM_PROVIDER = "not_item_provider", 403, "Not allowed for this caller"

    # --- the sharing workflow -------------------------------------------------------------------------------
    REQUEST_UNKNOWN = "request_unknown", 404, "Sharing request not found"
    FIELD_NOT_IN_ITEM = "field_not_in_item", 422, "Sharing request is incomplete or invalid"
    SHARE_METHOD_UNAVAILABLE = "share_method_unavailable", 422, "Sharing request is incomplete or invalid"
    CALLER_NOT_IN_DEPARTMENT = "caller_not_in_department", 422, "Sharing request is incomplete or invalid"
    FIELD_NOT_REQUESTED = "field_not_requested", 422, "Approval is invalid"
    QUOTA_BEYOND_REQUEST = "quota_beyond_request", 422, "Approval is invalid"
    VALIDITY_BEYOND_REQUEST = "validity_beyond_request", 422, "Approval is invalid"
    REFUSAL_GROUND_MISSING = "refusal_ground_missing", 422, "Refusal is invalid"
    RETURN_NEW_ITEMS = "return_new_items", 422, "Return is invalid"
    INVALID_STATE = "invalid_state", 422, "Not possible in the request's state"
    ALREADY_DECIDED = "already_decided", 422, "Not possible in the request's state"
    STATE_CHANGED = "state_changed", 422, "Request changed meanwhile"
    EXTENSION_NOT_APPLICABLE = "extension_not_applicable", 422, "Request is invalid"
    ALREADY_EXTENDED = "already_extended", 422, "Request is invalid"
    EXTENSION_TOO_LONG = "extension_too_long", 422, "Request is invalid"
    DEADLINE_PASSED = "deadline_passed", 422, "Request is invalid"
    NOT_REQUESTER = "not_requester", 403, "Not allowed for this caller"
    NOT_PROVIDER = "not_provider", 403, "Not allowed for this caller"
    NOT_ESCALATED = "not_escalated", 403, "Not allowed for this caller"
    NOT_PARTY = "not_party", 403, "Not allowed for this caller"
    ENDORSER_IS_FILER = "endorser_is_filer", 403, "Not allowed for this caller"

    # --- grant duties: delivery, suspension, the data-use register ------------------------------------------
    ALREADY_DELIVERED = "already_delivered", 422, "Request is invalid"
    ALREADY_SUSPENDED = "already_suspended", 422, "Request is invalid"
    NOT_SUSPENDED = "not_suspended", 422, "Request is invalid"
    NOT_HOLDER = "not_holder", 403, "Not allowed for this caller"
    OCCURRED_IN_FUTURE = "occurred_in_future", 422, "Request is invalid"
    OCCURRED_BEFORE_GRANT = "occurred_before_grant", 422, "Request is invalid"

    # --- the holiday calendar (a schedule file lists every fault with its line) ------------------------------
    CALENDAR_YEAR_UNSUPPORTED = "calendar_year_unsupported", 422, "Working days unknown for that year"
    FILE_INVALID = "file_invalid", 422, "Holiday schedule is invalid"
    HEADER_INVALID = "header_invalid", 422, "Holiday schedule is invalid"
    KIND_INVALID = "kind_invalid", 422, "Holiday schedule is invalid"
    VALUE_INVALID = "value_invalid", 422, "Holiday schedule is invalid"
    YEAR_MISSING = "year_missing", 422, "Holiday schedule is invalid"
    YEAR_INVALID = "year_invalid", 422, "Holiday schedule is invalid"
    YEAR_MISMATCH = "year_mismatch", 422, "Holiday schedule is invalid"
    SOURCE_MISSING = "source_missing", 422, "Holiday schedule is invalid"
    SOURCE_TOO_LONG = "source_too_long", 422, "Holiday schedule is invalid"
    SOURCE_MISMATCH = "source_mismatch", 422, "Holiday schedule is invalid"
    HOLIDAYS_MISSING = "holidays_missing", 422, "Holiday schedule is invalid"
    DATE_MISSING = "date_missing", 422, "Holiday schedule is invalid"
    DATE_INVALID = "date_invalid", 422, "Holiday schedule is invalid"
    DATE_OUTSIDE_YEAR = "date_outside_year", 422, "Holiday schedule is invalid"
    DATE_REPEATED = "date_repeated", 422, "Holiday schedule is invalid"
    RUN_INVALID = "run_invalid", 422, "Holiday schedule is invalid"
    FESTIVAL_MISSING = "festival_missing", 422, "Holiday schedule is invalid"
    FESTIVAL_TOO_LONG = "festival_too_long", 422, "Holiday schedule is invalid"
    HOLIDAY_AND_WORKDAY = "holiday_and_workday", 422, "Holiday schedule is invalid"
    WORKDAY_NOT_WEEKEND = "workday_not_weekend", 422, "Holiday schedule is invalid"
