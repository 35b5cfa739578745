use super::*;
use buildstore_schema::{Ident, LogBytes};

/// Steps as a build page reads them from the store: each log cut to what the page shows.
fn as_read(steps: &[StepDoc]) -> Vec<StepDoc> {
    steps
        .iter()
        .map(|s| {
            let mut doc = bson::to_document(s).unwrap();
            super::log_tail::keep_page_tails(&mut doc);
            bson::from_document(doc).unwrap()
        })
        .collect()
}

fn at(secs: i64) -> bson::DateTime {
    bson::DateTime::from_millis(1_763_900_000_000 + secs * 1000)
}

fn build(id: &str, builder: &str, changeset: Option<&str>) -> BuildDoc {
    BuildDoc {
        id: id.into(),
        builder: builder.into(),
        number: 1,
        changeset: changeset.map(Into::into),
        time_start: at(0),
        time_end: Some(at(100)),
        result: Some(0),
        slaves: vec!["w1".into()],
        steps: vec![],
        master_id: Ident::Str("m1".into()),
        build_id: Ident::Int(1),
        branch: Some("main".into()),
        repository: Some("https://example.org/repo".into()),
        codebase: None,
        reason: None,
        properties: BTreeMap::new(),
        changes: vec![],
    }
}

fn step(n: i64, start: i64, end: Option<i64>, result: Option<i32>) -> StepDoc {
    StepDoc {
        id: format!("m1/1/{n}"),
        build: "m1/1".into(),
        step: n,
        name: format!("step {n}"),
        time_start: at(start),
        time_end: end.map(at),
        result,
        successful: result.map(|r| r == 0),
        text: None,
        stdout: "inline out".into(),
        stderr: String::new(),
        headers: String::new(),
        log_truncated: false,
        log_bytes: LogBytes {
            stdout: 10,
            ..LogBytes::default()
        },
    }
}

fn change(revision: &str) -> ChangeDoc {
    ChangeDoc {
        revision: Some(revision.into()),
        author: Some("alice".into()),
        comments: Some("fix".into()),
        files: vec!["a.c".into()],
        when: Some(at(-60)),
        branch: None,
        repository: None,
    }
}

#[test]
fn results_carry_buildbots_names_and_running_when_unfinished() {
    let names: Vec<&str> = (0..=6).map(|c| Outcome::of(Some(c)).name).collect();
    assert_eq!(names, ResultCode::NAMES);
    assert_eq!(result_names().last(), Some("running"));
    assert_eq!(Outcome::of(None).name, "running");
    assert_eq!(Outcome::of(Some(42)).name, "unknown");
    assert!(Outcome::of(Some(2)).is_failure() && Outcome::of(Some(4)).is_failure());
    assert!(!Outcome::of(Some(1)).is_failure() && !Outcome::of(None).is_failure());
}

#[test]
fn the_platform_comes_from_the_property_then_the_builder_name() {
    let mut props = BTreeMap::new();
    assert_eq!(platform(&props, "Linux64-opt build"), "linux64");
    assert_eq!(platform(&props, "fx-win32-debug"), "win32");
    assert_eq!(platform(&props, "macosx64_nightly"), "macosx64");
    assert_eq!(platform(&props, "windows"), "windows");
    assert_eq!(platform(&props, "docs"), "unknown");
    assert_eq!(platform(&props, "window-manager"), "unknown");
    // Names of the old Mozilla builders.
    assert_eq!(platform(&props, "WINNT 5.2 mozilla-central build"), "winnt");
    assert_eq!(platform(&props, "OS X 10.6.2 mozilla-central build"), "osx");
    assert_eq!(
        platform(&props, "Rev3 Fedora 12x64 mozilla-central opt test"),
        "fedora"
    );
    assert_eq!(platform(&props, "Ubuntu VM 12.04 x64 try"), "ubuntu");
    assert_eq!(platform(&props, "costs-x"), "unknown");
    props.insert(
        "platform".into(),
        PropertyDoc {
            value: Bson::String("android-arm".into()),
            source: None,
        },
    );
    assert_eq!(platform(&props, "linux64"), "android-arm");
}

#[test]
fn builds_of_one_sourcestamp_share_a_row_with_their_changes_once() {
    let mut a = build("m1/3", "linux", Some("abc"));
    a.changes = vec![change("abc")];
    let b = build("m1/2", "nightly", None);
    let mut c = build("m1/1", "win32", Some("abc"));
    c.changes = vec![change("abc")];
    let rows = activity_rows(&[a, b, c]);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].sourcestamp.changeset.as_deref(), Some("abc"));
    let builders: Vec<&str> = rows[0].builds.iter().map(|b| b.builder.as_str()).collect();
    assert_eq!(builders, ["linux", "win32"]);
    assert_eq!(rows[0].changes.len(), 1);
    assert!(rows[1].sourcestamp.nightly);
    assert!(rows[1].changes.is_empty());
}

#[test]
fn a_page_read_with_one_row_more_knows_whether_an_older_page_exists() {
    let builds = [build("m1/2", "a", None), build("m1/1", "a", None)];
    let (shown, last) = page(&builds, 1);
    assert_eq!(shown.len(), 1);
    assert_eq!(
        last.map(build_cursor),
        Some(BuildCursor {
            time_start: at(0),
            id: "m1/2".into()
        })
    );
    // Exactly `limit` rows: this is the last page, and it has no "older" link.
    assert_eq!(page(&builds, 2), (&builds[..], None));
}

#[test]
fn a_build_page_carries_the_end_of_each_log_within_a_bound_the_failed_step_draws_on_first() {
    use super::log_tail::{PAGE_TAIL_BYTES, TAIL_BYTES};
    let b = build("m1/1", "linux", None);
    let line = "x".repeat(99) + "\n";
    // A thousand steps with 16 KiB inline on each channel (1 MiB by default would make 3 GiB).
    let steps: Vec<StepDoc> = (0..1000)
        .map(|n| {
            let mut s = step(n, n, Some(n + 1), Some(if n == 999 { 2 } else { 0 }));
            let log = line.repeat(160) + &format!("end of step {n}\n");
            s.stdout = log.clone();
            s.stderr = log.clone();
            s.headers = log.clone();
            s.log_bytes = LogBytes {
                stdout: log.len() as i64,
                stderr: log.len() as i64,
                headers: log.len() as i64,
            };
            s
        })
        .collect();
    let v = build_view(&b, None, &as_read(&steps), false, at(1000));
    let tails: Vec<&LogView> = v.steps.iter().flat_map(|s| &s.logs).collect();
    assert_eq!(
        tails.len(),
        3000,
        "every log is still listed, with its link"
    );
    assert!(tails.iter().all(|l| l.tail.len() <= TAIL_BYTES));
    let total: usize = tails.iter().map(|l| l.tail.len()).sum();
    assert!(total <= PAGE_TAIL_BYTES, "{total}");
    let failed = &v.steps[999];
    assert!(failed.failed);
    for log in &failed.logs {
        assert!(log.tail.ends_with("end of step 999\n") && log.tail.starts_with('x'));
    }
    assert!(v.steps[0].logs[0].tail.ends_with("end of step 0\n"));
    assert!(v.steps[998].logs[0].tail.is_empty(), "past the budget");
}

/// With a small inline limit the tail of a cut field is under 4 KiB: the page shows it, not the
/// head and the marker before it.
#[test]
fn the_end_of_a_cut_log_shown_is_what_follows_its_marker() {
    let b = build("m1/1", "linux", None);
    let mut s = step(0, 0, Some(1), Some(2));
    s.stdout = "line 0\n\n[... 18608 bytes truncated by buildstore ...]\nline 49\n".into();
    s.log_bytes.stdout = 18_800;
    s.log_truncated = true;
    let v = build_view(&b, None, &as_read(&[s]), false, at(10));
    assert_eq!(v.steps[0].logs[0].tail, "line 49\n");
}

/// A master that died mid-step finishes the build on its restart, never the step: the step is
/// shown as unfinished, lasting until its build ended, not as running to this day.
#[test]
fn a_step_never_finished_in_a_finished_build_is_unfinished_until_the_builds_end() {
    let mut b = build("m1/1", "linux", None);
    b.result = Some(4);
    b.time_end = Some(at(100));
    let steps = [step(0, 0, Some(10), Some(0)), step(1, 10, None, None)];
    let v = build_view(&b, None, &as_read(&steps), false, at(1_000_000));
    assert_eq!(v.steps[1].result.name, "unfinished");
    assert_eq!(v.steps[1].result.code, None);
    assert_eq!(v.steps[1].duration_ms, 90_000);
    assert_eq!(v.steps[1].bar.width_pct, 90.0);
    // While the build runs, so does the step.
    b.result = None;
    b.time_end = None;
    let v = build_view(&b, None, &as_read(&steps), false, at(1000));
    assert_eq!(v.steps[1].result.name, "running");
    assert_eq!(v.steps[1].duration_ms, 990_000);
}

#[test]
fn step_bars_show_where_in_the_build_each_step_ran() {
    let b = build("m1/1", "linux", None);
    let steps = [
        step(0, 0, Some(10), Some(0)),
        step(1, 10, Some(90), Some(2)),
        step(2, 90, Some(100), Some(3)),
    ];
    let v = build_view(&b, None, &as_read(&steps), false, at(1000));
    let bars: Vec<(f64, f64)> = v
        .steps
        .iter()
        .map(|s| (s.bar.offset_pct, s.bar.width_pct))
        .collect();
    assert_eq!(bars, [(0.0, 10.0), (10.0, 80.0), (90.0, 10.0)]);
    assert_eq!(v.duration_ms, 100_000);
    assert_eq!(v.steps[1].duration_ms, 80_000);
    let failed: Vec<bool> = v.steps.iter().map(|s| s.failed).collect();
    assert_eq!(failed, [false, true, false]);
    assert_eq!(v.steps[0].logs[0].url, "/steps/m1/1/0/logs/stdout");
    assert_eq!(v.steps[0].logs[0].tail, "inline out");
}

#[test]
fn the_step_that_gave_a_bad_build_its_result_is_highlighted() {
    let mut b = build("m1/1", "win32", None);
    b.result = Some(1);
    let steps = [
        step(0, 0, Some(50), Some(0)),
        step(1, 50, Some(60), Some(3)),
        step(2, 60, Some(100), Some(1)),
    ];
    let v = build_view(&b, None, &as_read(&steps), false, at(1000));
    let failed: Vec<bool> = v.steps.iter().map(|s| s.failed).collect();
    assert_eq!(failed, [false, false, true]);
    b.result = Some(0);
    let v = build_view(&b, None, &as_read(&steps), false, at(1000));
    assert!(v.steps.iter().all(|s| !s.failed), "a build that succeeded");
}

#[test]
fn a_running_build_is_measured_until_now() {
    let mut b = build("m1/1", "linux", None);
    b.time_end = None;
    b.result = None;
    let steps = [step(0, 0, Some(20), Some(0)), step(1, 20, None, None)];
    let v = build_view(&b, None, &as_read(&steps), false, at(40));
    assert_eq!(v.duration_ms, 40_000);
    assert_eq!(v.steps[1].duration_ms, 20_000);
    assert_eq!(v.steps[1].bar.offset_pct, 50.0);
    assert_eq!(v.steps[1].result.name, "running");
    assert_eq!(v.summary.result.name, "running");
}

#[test]
fn bars_never_leave_the_track() {
    let mut b = build("m1/1", "linux", None);
    b.time_end = Some(at(10));
    // A step clock ahead of the build's, and a build of zero length.
    let v = build_view(
        &b,
        None,
        &as_read(&[step(0, 5, Some(50), Some(0))]),
        false,
        at(60),
    );
    assert_eq!(v.steps[0].bar.offset_pct, 50.0);
    assert_eq!(v.steps[0].bar.width_pct, 50.0);
    b.time_end = Some(at(0));
    let v = build_view(
        &b,
        None,
        &as_read(&[step(0, 0, Some(0), Some(0))]),
        false,
        at(60),
    );
    assert_eq!(v.steps[0].bar.width_pct, 0.0);
}

#[test]
fn the_console_has_a_column_per_builder_and_a_cursor_when_full() {
    let entry = |builder: &str, result| RepoBuildEntry {
        build: format!("m1/{builder}"),
        builder: builder.into(),
        number: 1,
        result: Some(result),
        time_start: at(0),
        time_end: Some(at(1)),
    };
    let commit = |id: &str, builds| CommitDoc {
        id: id.into(),
        hash: Some(id.into()),
        hash_abbrev: None,
        subject: Some("s".into()),
        author_name: None,
        author_email: None,
        author_date: None,
        commiter_name: None,
        commiter_email: None,
        commiter_date: Some(at(0)),
        repository_uri: None,
        builds,
    };
    let commits = [
        commit("b", vec![entry("win", 2)]),
        commit("a", vec![entry("linux", 0), entry("win", 0)]),
    ];
    let v = console(&commits, 2);
    assert_eq!(v.builders, ["linux", "win"]);
    assert_eq!(v.commits[0].builds[0].result.name, "failure");
    assert_eq!(v.next, None, "no commit beyond the page");
    let v = console(&commits, 1);
    assert_eq!(v.commits.len(), 1);
    assert_eq!(v.builders, ["win"]);
    assert_eq!(v.next.as_deref(), Some("1763900000000:b"));

    // A thousand builders of their own per commit: 500 commits would make 500 million cells.
    let sparse: Vec<CommitDoc> = (0..500)
        .map(|c| {
            let builds = (0..1000).map(|b| entry(&format!("b{c}-{b}"), 0)).collect();
            commit(&format!("c{c:03}"), builds)
        })
        .collect();
    let v = console(&sparse, 500);
    let cells = v.commits.len() * v.builders.len();
    assert!(cells <= MAX_CONSOLE_CELLS, "{cells} cells");
    assert_eq!(v.commits.len(), 7, "as many commits as fit");
    assert_eq!(v.commits.last().map(|c| c.hash.as_str()), Some("c006"));
    assert_eq!(
        v.next.as_deref(),
        Some("1763900000000:c006"),
        "the next page goes on"
    );
    // However many builders one commit has, a page shows it.
    assert_eq!(console(&sparse[..1], 500).commits.len(), 1);
    // An empty abbreviation, as an earlier version stored it, is none: the page shows the hash.
    let mut old = commit("d", vec![]);
    old.hash_abbrev = Some(String::new());
    assert_eq!(console(&[old], 1).commits[0].hash_abbrev, None);
}

#[test]
fn builders_are_grouped_by_master() {
    let builder = |master: &str, name: &str| BuilderDoc {
        id: format!("{master}/{name}"),
        name: name.into(),
        master_id: Ident::Str(master.into()),
        status: "idle".into(),
        category: None,
        tags: vec![],
        slaves: vec![],
    };
    // Read with one builder more than the page of 3 shows.
    let read = [
        builder("m1", "a"),
        builder("m1", "b"),
        builder("m2", "a"),
        builder("m2", "b"),
    ];
    let (shown, last) = page(&read, 3);
    let rows = shown
        .iter()
        .cloned()
        .zip([vec![build("m1/1", "a", None)], vec![], vec![]])
        .collect();
    let v = builders_view(rows, last.map(|b| b.id.clone()));
    let shape: Vec<(String, usize)> = v
        .masters
        .iter()
        .map(|m| (m.master.clone(), m.builders.len()))
        .collect();
    assert_eq!(
        shape,
        [("m1".to_owned(), 2), ("m2".to_owned(), 1)],
        "the fourth builder is the next page's"
    );
    assert_eq!(v.masters[0].builders[0].last_builds.len(), 1);
    assert_eq!(v.masters[0].builders[0].url, "/?master=m1&builder=a");
    assert_eq!(v.next.as_deref(), Some("m2/a"));
}

#[test]
fn durations_read_like_a_person_would_say_them() {
    assert_eq!(human_duration(850), "850 ms");
    assert_eq!(human_duration(42_000), "42 s");
    assert_eq!(human_duration(185_000), "3 min 05 s");
    assert_eq!(human_duration(7_620_000), "2 h 07 min");
}

/// A build read for a list keeps what the list shows: its summary (the platform property
/// included) is the whole document's, while other properties and its step ids are left out, and
/// a badge's build leaves out its changes too.
#[test]
fn a_build_read_for_a_list_keeps_what_the_list_shows() {
    let mut b = build("m1/1", "linux", Some("abc"));
    b.steps = vec!["m1/1/0".into(), "m1/1/1".into()];
    for (name, value) in [("platform", "solaris"), ("big", &"x".repeat(100_000)[..])] {
        b.properties.insert(
            name.into(),
            PropertyDoc {
                value: Bson::String(value.into()),
                source: Some("test".into()),
            },
        );
    }
    b.changes = vec![ChangeDoc {
        revision: Some("abc".into()),
        author: None,
        comments: Some("fix".into()),
        files: vec!["a.c".into()],
        when: None,
        branch: None,
        repository: None,
    }];
    let read = |each: fn(&mut bson::Document)| -> BuildDoc {
        let mut doc = bson::to_document(&b).unwrap();
        each(&mut doc);
        bson::from_document(doc).unwrap()
    };
    let listed = read(keep_list_fields);
    assert_eq!(summary(&listed), summary(&b));
    assert_eq!(summary(&listed).platform, "solaris");
    assert_eq!(listed.properties.keys().collect::<Vec<_>>(), ["platform"]);
    assert!(listed.steps.is_empty());
    assert_eq!(
        activity_rows(std::slice::from_ref(&listed)),
        activity_rows(std::slice::from_ref(&b))
    );
    let badge = read(keep_badge_fields);
    assert_eq!(summary(&badge), summary(&b));
    assert!(badge.changes.is_empty());
}
