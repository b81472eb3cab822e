//! Graph errors and what to do about them.
//!
//! Meta throttles with **HTTP 400 and an error code**, not 429, and sends no
//! `Retry-After`; its advice is to build error handling on `code` (and
//! `error_data.details`), not on titles or HTTP statuses (Cloud API error
//! codes page; Graph API error-handling guide,
//! <https://developers.facebook.com/docs/graph-api/guides/error-handling>).
//! So [`classify`] decides by code (and, where one matters, subcode); the
//! HTTP status only decides when the body carries no Graph error at all.
//!
//! The table is data, tested below: a throttle mistaken for a permanent
//! failure bulk-fails recoverable traffic (nyaruka/courier #812 → #815,
//! #1102 → #1103), so every code's class is pinned by a test.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What kind of failure a Graph answer is, which decides the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The sending number's throughput was reached: slow its bucket down
    /// and retry shortly.
    ThrottleSender,
    /// Too many messages to one recipient: retry that recipient later
    /// (4^n s), without stalling the others.
    ThrottlePair,
    /// App, account or WABA call limits: pause and retry.
    ThrottleApp,
    /// The number or template is restricted for quality (spam reports,
    /// paused template): final for the message; broadcasts pause.
    QualityStop,
    /// The recipient cannot get this message (not on WhatsApp, opted out,
    /// blocked): final.
    RecipientPermanent,
    /// Per-user marketing cap: final now, not to be retried soon.
    RecipientDeferred,
    /// Outside the customer-service window: send a template instead.
    NeedsTemplate,
    /// The request itself is wrong (parameters, template, media type):
    /// dead-lettered, never retried.
    PayloadPermanent,
    /// Meta-side trouble: retried with backoff up to `max_attempts`.
    Transient,
    /// The token is expired, revoked or lacks permission: sending halts
    /// for the app until a new token is configured.
    AuthHalt,
    /// The business account is restricted, locked or cannot pay: the
    /// sender halts.
    AccountHalt,
    /// A code the table does not know: dead-lettered with the raw body,
    /// never retried forever.
    Unclassified,
}

impl ErrorClass {
    /// Every class.
    pub const ALL: [ErrorClass; 12] = [
        ErrorClass::ThrottleSender,
        ErrorClass::ThrottlePair,
        ErrorClass::ThrottleApp,
        ErrorClass::QualityStop,
        ErrorClass::RecipientPermanent,
        ErrorClass::RecipientDeferred,
        ErrorClass::NeedsTemplate,
        ErrorClass::PayloadPermanent,
        ErrorClass::Transient,
        ErrorClass::AuthHalt,
        ErrorClass::AccountHalt,
        ErrorClass::Unclassified,
    ];

    /// Stable name (metrics label, stored error).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::ThrottleSender => "throttle_sender",
            ErrorClass::ThrottlePair => "throttle_pair",
            ErrorClass::ThrottleApp => "throttle_app",
            ErrorClass::QualityStop => "quality_stop",
            ErrorClass::RecipientPermanent => "recipient_permanent",
            ErrorClass::RecipientDeferred => "recipient_deferred",
            ErrorClass::NeedsTemplate => "needs_template",
            ErrorClass::PayloadPermanent => "payload_permanent",
            ErrorClass::Transient => "transient",
            ErrorClass::AuthHalt => "auth_halt",
            ErrorClass::AccountHalt => "account_halt",
            ErrorClass::Unclassified => "unclassified",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// A throttle: retried without spending the message's attempts.
    pub fn is_throttle(self) -> bool {
        matches!(
            self,
            ErrorClass::ThrottleSender | ErrorClass::ThrottlePair | ErrorClass::ThrottleApp
        )
    }

    /// A halt: sending stops for the app or sender; the message waits
    /// without spending attempts.
    pub fn is_halt(self) -> bool {
        matches!(self, ErrorClass::AuthHalt | ErrorClass::AccountHalt)
    }

    /// Final for the message, recorded as `failed` (not dead-lettered).
    pub fn is_final_failure(self) -> bool {
        matches!(
            self,
            ErrorClass::QualityStop
                | ErrorClass::RecipientPermanent
                | ErrorClass::RecipientDeferred
                | ErrorClass::NeedsTemplate
        )
    }

    /// Dead-lettered at once: retrying cannot help and a person must look.
    pub fn dead_letters(self) -> bool {
        matches!(
            self,
            ErrorClass::PayloadPermanent | ErrorClass::Unclassified
        )
    }

    /// Whether a broadcast seeing this class pauses itself (quality and
    /// auth trouble: continuing adds to the damage).
    pub fn pauses_broadcast(self) -> bool {
        matches!(
            self,
            ErrorClass::QualityStop | ErrorClass::AuthHalt | ErrorClass::AccountHalt
        )
    }
}

/// Maps a Graph error code (and subcode) to its class.
///
/// Sources, by row: Cloud API error codes page
/// (<https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes>)
/// as reproduced by YCloud and niswey; pywa `pywa/errors.py`; courier
/// `handlers/meta/whatsapp/api.go`; the Graph API error-handling guide;
/// the Messenger Platform error codes page and the Page `messages`
/// reference (see `shared/research/outbound.md` §1.5 and §2).
pub fn classify(code: i64, subcode: Option<i64>) -> ErrorClass {
    use ErrorClass::*;
    match (code, subcode) {
        // Messenger: 10 with 2018278 is "outside the allowed window"
        // (commonly cited, unverified); bare 10 is a permission error.
        (10, Some(2018278)) => NeedsTemplate,
        // Messenger: 2 with 2018344 is "privacy ToS not accepted".
        (2, Some(2018344)) => RecipientPermanent,
        // Throughput per number reached (Cloud API throughput page).
        (130429, _) => ThrottleSender,
        // Pair rate limit: one number → one user (Cloud API overview).
        (131056, _) => ThrottlePair,
        // App / user / WABA call limits, registration throttling, Page and
        // custom throttles, business use-case limits (Graph rate-limiting
        // page: 4, 17, 32, 613, 80000–80014; Cloud API: 341, 133016).
        (4 | 17 | 32 | 341 | 613 | 133016, _) => ThrottleApp,
        (80000..=80014, _) => ThrottleApp,
        // Flow throttled (10 messages with the flow in the last hour):
        // defer with backoff.
        (132069, _) => Transient,
        // Spam rate limit (number restricted by blocks/reports) and
        // template paused: hot retries add to the damage.
        (131048 | 132015, _) => QualityStop,
        // Per-user marketing cap ("healthy ecosystem").
        (131049, _) => RecipientDeferred,
        // User stopped marketing messages; undeliverable; Messenger "person
        // isn't available" (551, unverified) and "permissions disallow
        // message to user" (230, Page messages reference).
        (131050 | 131026 | 551 | 230, _) => RecipientPermanent,
        // 24-hour window closed (replaces the legacy 470).
        (131047 | 470, _) => NeedsTemplate,
        // Invalid/missing parameters, unsupported type, template problems,
        // template disabled, BSUID not supported for this message,
        // test-number allow list and unregistered number (config).
        (100 | 131008 | 131009 | 131051 | 131062, _) => PayloadPermanent,
        (132000 | 132001 | 132005 | 132007 | 132008 | 132012 | 132016, _) => PayloadPermanent,
        (131030 | 133010, _) => PayloadPermanent,
        // Media upload failed (often Meta could not fetch `link`): courier
        // retries it.
        (131053, _) => Transient,
        // Unknown, service unavailable, maintenance: "wait and retry".
        (1 | 2 | 131000 | 131016 | 131057, _) => Transient,
        // Token expired or invalid, API session, auth or permissions.
        (190 | 102 | 0 | 3 | 10, _) => AuthHalt,
        (200..=299, _) => AuthHalt,
        // Account restricted or locked; payment method problem.
        (368 | 131031 | 131042, _) => AccountHalt,
        _ => Unclassified,
    }
}

/// Classification when the body carries no Graph error: only the HTTP
/// status is known.
pub fn classify_status(http_status: u16) -> ErrorClass {
    match http_status {
        429 => ErrorClass::ThrottleSender,
        401 | 403 => ErrorClass::AuthHalt,
        500..=599 => ErrorClass::Transient,
        _ => ErrorClass::Unclassified,
    }
}

/// A Graph API error, as Meta returns it:
/// `{"error": {"message", "type", "code", "error_subcode", "error_data":
/// {"messaging_product", "details"}, "fbtrace_id"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphError {
    /// HTTP status of the answer.
    pub http_status: u16,
    /// `error.code` (0 when the body had none).
    pub code: i64,
    /// `error.error_subcode` (deprecated since v16, still sent by some
    /// endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subcode: Option<i64>,
    /// `error.message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `error.error_data.details`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// `error.type` (`OAuthException`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// `error.fbtrace_id`, for Meta support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbtrace_id: Option<String>,
    /// Whether the body held a Graph error object at all.
    pub parsed: bool,
}

impl GraphError {
    /// Parses an error answer (any body; an unparseable one keeps only the
    /// status).
    pub fn from_body(http_status: u16, body: &[u8]) -> GraphError {
        let v: Option<Value> = serde_json::from_slice(body).ok();
        let err = v.as_ref().and_then(|v| v.get("error"));
        let int = |v: Option<&Value>| {
            v.and_then(|c| {
                c.as_i64()
                    .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
            })
        };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        match err {
            Some(e) if e.is_object() => GraphError {
                http_status,
                code: int(e.get("code")).unwrap_or(0),
                subcode: int(e.get("error_subcode")),
                message: text(e.get("message")),
                details: text(e.pointer("/error_data/details")),
                error_type: text(e.get("type")),
                fbtrace_id: text(e.get("fbtrace_id")),
                parsed: int(e.get("code")).is_some(),
            },
            _ => GraphError {
                http_status,
                code: 0,
                subcode: None,
                message: None,
                details: None,
                error_type: None,
                fbtrace_id: None,
                parsed: false,
            },
        }
    }

    /// The error's class.
    pub fn class(&self) -> ErrorClass {
        if self.parsed {
            classify(self.code, self.subcode)
        } else {
            classify_status(self.http_status)
        }
    }
}

impl std::fmt::Display for GraphError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.parsed {
            write!(f, "graph error {} (HTTP {})", self.code, self.http_status)?;
            if let Some(m) = &self.message {
                write!(f, ": {m}")?;
            }
            Ok(())
        } else {
            write!(f, "HTTP {} without a Graph error body", self.http_status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorClass::*;

    /// Every code the research table lists, with its class.
    const TABLE: &[(i64, Option<i64>, ErrorClass)] = &[
        (130429, None, ThrottleSender),
        (131056, None, ThrottlePair),
        (4, None, ThrottleApp),
        (17, None, ThrottleApp),
        (32, None, ThrottleApp),
        (341, None, ThrottleApp),
        (613, None, ThrottleApp),
        (80007, None, ThrottleApp),
        (80000, None, ThrottleApp),
        (80014, None, ThrottleApp),
        (133016, None, ThrottleApp),
        (131048, None, QualityStop),
        (132015, None, QualityStop),
        (131049, None, RecipientDeferred),
        (131050, None, RecipientPermanent),
        (131026, None, RecipientPermanent),
        (551, None, RecipientPermanent),
        (230, None, RecipientPermanent),
        (2, Some(2018344), RecipientPermanent),
        (131047, None, NeedsTemplate),
        (470, None, NeedsTemplate),
        (10, Some(2018278), NeedsTemplate),
        (131051, None, PayloadPermanent),
        (100, None, PayloadPermanent),
        (131008, None, PayloadPermanent),
        (131009, None, PayloadPermanent),
        (132000, None, PayloadPermanent),
        (132001, None, PayloadPermanent),
        (132005, None, PayloadPermanent),
        (132007, None, PayloadPermanent),
        (132008, None, PayloadPermanent),
        (132012, None, PayloadPermanent),
        (132016, None, PayloadPermanent),
        (131062, None, PayloadPermanent),
        (131030, None, PayloadPermanent),
        (133010, None, PayloadPermanent),
        (132069, None, Transient),
        (131053, None, Transient),
        (1, None, Transient),
        (2, None, Transient),
        (131000, None, Transient),
        (131016, None, Transient),
        (131057, None, Transient),
        (190, None, AuthHalt),
        (190, Some(463), AuthHalt),
        (102, None, AuthHalt),
        (0, None, AuthHalt),
        (3, None, AuthHalt),
        (10, None, AuthHalt),
        (200, None, AuthHalt),
        (299, None, AuthHalt),
        (368, None, AccountHalt),
        (131031, None, AccountHalt),
        (131042, None, AccountHalt),
        (999999, None, Unclassified),
    ];

    #[test]
    fn every_documented_code_has_its_class() {
        for (code, sub, class) in TABLE {
            assert_eq!(classify(*code, *sub), *class, "code {code} subcode {sub:?}");
        }
    }

    #[test]
    fn throttles_are_never_final() {
        for (code, sub, _) in TABLE {
            let c = classify(*code, *sub);
            if c.is_throttle() {
                assert!(
                    !c.is_final_failure() && !c.dead_letters() && !c.is_halt(),
                    "{code}"
                );
            }
        }
        // Exactly one action per class.
        for c in ErrorClass::ALL {
            let actions = [
                c.is_throttle(),
                c.is_halt(),
                c.is_final_failure(),
                c.dead_letters(),
                c == Transient,
            ];
            assert_eq!(actions.iter().filter(|a| **a).count(), 1, "{c:?}");
            assert_eq!(ErrorClass::parse(c.as_str()), Some(c));
        }
    }

    #[test]
    fn the_code_decides_not_the_http_status() {
        // Meta throttles with HTTP 400 + code.
        let body = br#"{"error":{"message":"(#130429) Rate limit hit","type":"OAuthException","code":130429,
            "error_data":{"messaging_product":"whatsapp","details":"Message failed to send because there were too many messages sent from this phone number in a short period of time"},
            "fbtrace_id":"Az8or2yhqkZfEZ-_4Qn_Bam"}}"#;
        let e = GraphError::from_body(400, body);
        assert!(e.parsed);
        assert_eq!(e.code, 130429);
        assert_eq!(e.class(), ThrottleSender);
        assert_eq!(e.fbtrace_id.as_deref(), Some("Az8or2yhqkZfEZ-_4Qn_Bam"));
        assert!(e.details.unwrap().starts_with("Message failed to send"));

        let e = GraphError::from_body(400, br#"{"error":{"message":"Error validating access token","type":"OAuthException","code":190,"error_subcode":463}}"#);
        assert_eq!((e.code, e.subcode, e.class()), (190, Some(463), AuthHalt));

        // No Graph body: the status decides.
        assert_eq!(
            GraphError::from_body(502, b"<html>bad gateway</html>").class(),
            Transient
        );
        assert_eq!(GraphError::from_body(429, b"").class(), ThrottleSender);
        assert_eq!(GraphError::from_body(400, b"{}").class(), Unclassified);
    }
}
