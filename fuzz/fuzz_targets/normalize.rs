//! The normalizer of all three sources (WhatsApp, Messenger, Instagram):
//! any body gives items or a typed error, never a panic, and every item has
//! the identifiers the store keys on.
#![no_main]

use inlet::model::NormalizedItem;
use inlet::normalize::normalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = normalize(data) {
        for item in items {
            match item {
                NormalizedItem::Message(m) => assert!(!m.provider_message_id.is_empty()),
                NormalizedItem::Status(_) | NormalizedItem::PageChange(_) => {}
            }
        }
    }
});
