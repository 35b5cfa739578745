//! Events on their way from the spool's writer to the applier, in memory. The writer puts each
//! group here once its commit is durable; the applier takes them in id order without reading the
//! file back or parsing the lines again. The queue is bounded: past its limit the writer leaves
//! groups out, and the applier, finding a gap, reads those events from the file instead. So the
//! file stays the source of truth and this is only a shortcut.

use std::collections::VecDeque;
use std::sync::Mutex;

use buildstore_schema::Event;
use tokio::sync::Notify;

/// The in-memory queue between the writer and the applier.
pub struct Handoff {
    queue: Mutex<Queue>,
    ready: Notify,
    /// Most line bytes held; a group that would go past it is left to the file.
    limit: usize,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Entry>,
    bytes: usize,
    closed: bool,
}

struct Entry {
    id: i64,
    event: Event,
    bytes: usize,
}

impl Handoff {
    pub fn new(limit: usize) -> Handoff {
        Handoff {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue is consistent between statements: a panic elsewhere leaves it usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands over a durable group: `events` have ids `first`, `first + 1`, … and `bytes` is the
    /// length of each one's line.
    pub fn push(&self, first: i64, events: Vec<(Event, usize)>) {
        {
            let mut q = self.lock();
            let bytes: usize = events.iter().map(|(_, b)| b).sum();
            if q.bytes + bytes <= self.limit {
                q.bytes += bytes;
                q.events
                    .extend((first..).zip(events).map(|(id, (event, bytes))| Entry {
                        id,
                        event,
                        bytes,
                    }));
            }
        }
        self.ready.notify_one();
    }

    /// Up to `limit` events with consecutive ids from `next` on, oldest first; none when the
    /// event `next` is not in memory (it is in the file, or not written yet). Entries below
    /// `next` (read from the file in the meantime) are dropped.
    pub fn take(&self, next: i64, limit: usize) -> Vec<(i64, Event)> {
        let mut q = self.lock();
        while q.events.front().is_some_and(|e| e.id < next) {
            if let Some(stale) = q.events.pop_front() {
                q.bytes -= stale.bytes;
            }
        }
        let mut out = Vec::with_capacity(limit.min(q.events.len()));
        while out.len() < limit
            && q.events
                .front()
                .is_some_and(|e| e.id == next + out.len() as i64)
        {
            if let Some(e) = q.events.pop_front() {
                q.bytes -= e.bytes;
                out.push((e.id, e.event));
            }
        }
        out
    }

    /// The writer has stopped: nothing more will come.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Returns once something was pushed (or the writer stopped) since the last call.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> (Event, usize) {
        let line = format!(
            r#"{{"type":"builder_state","master_id":"m","event_id":"e{n}","builder":"b","state":"idle"}}"#
        );
        (Event::parse(&line).expect("a valid event"), line.len())
    }

    fn ids(taken: Vec<(i64, Event)>) -> Vec<i64> {
        taken.into_iter().map(|(id, _)| id).collect()
    }

    #[test]
    fn events_come_out_in_id_order_in_pieces_of_the_asked_size() {
        let h = Handoff::new(usize::MAX);
        h.push(10, (0..3).map(event).collect());
        h.push(13, (3..5).map(event).collect());
        assert_eq!(ids(h.take(10, 4)), vec![10, 11, 12, 13]);
        assert_eq!(ids(h.take(14, 4)), vec![14]);
        assert!(h.take(15, 4).is_empty());
    }

    #[test]
    fn events_already_read_from_the_file_are_dropped() {
        let h = Handoff::new(usize::MAX);
        h.push(1, (0..5).map(event).collect());
        assert_eq!(ids(h.take(4, 10)), vec![4, 5]);
    }

    #[test]
    fn a_group_past_the_limit_is_left_to_the_file_and_leaves_a_gap() {
        let one = event(0).1;
        let h = Handoff::new(one * 2);
        h.push(1, (0..2).map(event).collect());
        h.push(3, (2..4).map(event).collect()); // over the limit: not kept
        assert_eq!(ids(h.take(1, 10)), vec![1, 2]);
        // The queue is empty again, so the next group fits; ids 3 and 4 must come from the file.
        h.push(5, (4..5).map(event).collect());
        assert!(h.take(3, 10).is_empty(), "a gap is never skipped over");
        assert_eq!(ids(h.take(5, 10)), vec![5]);
    }
}
