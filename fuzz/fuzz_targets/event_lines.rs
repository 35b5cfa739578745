//! Any bytes as a stream of event lines. Parsing must never panic; an event that parses must
//! come back unchanged from the line the spool stores for it (the daemon spools `to_line` and
//! parses it again); and folding the stream through the core must never panic, whatever the
//! events say.
#![no_main]

use buildstore_core::{Core, CoreConfig, MIN_INLINE_LIMIT};
use buildstore_schema::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A small inline limit, so that truncation of logs is reached too.
    let mut core = Core::new(CoreConfig {
        inline_limit: MIN_INLINE_LIMIT,
        ..CoreConfig::default()
    });
    let received = chrono::DateTime::from_timestamp(1_773_391_277, 0).unwrap_or_default();
    for line in data.split(|b| *b == b'\n') {
        let Ok(text) = std::str::from_utf8(line) else {
            continue;
        };
        let Ok(event) = Event::parse(text) else {
            continue;
        };
        let again = Event::parse(&event.to_line());
        assert_eq!(again.as_ref().ok(), Some(&event), "{text}");
        let _ = core.apply(&event, received);
    }
});
