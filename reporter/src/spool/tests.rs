//! The spool's promises: order, durability across reopening, release only of what was confirmed,
//! group commits, and backpressure instead of silent drops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;

fn lines(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{{\"n\":{i}}}")).collect()
}

#[test]
fn events_come_out_in_order_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let ids = spool.append(&lines(5)).unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    let got = spool.read(0, 100).unwrap();
    assert_eq!(
        got.iter().map(|s| s.line.clone()).collect::<Vec<_>>(),
        lines(5)
    );
    assert_eq!(
        spool.depth(),
        Depth {
            events: 5,
            bytes: lines(5).iter().map(|l| l.len() as u64).sum()
        }
    );
}

#[test]
fn release_forgets_only_what_was_confirmed_and_ids_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let ids = spool.append(&lines(4)).unwrap();
    let freed = spool.release(ids[1]).unwrap();
    assert_eq!(freed, (lines(4)[0].len() + lines(4)[1].len()) as u64);
    assert_eq!(spool.oldest().unwrap(), Some(ids[2]));
    spool.release(ids[3]).unwrap();
    assert_eq!(spool.oldest().unwrap(), None);
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    let next = spool.append(&lines(1)).unwrap();
    assert!(
        next[0] > ids[3],
        "AUTOINCREMENT: a released id is never handed out again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_appends_are_all_durable_with_distinct_ids() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let (appender, _task) = Appender::start(spool.clone(), Arc::new(AtomicU64::new(0)), u64::MAX);
    let mut tasks = Vec::new();
    for i in 0..500 {
        let a = appender.clone();
        tasks.push(tokio::spawn(async move {
            a.append(format!("line {i}")).await.unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 500);
    assert_eq!(spool.depth().events, 500);
}

#[tokio::test]
async fn past_the_limit_appends_are_refused_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let held = Arc::new(AtomicU64::new(0));
    let (appender, _task) = Appender::start(spool.clone(), Arc::clone(&held), 25);
    appender.append("0123456789".into()).await.unwrap();
    appender.append("0123456789".into()).await.unwrap();
    let err = appender.append("0123456789".into()).await.unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::Full(SpoolFull {
                held: 20,
                limit: 25
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("the spool is full"));
    assert_eq!(
        spool.depth().events,
        2,
        "the refused line is not in the spool"
    );
    let first = spool.oldest().unwrap().unwrap();
    held.fetch_sub(spool.release(first).unwrap(), Ordering::Relaxed);
    appender.append("0123456789".into()).await.unwrap();
}

#[test]
fn the_depth_kept_while_running_equals_what_a_reopened_spool_counts() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let ids = spool.append(&lines(10)).unwrap();
    spool.append(&["é".repeat(100)]).unwrap();
    spool.release(ids[3]).unwrap();
    let kept = spool.depth();
    assert_eq!(kept.events, 7);
    drop(spool);
    assert_eq!(Spool::open(dir.path()).unwrap().depth(), kept);
}
