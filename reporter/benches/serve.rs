//! `buildstore serve` end to end: events per second from several socket clients (acks awaited
//! with a window) until everything is applied to the SQLite store through the spool, next to the
//! single-core rate of merely parsing the same lines (the best of three passes in the same run);
//! and the latency of an ack at a moderate fixed rate.
//!
//! Run: `cargo bench -p buildstore --bench serve` (BENCH_EVENTS=N to change the size;
//! BENCH_WINDOW=N for the events each client may have unacknowledged, 500 by default;
//! BENCH_SOCKET=unix to send over the daemon's Unix socket instead of TCP).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use buildstore::synth::lines_of;
use buildstore_schema::Event;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Reads one figure from the daemon's metrics endpoint: a plain HTTP request, so that polling
/// costs the machine next to nothing (starting a `buildstore status` process every few
/// milliseconds would take CPU from the daemon being measured).
fn metric(metrics: u16, name: &str) -> f64 {
    let mut s = TcpStream::connect(("127.0.0.1", metrics)).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("metrics request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("metrics response");
    body.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("buildstore_{name} "))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// CPU time a process has used so far (user and system), from `/proc` (Linux).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12] // utime and stime, counted from the state field
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    let per_second: u64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100);
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// Where the clients connect.
#[derive(Clone)]
enum Target {
    Tcp(u16),
    Unix(std::path::PathBuf),
}

impl Target {
    /// A connection's reading and writing halves.
    fn connect(&self) -> (Box<dyn Read + Send>, Box<dyn Write + Send>) {
        match self {
            Target::Tcp(port) => {
                let s = TcpStream::connect(("127.0.0.1", *port)).expect("connect");
                (Box::new(s.try_clone().expect("clone")), Box::new(s))
            }
            Target::Unix(path) => {
                let s = std::os::unix::net::UnixStream::connect(path).expect("connect");
                (Box::new(s.try_clone().expect("clone")), Box::new(s))
            }
        }
    }
}

/// Sends `events` with up to `window` unacknowledged. Writes are buffered and the window is
/// refilled once half of it has been acknowledged, so that the load generator spends few system
/// calls of the CPU it shares with the daemon being measured.
fn client(to: &Target, events: Vec<String>, window: usize) {
    let (r, w) = to.connect();
    let mut w = std::io::BufWriter::with_capacity(1 << 16, w);
    let mut r = BufReader::new(r);
    let (mut sent, mut acked) = (0, 0);
    let mut reply = String::new();
    while acked < events.len() {
        if sent - acked <= window / 2 {
            while sent < events.len() && sent - acked < window {
                w.write_all(events[sent].as_bytes()).expect("send");
                w.write_all(b"\n").expect("send");
                sent += 1;
            }
            w.flush().expect("send");
        }
        reply.clear();
        r.read_line(&mut reply).expect("reply");
        assert!(reply.contains("\"ack\""), "{reply}");
        acked += 1;
    }
}

fn main() {
    let setting = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(default)
    };
    let n = setting("BENCH_EVENTS", 100_000);
    let window = setting("BENCH_WINDOW", 500);
    let stream = lines_of(n);
    // The machine is shared and its speed moves within a run: parsing is timed once before the
    // daemon runs and twice after, and the best of the three is the baseline, so that a slow
    // moment cannot flatter the ratio.
    let parse = || {
        let start = Instant::now();
        for line in &stream {
            std::hint::black_box(Event::parse(line).expect("parses"));
        }
        start.elapsed()
    };
    let parse_before = parse();

    let dir = tempfile::tempdir().expect("tempdir");
    let (port, metrics) = (free_port(), free_port());
    let sock = dir.path().join("bs.sock");
    let target = match std::env::var("BENCH_SOCKET").as_deref() {
        Ok("unix") => Target::Unix(sock.clone()),
        _ => Target::Tcp(port),
    };
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .arg("--store")
        .arg(format!("sqlite:{}", dir.path().join("s.db").display()))
        .args(["serve", "--listen", &format!("tcp://127.0.0.1:{port}")])
        .args(["--listen", &format!("unix:{}", sock.display())])
        .args(["--metrics", &format!("127.0.0.1:{metrics}")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("serve");
    let mut ready = String::new();
    BufReader::new(daemon.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("ready");

    // Each build's events go through one client, as a master sends them.
    let clients = 4;
    let mut parts: Vec<Vec<String>> = vec![Vec::new(); clients];
    for line in &stream {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let key = v.get("build_id").map(|b| b.to_string()).unwrap_or_default();
        parts[key.len() % clients].push(line.clone());
    }
    let cpu_before = cpu_time(daemon.id());
    let clients_before = cpu_time(std::process::id());
    let start = Instant::now();
    let handles: Vec<_> = parts
        .into_iter()
        .map(|p| {
            let to = target.clone();
            std::thread::spawn(move || client(&to, p, window))
        })
        .collect();
    for h in handles {
        h.join().expect("client");
    }
    let acked = start.elapsed();
    let clients_cpu = cpu_time(std::process::id()).saturating_sub(clients_before);
    while metric(metrics, "events_applied_total") < stream.len() as f64 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let applied = start.elapsed();
    let batches = metric(metrics, "store_batches_total");
    let daemon_cpu = cpu_time(daemon.id()).saturating_sub(cpu_before);

    // Ack latency: one event at a time at about 1 000 events/s.
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).expect("nodelay"); // one small line per round trip: no Nagle delay
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let mut latencies = Vec::new();
    let mut reply = String::new();
    for (i, line) in stream.iter().take(2_000).enumerate() {
        let line = line.replace("\"event_id\":\"e", "\"event_id\":\"latency-e");
        let t = Instant::now();
        w.write_all(line.as_bytes())
            .and_then(|()| w.write_all(b"\n"))
            .expect("send");
        reply.clear();
        r.read_line(&mut reply).expect("reply");
        latencies.push(t.elapsed());
        let next = Duration::from_millis(i as u64 + 1);
        std::thread::sleep(
            next.saturating_sub(t.elapsed())
                .min(Duration::from_millis(1)),
        );
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    let _ = daemon.kill();
    let _ = daemon.wait();
    let parse_best = parse_before.min(parse()).min(parse());
    let parse_rate = stream.len() as f64 / parse_best.as_secs_f64();

    let rate = stream.len() as f64 / applied.as_secs_f64();
    let over = match target {
        Target::Tcp(_) => "TCP",
        Target::Unix(_) => "a Unix socket",
    };
    println!(
        "events: {}, {clients} clients over {over}, window {window}",
        stream.len()
    );
    println!("parse only (1 core):          {parse_rate:>10.0} events/s");
    println!(
        "acknowledged (spooled):       {:>10.0} events/s",
        stream.len() as f64 / acked.as_secs_f64()
    );
    println!("end to end (applied, SQLite): {rate:>10.0} events/s");
    println!("end to end / parse:           {:>10.2}", rate / parse_rate);
    println!(
        "daemon CPU per event:         {:>10.1} µs (parsing one: {:.1} µs)",
        daemon_cpu.as_secs_f64() * 1e6 / stream.len() as f64,
        1e6 / parse_rate
    );
    println!(
        "store batches:                {batches:>10.0} ({:.0} events each)",
        stream.len() as f64 / batches
    );
    println!(
        "clients' CPU per event:       {:>10.1} µs",
        clients_cpu.as_secs_f64() * 1e6 / stream.len() as f64
    );
    println!(
        "ack latency at ~1000 events/s: p50 {:?}, p99 {:?}",
        pct(0.5),
        pct(0.99)
    );
}
