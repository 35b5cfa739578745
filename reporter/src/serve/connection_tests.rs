//! A connection's writer: what it answers when the spool fails to write a group.

use super::*;
use crate::spool::{AppendError, Handoff, Pending, Spool};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn a_failed_spool_write_refuses_its_first_line_and_nothing_after_it_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let held = Arc::new(AtomicU64::new(0));
    let (appender, _task) = Appender::start(spool, Arc::new(Handoff::new(0)), held, u64::MAX);
    let shared = Arc::new(Shared::new(appender, 1024, None, Duration::from_secs(5)));
    let conn = Conn {
        shared,
        me: Arc::new(OpenConnection {
            peer: "test".into(),
            counts: LineCounts::default(),
        }),
        sequence: Sequence::default(),
    };
    let run = |first: u64| {
        (first..first + 2)
            .map(|line| Submitted {
                id: format!("e{line}"),
                line,
            })
            .collect::<Vec<_>>()
    };
    let (queue, replies) = Replies::new();
    for (outcome, first) in [
        (Ok(1), 1),
        (Err(AppendError::Spool("disk I/O error".into())), 3),
        (Ok(5), 5),
    ] {
        let pending = Pending::settled(outcome);
        let later = Reply::Later {
            pending,
            run: run(first),
        };
        assert!(queue.push(later).await.is_ok());
    }
    drop(queue);
    let (client, daemon) = tokio::io::duplex(1 << 16);
    write_replies(daemon, replies, conn.clone(), Duration::from_secs(5)).await;
    let mut text = String::new();
    let mut client = client;
    client.read_to_string(&mut text).await.unwrap();
    let got: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 3, "{text}");
    assert_eq!(got[0]["ack"], "e1");
    assert_eq!(got[1]["ack"], "e2");
    assert_eq!(got[2]["line"], 3);
    assert_eq!(got[2]["retry"], true);
    assert_eq!(got[2]["closing"], true, "the client resends from line 3");
    let counts = &conn.me.counts;
    assert_eq!(counts.acknowledged.load(Ordering::SeqCst), 2);
    assert_eq!(
        counts.rejected.load(Ordering::SeqCst),
        1,
        "only the line answered with the error"
    );
    assert_eq!(
        counts.unanswered.load(Ordering::SeqCst),
        3,
        "line 4 and the run behind it, which the client sends again"
    );
}
