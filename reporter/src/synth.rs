//! Synthetic event streams: many builders on two masters running builds concurrently, with steps,
//! logs, properties, changeset corrections and commits. Deterministic for a seed, so benchmarks and
//! load tests measure the same work every run.

use serde_json::{json, Value};

/// Shape of a generated stream.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Stop after about this many events (whole builds only).
    pub events: usize,
    /// Builds running at the same time; their events interleave.
    pub concurrent: usize,
    pub steps_per_build: u32,
    pub log_chunks_per_step: u32,
    pub log_chunk_bytes: usize,
    /// Whether log chunks carry their `offset`. Without one a chunk goes at the end of what the
    /// store holds, which a chunk applied twice would double.
    pub log_offsets: bool,
    pub seed: u64,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            events: 100_000,
            concurrent: 20,
            steps_per_build: 5,
            log_chunks_per_step: 4,
            log_chunk_bytes: 200,
            log_offsets: true,
            seed: 42,
        }
    }
}

const BUILDERS: [&str; 6] = [
    "linux-x86_64",
    "linux-arm64",
    "macos",
    "windows",
    "docs",
    "lint",
];
const STEPS: [&str; 6] = ["git", "clobber", "configure", "compile", "test", "upload"];

/// The events of one build, in order, without times (added when interleaving).
fn build_events(rng: &mut fastrand::Rng, shape: &Shape, serial: u64) -> Vec<Value> {
    let master: Value = if serial.is_multiple_of(2) {
        json!("m1")
    } else {
        json!(2)
    };
    let builder = BUILDERS[rng.usize(..BUILDERS.len())];
    let build_id = json!(serial);
    let hash: String = (0..40)
        .map(|_| char::from_digit(rng.u32(..16), 16).unwrap_or('0'))
        .collect();
    let mut out = vec![json!({
        "type": "build_started", "master_id": master, "builder": builder, "build_id": build_id,
        "number": serial / 2, "changeset": "FETCH_HEAD", "branch": "main",
        "repository": "https://example.org/project.git", "reason": "scheduler",
        "slaves": [format!("worker-{}", rng.u8(1..9))],
        "properties": {"platform": {"value": builder, "source": "builder"}},
        "changes": [{"revision": hash, "author": "dev <dev@example.org>", "comments": "change",
                     "files": ["src/main.c"], "when": 1_800_000_000 + serial, "branch": "main",
                     "repository": "https://example.org/project.git"}],
    })];
    let mut worst = 0;
    for step in 0..shape.steps_per_build {
        let name = STEPS[step as usize % STEPS.len()];
        out.push(json!({"type": "step_started", "master_id": master, "build_id": build_id, "step": step, "name": name}));
        let mut offset = 0usize;
        for chunk in 0..shape.log_chunks_per_step {
            let line = format!(
                "[{name}] chunk {chunk}: compiling unit {} ... ok\n",
                rng.u32(..10_000)
            );
            let text: String = line.repeat(shape.log_chunk_bytes / line.len() + 1);
            let text = &text[..shape.log_chunk_bytes.min(text.len())];
            let mut log = json!({"type": "log", "master_id": master, "build_id": build_id,
                                 "step": step, "channel": "stdout", "text": text});
            if shape.log_offsets {
                log["offset"] = offset.into();
            }
            out.push(log);
            offset += text.len();
        }
        if step == 0 {
            out.push(
                json!({"type": "property", "master_id": master, "build_id": build_id,
                            "name": "got_revision", "value": hash, "source": "Git"}),
            );
        }
        let result = if rng.u8(..20) == 0 { 2 } else { 0 };
        worst = worst.max(result);
        out.push(json!({"type": "step_finished", "master_id": master, "build_id": build_id, "step": step, "result": result}));
    }
    out.push(json!({"type": "build_finished", "master_id": master, "build_id": build_id, "result": worst}));
    out.push(json!({
        "type": "commit", "master_id": master, "hash": hash, "repository_uri": "https://example.org/project.git",
        "subject": format!("Change {serial}"), "author_name": "Dev", "author_email": "dev@example.org",
        "author_date": 1_800_000_000 + serial, "commiter_name": "Dev", "commiter_email": "dev@example.org",
        "commiter_date": 1_800_000_000 + serial,
    }));
    out
}

/// The default shape's stream of about `events` events, as protocol lines.
pub fn lines_of(events: usize) -> Vec<String> {
    lines(&Shape {
        events,
        ..Shape::default()
    })
}

/// Generates a stream as protocol lines, every event with an `event_id` and a `time`.
pub fn lines(shape: &Shape) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(shape.seed);
    let mut out = Vec::with_capacity(shape.events + 64);
    for (i, builder) in BUILDERS.iter().enumerate() {
        for master in [json!("m1"), json!(2)] {
            out.push(
                json!({"type": "builder_added", "master_id": master, "builder": builder,
                            "category": "ci", "slaves": [format!("worker-{i}")]}),
            );
        }
    }
    let mut running: Vec<std::collections::VecDeque<Value>> = Vec::new();
    let mut serial = 0u64;
    let mut budget = shape.events.saturating_sub(out.len());
    loop {
        while running.len() < shape.concurrent.max(1) && budget > 0 {
            let events = build_events(&mut rng, shape, serial);
            budget = budget.saturating_sub(events.len());
            serial += 1;
            running.push(events.into());
        }
        if running.is_empty() {
            break;
        }
        let pick = rng.usize(..running.len());
        if let Some(event) = running[pick].pop_front() {
            out.push(event);
        }
        if running[pick].is_empty() {
            running.swap_remove(pick);
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, mut event)| {
            if let Some(obj) = event.as_object_mut() {
                obj.insert("event_id".into(), json!(format!("e{i}")));
                obj.insert("time".into(), json!(1_800_000_000.0 + i as f64 * 0.01));
            }
            event.to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildstore_schema::Event;

    #[test]
    fn streams_are_valid_deterministic_and_about_the_requested_size() {
        let shape = Shape {
            events: 2_000,
            ..Shape::default()
        };
        let a = lines(&shape);
        assert_eq!(a, lines(&shape));
        assert!((1_900..2_100).contains(&a.len()), "{}", a.len());
        for line in &a {
            Event::parse(line).unwrap();
        }
    }
}
