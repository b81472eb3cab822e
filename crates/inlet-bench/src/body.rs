//! Request bodies: a Meta fixture with a unique message id per request, signed
//! as Meta would sign it.
//!
//! The fixture is parsed once. Each [`BodyFactory`] owns its own copy of the
//! parsed JSON; [`BodyFactory::next`] overwrites the message id in place
//! (`entry[0].changes[0].value.messages[0].id` for WhatsApp,
//! `entry[0].messaging[0].message.mid` for Messenger and Instagram),
//! serializes the tree once (indented like the fixture files, so a body keeps
//! the fixture's size: about 1 KB for `wa_text.json`) and signs the bytes. That costs a few
//! microseconds, far below one HTTP round trip, so bodies can be made on the
//! fly by each connection without the generator becoming the bottleneck.

use std::path::Path;

use anyhow::{bail, Context};
use inlet::envelope::Source;
use serde_json::Value;

/// Where a fixture keeps the id that makes a message unique.
const ID_SLOTS: &[(&str, &str)] = &[
    ("/entry/0/changes/0/value/messages/0/id", "wamid.bench-"),
    ("/entry/0/messaging/0/message/mid", "m_bench-"),
];

/// One signed request body.
#[derive(Debug, Clone)]
pub struct SignedBody {
    /// The exact bytes to send.
    pub body: Vec<u8>,
    /// `X-Hub-Signature-256` value for `body`.
    pub signature: String,
    /// The unique message id written into the body, if the fixture has one.
    pub message_id: Option<String>,
}

/// Makes signed copies of a fixture, each with a fresh message id.
#[derive(Clone)]
pub struct BodyFactory {
    json: Value,
    slot: Option<(&'static str, &'static str)>,
    run_tag: String,
    secret: Vec<u8>,
    /// Conversations to rotate over (1: the fixture's own contact).
    contacts: u64,
}

/// Where a WhatsApp fixture names the contact (rewritten by
/// [`BodyFactory::with_contacts`]).
const CONTACT_SLOTS: &[&str] = &[
    "/entry/0/changes/0/value/messages/0/from",
    "/entry/0/changes/0/value/contacts/0/wa_id",
];

impl BodyFactory {
    /// Reads and parses a fixture file.
    pub fn from_file(path: &Path, secret: &str) -> anyhow::Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading fixture {}", path.display()))?;
        Self::from_bytes(&bytes, secret)
            .with_context(|| format!("fixture {} is not usable", path.display()))
    }

    /// Parses a fixture body. A fixture without a message id slot is accepted
    /// (every body is then identical); see [`BodyFactory::has_unique_ids`].
    pub fn from_bytes(bytes: &[u8], secret: &str) -> anyhow::Result<Self> {
        let json: Value = serde_json::from_slice(bytes).context("fixture is not JSON")?;
        if !json.get("entry").is_some_and(Value::is_array) {
            bail!("fixture is not a Meta webhook body (no `entry` array)");
        }
        let slot = ID_SLOTS
            .iter()
            .copied()
            .find(|(pointer, _)| json.pointer(pointer).is_some_and(Value::is_string));
        let run_tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        Ok(Self {
            json,
            slot,
            run_tag,
            secret: secret.as_bytes().to_vec(),
            contacts: 1,
        })
    }

    /// Rotates the sender over `n` made-up numbers (body `seq` comes from
    /// contact `seq % n`). Only WhatsApp message fixtures name a contact
    /// this way; `n` > 1 on another fixture is an error.
    pub fn with_contacts(mut self, n: u64) -> anyhow::Result<Self> {
        if n == 0 {
            bail!("--contacts must be at least 1");
        }
        if n > 1 && !CONTACT_SLOTS.iter().all(|p| self.json.pointer(p).is_some()) {
            bail!("--contacts needs a WhatsApp message fixture (messages[0].from and contacts[0].wa_id)");
        }
        self.contacts = n;
        Ok(self)
    }

    /// Whether each body gets its own message id.
    pub fn has_unique_ids(&self) -> bool {
        self.slot.is_some()
    }

    /// The webhook source matching the fixture's `object`.
    pub fn source(&self) -> Source {
        match self.json.get("object").and_then(Value::as_str) {
            Some("page") => Source::Facebook,
            Some("instagram") => Source::Instagram,
            _ => Source::Whatsapp,
        }
    }

    /// The body with message id number `seq` of this run, signed.
    pub fn next(&mut self, seq: u64) -> SignedBody {
        let message_id = self.slot.map(|(pointer, prefix)| {
            let id = format!("{prefix}{}-{seq}", self.run_tag);
            if let Some(slot) = self.json.pointer_mut(pointer) {
                *slot = Value::String(id.clone());
            }
            id
        });
        if self.contacts > 1 {
            let number = format!("1555{:07}", seq % self.contacts);
            for pointer in CONTACT_SLOTS {
                if let Some(slot) = self.json.pointer_mut(pointer) {
                    *slot = Value::String(number.clone());
                }
            }
        }
        let body = serde_json::to_vec_pretty(&self.json).expect("a JSON value always serializes");
        let signature = inlet::signature::sign(&body, &self.secret);
        SignedBody {
            body,
            signature,
            message_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> BodyFactory {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/meta")
            .join(name);
        BodyFactory::from_file(&path, "s").unwrap()
    }

    #[test]
    fn whatsapp_ids_are_unique_and_signed() {
        let mut f = fixture("wa_text.json");
        assert!(f.has_unique_ids());
        assert_eq!(f.source(), Source::Whatsapp);
        let a = f.next(1);
        let b = f.next(2);
        assert_ne!(a.message_id, b.message_id);
        let json: Value = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(
            json.pointer("/entry/0/changes/0/value/messages/0/id")
                .and_then(Value::as_str),
            b.message_id.as_deref()
        );
        assert_eq!(b.signature, inlet::signature::sign(&b.body, b"s"));
    }

    #[test]
    fn messenger_mid_is_rewritten() {
        let mut f = fixture("ig_message_text.json");
        assert_eq!(f.source(), Source::Instagram);
        let body = f.next(7);
        let json: Value = serde_json::from_slice(&body.body).unwrap();
        let mid = json.pointer("/entry/0/messaging/0/message/mid");
        assert_eq!(mid.and_then(Value::as_str), body.message_id.as_deref());
    }

    #[test]
    fn fixture_without_message_id_still_works() {
        let mut f = fixture("wa_status_read.json");
        assert!(!f.has_unique_ids());
        assert_eq!(f.next(1).message_id, None);
    }

    #[test]
    fn contacts_rotate_the_sender() {
        let mut f = fixture("wa_text.json").with_contacts(3).unwrap();
        let from = |b: &SignedBody| {
            let json: Value = serde_json::from_slice(&b.body).unwrap();
            let a = json.pointer(CONTACT_SLOTS[0]).cloned();
            assert_eq!(a, json.pointer(CONTACT_SLOTS[1]).cloned());
            a.unwrap()
        };
        let (a, b, c, d) = (f.next(0), f.next(1), f.next(2), f.next(3));
        assert_ne!(from(&a), from(&b));
        assert_ne!(from(&b), from(&c));
        assert_eq!(from(&a), from(&d));
        assert!(fixture("ig_message_text.json").with_contacts(2).is_err());
        assert!(fixture("wa_text.json").with_contacts(0).is_err());
    }

    #[test]
    fn rejects_non_meta_json() {
        assert!(BodyFactory::from_bytes(b"{\"a\":1}", "s").is_err());
        assert!(BodyFactory::from_bytes(b"nope", "s").is_err());
    }
}
