//! The Graph API client of the sender: one `reqwest` client (base URL,
//! version, timeouts from `[graph]`), one call per send, and the three ways
//! a call can end that the sender must tell apart:
//!
//! - an answer: 2xx with a message id, or an error body Meta classifies
//!   ([`GraphError`]; Meta throttles with HTTP 400 and a code, not 429);
//! - [`SendError::NotSent`]: the request never left (DNS, refused, TLS, a
//!   connect timeout): retrying cannot send twice;
//! - [`SendError::Ambiguous`]: the request may have reached Meta and the
//!   answer was lost (read timeout, reset, an unreadable 2xx body). The send
//!   becomes `unknown`, never resent blindly.

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::config::GraphSettings;
use crate::outbound::wire::GraphRequest;
use crate::outbound::GraphError;

/// What Meta answered to an accepted send.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// `messages[0].id` (WhatsApp) or `message_id` (Messenger/Instagram).
    pub message_id: String,
    /// `messages[0].message_status`: `accepted` or
    /// `held_for_quality_assessment`.
    pub message_status: Option<String>,
    /// `contacts[0].wa_id` (WhatsApp).
    pub wa_id: Option<String>,
}

impl Accepted {
    /// Held for quality assessment (template pacing): not failed.
    pub fn held(&self) -> bool {
        self.message_status.as_deref() == Some("held_for_quality_assessment")
    }

    /// Parses a 2xx body of the Send API (either product).
    pub fn from_body(body: &[u8]) -> Option<Accepted> {
        let v: Value = serde_json::from_slice(body).ok()?;
        if let Some(first) = v.get("messages").and_then(|m| m.get(0)) {
            let message_id = first.get("id")?.as_str()?.to_string();
            let text = |x: Option<&Value>| x.and_then(Value::as_str).map(str::to_string);
            return Some(Accepted {
                message_id,
                message_status: text(first.get("message_status")),
                wa_id: text(
                    v.get("contacts")
                        .and_then(|c| c.get(0))
                        .and_then(|c| c.get("wa_id")),
                ),
            });
        }
        let message_id = v.get("message_id")?.as_str()?.to_string();
        Some(Accepted {
            message_id,
            message_status: None,
            wa_id: None,
        })
    }
}

/// A send that did not end with an accepted message.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Meta answered with an error.
    #[error("graph error: {0}")]
    Graph(GraphError),
    /// The request never left this machine.
    #[error("not sent: {0}")]
    NotSent(#[source] reqwest::Error),
    /// The request may have reached Meta; the answer was lost.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("graph client: {0}")]
pub struct ClientError(#[from] reqwest::Error);

/// The Graph API client.
#[derive(Debug, Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    base: String,
}

impl GraphClient {
    /// A client for `[graph]`.
    pub fn new(settings: &GraphSettings) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .user_agent(concat!("inlet/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: format!("{}/{}", settings.base_url, settings.version),
        })
    }

    /// The URL of a Graph path (`/{sender}/messages`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends one message.
    pub async fn send(
        &self,
        req: &GraphRequest,
        token: &SecretString,
    ) -> Result<Accepted, SendError> {
        let response = self
            .http
            .post(self.url(&req.path))
            .bearer_auth(token.expose_secret())
            .json(&req.body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || e.is_builder() {
                    SendError::NotSent(e)
                } else {
                    SendError::Ambiguous(e.to_string())
                }
            })?;
        let status = response.status();
        let headers = response.headers();
        if let Some(u) = crate::outbound::usage::Usage::from_headers(|name| {
            headers.get(name).and_then(|v| v.to_str().ok())
        }) {
            // The same gauge as the reads': Meta's budgets are per app and
            // business, whichever call reports them.
            metrics::gauge!("inlet_graph_usage_pct").set(u.max_pct);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| SendError::Ambiguous(format!("answer unreadable: {e}")))?;
        if status.is_success() {
            Accepted::from_body(&body)
                .ok_or_else(|| SendError::Ambiguous(format!("HTTP {status} without a message id")))
        } else {
            Err(SendError::Graph(GraphError::from_body(
                status.as_u16(),
                &body,
            )))
        }
    }
}

/// A short, non-reversible fingerprint of a token (halts remember which
/// token failed, so a changed token lifts the halt).
pub fn token_fingerprint(token: &SecretString) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(token.expose_secret().as_bytes());
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whatsapp_answer() {
        let body = br#"{"messaging_product":"whatsapp","contacts":[{"input":"+16505551234","wa_id":"16505551234"}],"messages":[{"id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA","message_status":"accepted"}]}"#;
        let a = Accepted::from_body(body).unwrap();
        assert_eq!(
            a.message_id,
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA"
        );
        assert_eq!(a.wa_id.as_deref(), Some("16505551234"));
        assert!(!a.held());
    }

    #[test]
    fn held_answer() {
        let body = br#"{"messaging_product":"whatsapp","contacts":[{"input":"1","wa_id":"1"}],"messages":[{"id":"wamid.X","message_status":"held_for_quality_assessment"}]}"#;
        assert!(Accepted::from_body(body).unwrap().held());
    }

    #[test]
    fn messenger_answer() {
        let body = br#"{"recipient_id":"1254477777772919","message_id":"m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6AC8fplwlqLP_5cgXIbu7I3rBN0P"}"#;
        let a = Accepted::from_body(body).unwrap();
        assert!(a.message_id.starts_with("m_AG5"));
        assert_eq!(a.wa_id, None);
    }

    #[test]
    fn no_id_is_not_accepted() {
        assert!(Accepted::from_body(br#"{"messages":[]}"#).is_none());
        assert!(Accepted::from_body(b"not json").is_none());
    }

    #[test]
    fn fingerprints_differ_and_hide_the_token() {
        let a = token_fingerprint(&SecretString::from("EAAG-one"));
        let b = token_fingerprint(&SecretString::from("EAAG-two"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(!a.contains("EAAG"));
    }
}
