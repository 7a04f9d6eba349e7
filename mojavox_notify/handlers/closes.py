"""The close codes the dashboard socket uses, and what /metrics calls each close."""

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TOKEN_MISSING = 4001
CLOSE_TOKEN_INVALID = 4002
CLOSE_TOKEN_EXPIRED = 4003
CLOSE_SLOW_CONSUMER = 4008
CLOSE_TOO_MANY_SOCKETS = 4009
CLOSE_AUTH_THROTTLED = 4029

CLOSE_REASONS = {CLOSE_GOING_AWAY: "shutdown", CLOSE_POLICY_VIOLATION: "flooding",
                 CLOSE_INTERNAL_ERROR: "internal_error",
                 CLOSE_TRY_AGAIN_LATER: "storage_unavailable", CLOSE_TOKEN_MISSING: "token_missing",
                 CLOSE_TOKEN_INVALID: "token_invalid", CLOSE_TOKEN_EXPIRED: "token_expired",
                 CLOSE_SLOW_CONSUMER: "slow_consumer", CLOSE_TOO_MANY_SOCKETS: "too_many_sockets",
                 CLOSE_AUTH_THROTTLED: "auth_throttled"}
