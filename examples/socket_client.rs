//! Feeding `buildstore serve` over TCP: send events with a window of unacknowledged ones, and
//! after a lost connection reconnect and resend everything not yet acknowledged (the daemon
//! recognises resent events by their event_id).
//!
//!     buildstore serve &
//!     cargo run -p buildstore --example socket_client -- examples/events/nightly.jsonl

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

const WINDOW: usize = 100;

fn main() {
    // Said in words, not as the error's Debug form that a `main` returning an error prints.
    if let Err(e) = run() {
        eprintln!("socket_client: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: socket_client EVENTS.jsonl [HOST:PORT]";
    let file = std::env::args().nth(1).ok_or(usage)?;
    let given = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "127.0.0.1:9989".into());
    // Resolved once: a mistyped address is an error now, not a daemon that never answers.
    let addr: Vec<SocketAddr> = given
        .to_socket_addrs()
        .map_err(|e| format!("{given:?} is no HOST:PORT ({e}); {usage}"))?
        .collect();
    // Blank lines are no events: the daemon would answer each with an error.
    let events: Vec<String> = std::fs::read_to_string(file)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let mut acked = 0;
    while acked < events.len() {
        let Ok(stream) = TcpStream::connect(&addr[..]) else {
            eprintln!("daemon unreachable; retrying");
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        let mut writer = stream.try_clone()?;
        let mut replies = BufReader::new(stream);
        let mut sent = acked; // resend from the first unacknowledged event
        'connected: loop {
            while sent < events.len() && sent - acked < WINDOW {
                if writeln!(writer, "{}", events[sent]).is_err() {
                    break 'connected; // connection lost: reconnect and resend
                }
                sent += 1;
            }
            let mut line = String::new();
            // A daemon killed mid-reply may reset the connection, or leave half a line: either
            // way the connection is lost, and what it did not acknowledge whole is sent again.
            match replies.read_line(&mut line) {
                Ok(_) if line.ends_with('\n') => {}
                _ => break,
            }
            println!("{}", line.trim_end());
            let reply: serde_json::Value = serde_json::from_str(&line)?;
            if reply["retry"] == true {
                // The spool is full: the daemon closes; resend from this event after a pause.
                std::thread::sleep(Duration::from_secs(1));
                break;
            }
            if reply["closing"] == true {
                // Not for want of room (a wrong token, or a hello this listener needs): sending
                // again would be refused again.
                return Err(format!("the daemon closed the connection: {}", reply["error"]).into());
            }
            acked += 1; // one reply per line, in order: an ack or an error for that line
            if acked == events.len() {
                break;
            }
        }
    }
    Ok(())
}
