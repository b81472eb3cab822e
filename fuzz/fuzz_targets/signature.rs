//! `X-Hub-Signature-256` parsing and verification: any header bytes and any
//! body give a typed answer, never a panic; a header that parses is exactly
//! `sha256=` + 64 hex digits; the signature Inlet computes always verifies.
#![no_main]

use inlet::signature::{parse_header, sign, verify, SigningKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte splits the input into a header and a body.
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let (header, body) = data.split_at(split);
    let key = SigningKey::new(b"fuzz-secret");
    match parse_header(Some(header)) {
        Ok(_) => {
            assert_eq!(header.len(), 71);
            assert!(header.starts_with(b"sha256="));
        }
        Err(e) => assert!(!e.reason().is_empty()),
    }
    let _ = verify(body, Some(header), [&key]);
    let good = sign(body, b"fuzz-secret");
    assert_eq!(verify(body, Some(good.as_bytes()), [&key]), Ok(0));
});
