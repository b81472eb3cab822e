//! The two envelopes a delivery travels in: Meta's JSON shape (`object` +
//! `entry[]`, checked before anything is queued) and the raw stream entry's
//! fields (read back by every worker). Any bytes give a typed answer, never a
//! panic, and an envelope that is read back writes the same fields again.
#![no_main]

use inlet::envelope::RawEvent;
use inlet::normalize::check_shape;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 7] = ["v", "trace_id", "source", "tenant", "received_at", "headers", "body"];

fuzz_target!(|data: &[u8]| {
    let _ = check_shape(data);
    // Fields separated by 0xff bytes, named in stream order.
    let fields: Vec<(&str, &[u8])> = data
        .split(|b| *b == 0xff)
        .zip(NAMES.iter())
        .map(|(v, n)| (*n, v))
        .collect();
    if let Ok(event) = RawEvent::from_fields(fields.iter().copied()) {
        let again = event.to_fields();
        let back = RawEvent::from_fields(again.iter().map(|(k, v)| (*k, v.as_slice())))
            .expect("an envelope Inlet wrote reads back");
        assert_eq!(back.trace_id, event.trace_id);
        assert_eq!(back.body, event.body);
        assert_eq!(back.source, event.source);
    }
});
