//! Any bytes as a stream of event lines. Parsing must never panic; an event that parses must
//! come back unchanged from the lines the spool stores for it (the embedding API spools
//! `to_line`; the daemon spools the client's own line, with the id and time it lacked added);
//! and folding the stream through the core must never panic, whatever the events say.
#![no_main]

use buildstore_core::{Core, CoreConfig, MIN_INLINE_LIMIT};
use buildstore_schema::{json_line, Event, Timestamp};
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
        // As the daemon spools it: an event without an id or a time gets them at the end.
        let mut stamped = event.clone();
        let spooled = stamped.stamp(
            json_line::trim(text).to_owned(),
            || "d-1".to_owned(),
            Timestamp::now(),
        );
        let again = Event::from_spooled(&spooled);
        assert_eq!(
            again.as_ref().ok(),
            Some(&stamped),
            "{text} spooled as {spooled}"
        );
        let _ = core.apply(&event, received);
    }
});
