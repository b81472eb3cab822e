//! Outbound messaging, the pure part: what a send request may say, what it
//! becomes on the wire, how Meta's answers are classified, the rate
//! arithmetic shared by every limiter and the 24-hour window rule. Nothing
//! here does I/O; the Graph clients, the stored bookkeeping and the sender
//! build on it.
//!
//! - [`request`]: `POST /api/messages` and `POST /api/broadcasts` bodies,
//!   validated into a [`request::SendSpec`] (400 `{code, field, detail}`).
//! - [`wire`]: the Graph request body per channel and type (WhatsApp `to`
//!   vs `recipient` for BSUIDs, Messenger/Instagram Send API).
//! - [`classify`]: Graph error code → [`classify::ErrorClass`], with sources.
//! - [`rate`]: token bucket, pair pacer (GCRA), throttle slow-down.
//! - [`window`]: the customer-service window gate.
//! - [`usage`]: Meta's usage headers and the pacing of reads they call for.
//! - [`draft`]: AI drafts with human approval: states, transitions, the
//!   derived send id, the drafts API's bodies.

pub mod classify;
pub mod draft;
pub mod rate;
pub mod request;
pub mod usage;
pub mod window;
pub mod wire;

pub use classify::{ErrorClass, GraphError};
pub use request::{BroadcastSpec, Invalid, MessageType, RecipientKind, SendSpec};
