//! Feeding `buildstore serve` over TCP: send events with a window of unacknowledged ones, and
//! after a lost connection reconnect and resend everything not yet acknowledged (the daemon
//! recognises resent events by their event_id).
//!
//!     buildstore serve &
//!     cargo run -p buildstore --example socket_client -- examples/events/nightly.jsonl

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

const WINDOW: usize = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = std::env::args()
        .nth(1)
        .ok_or("usage: socket_client EVENTS.jsonl [HOST:PORT]")?;
    let addr = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "127.0.0.1:9989".into());
    let events: Vec<String> = std::fs::read_to_string(file)?
        .lines()
        .map(str::to_owned)
        .collect();
    let mut acked = 0;
    while acked < events.len() {
        let Ok(stream) = TcpStream::connect(&addr) else {
            eprintln!("daemon unreachable; retrying");
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        let mut writer = stream.try_clone()?;
        let mut replies = BufReader::new(stream);
        let mut sent = acked; // resend from the first unacknowledged event
        loop {
            while sent < events.len() && sent - acked < WINDOW {
                writeln!(writer, "{}", events[sent])?;
                sent += 1;
            }
            let mut reply = String::new();
            if replies.read_line(&mut reply)? == 0 {
                break; // connection lost: reconnect and resend
            }
            println!("{}", reply.trim_end());
            if reply.contains(r#""retry":true"#) {
                // The spool is full: the daemon closes; resend from this event after a pause.
                std::thread::sleep(Duration::from_secs(1));
                break;
            }
            acked += 1; // one reply per line, in order: an ack or an error for that line
            if acked == events.len() {
                break;
            }
        }
    }
    Ok(())
}
