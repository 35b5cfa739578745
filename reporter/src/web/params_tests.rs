use super::*;

fn activity(q: &str) -> Result<BuildQuery, ParamError> {
    ActivityParams::parse(Some(q)).map(|p| p.query)
}

fn error(q: &str) -> String {
    activity(q).unwrap_err().0
}

#[test]
fn no_parameters_is_the_widest_view() {
    assert_eq!(
        activity("").unwrap(),
        BuildQuery {
            limit: DEFAULT_LIMIT,
            ..BuildQuery::default()
        }
    );
    assert_eq!(
        ActivityParams::parse(None).unwrap().query.limit,
        DEFAULT_LIMIT
    );
}

#[test]
fn filters_are_read_with_percent_decoding() {
    let q =
        activity("master=m%201&builder=linux+64&branch=release/1.x&changeset=abc&limit=5").unwrap();
    assert_eq!(q.master.as_deref(), Some("m 1"));
    assert_eq!(q.builder.as_deref(), Some("linux 64"));
    assert_eq!(q.branch.as_deref(), Some("release/1.x"));
    assert_eq!(q.changeset.as_deref(), Some("abc"));
    assert_eq!(q.limit, 5);
}

#[test]
fn an_empty_value_widens_like_a_missing_one() {
    assert_eq!(activity("builder=&branch=").unwrap(), activity("").unwrap());
}

#[test]
fn results_are_named_as_buildbot_names_them_or_given_as_codes() {
    assert_eq!(
        activity("result=failure").unwrap().result,
        Some(ResultFilter::Finished(2))
    );
    assert_eq!(
        activity("result=6").unwrap().result,
        Some(ResultFilter::Finished(6))
    );
    assert_eq!(
        activity("result=running").unwrap().result,
        Some(ResultFilter::Running)
    );
    assert!(error("result=broken").contains("result must be one of success"));
    assert!(error("result=7").contains("not \"7\""));
}

#[test]
fn dates_and_date_times_are_accepted_and_ordered() {
    let q = activity("since=2026-11-01&until=2026-11-02T12:00:00%2B01:00").unwrap();
    assert_eq!(
        q.since.unwrap().try_to_rfc3339_string().unwrap(),
        "2026-11-01T00:00:00Z"
    );
    assert_eq!(
        q.until.unwrap().try_to_rfc3339_string().unwrap(),
        "2026-11-02T11:00:00Z"
    );
    assert!(error("since=yesterday").contains("since must be a date"));
    assert!(error("since=2026-11-02&until=2026-11-01").contains("earlier than until"));
}

/// The pages write `since` and `until` back into their links: a time they could not write, once
/// in UTC, is refused rather than lost from the links (or written in a form refused there).
#[test]
fn times_outside_years_0000_to_9999_in_utc_are_refused() {
    for q in [
        "until=9999-12-31T23:00:00-05:00",
        "since=0000-01-01T00:00:00%2B01:00",
    ] {
        assert!(
            error(q).contains("within the years 0000 to 9999 in UTC"),
            "{q}: {}",
            error(q)
        );
    }
    let last = activity("until=9999-12-31T23:59:59.999Z").unwrap();
    let link = ActivityParams { query: last }.link(|_| {});
    assert_eq!(link, "?until=9999-12-31T23:59:59.999Z");
    // Within year 9999's last millisecond, past what a link holds to the millisecond.
    let later = activity("until=9999-12-31T23:59:59.9995Z").unwrap();
    let link = ActivityParams { query: later }.link(|_| {});
    assert_eq!(link, "?until=9999-12-31T23:59:59.999Z");
}

/// Builds start at whole milliseconds: a time between two of them is compared as given, and
/// filters as the next millisecond (a build at .000 started before .0009, and not after .0001).
#[test]
fn times_finer_than_a_millisecond_keep_their_order_and_meaning() {
    let q = activity("since=2026-04-01T00:00:00.0001Z&until=2026-04-01T00:00:00.0019Z").unwrap();
    let next = |q: Option<bson::DateTime>| q.unwrap().try_to_rfc3339_string().unwrap();
    assert_eq!(next(q.since), "2026-04-01T00:00:00.001Z");
    assert_eq!(next(q.until), "2026-04-01T00:00:00.002Z");
    // The page's links carry the filters as they take effect, and the page takes them again.
    let link = ActivityParams { query: q.clone() }.link(|_| {});
    assert_eq!(activity(&link[1..]).unwrap(), q);
    // A range within one millisecond holds no start time, and the links could not write it.
    assert!(
        error("since=2026-04-01T00:00:00.0001Z&until=2026-04-01T00:00:00.0009Z")
            .contains("within one millisecond"),
    );
    let q = activity("until=2026-04-01T00:00:00.123Z").unwrap();
    assert_eq!(next(q.until), "2026-04-01T00:00:00.123Z");
    assert!(
        error("since=2026-04-01T00:00:00.0009Z&until=2026-04-01T00:00:00.0001Z")
            .contains("earlier than until")
    );
}

#[test]
fn unknown_repeated_and_malformed_parameters_are_named() {
    assert!(error("bulder=x").contains("unknown parameter \"bulder\""));
    assert!(error("builder=a&builder=b").contains("\"builder\" is given twice"));
    assert!(error("limit=0").contains("limit must be a whole number from 1 to 500"));
    assert!(error("limit=501").contains("not \"501\""));
    assert!(error("limit=ten").contains("not \"ten\""));
    assert!(error("before=yesterday").contains("not a cursor"));
    assert!(error("before=-:m1/4").contains("needs a time"));
    assert!(
        error("builder=%FF").contains("`builder`: value \"%FF\" is not UTF-8 once percent-decoded")
    );
    assert!(error("bu%FFilder=x").contains("parameter name \"bu%FFilder\" is not UTF-8"));
}

#[test]
fn a_cursor_reads_back_what_the_page_wrote() {
    let cursor = BuildCursor {
        time_start: bson::DateTime::from_millis(1_763_900_000_123),
        id: "m:1/42".into(),
    };
    let text = cursor_text(Some(cursor.time_start), &cursor.id);
    let q = activity(&format!("before={}", encode(&text))).unwrap();
    assert_eq!(q.before, Some(cursor));
}

#[test]
fn links_keep_the_other_filters_and_read_back_the_same() {
    let p = ActivityParams::parse(Some(
        "builder=linux%20%26%20mac&result=warnings&since=2026-11-01&limit=20",
    ))
    .unwrap();
    let wider = p.link(|q| q.builder = None);
    assert_eq!(
        wider,
        "?result=warnings&since=2026-11-01T00:00:00Z&limit=20"
    );
    let same = ActivityParams::parse(Some(&p.link(|_| {})[1..])).unwrap();
    assert_eq!(same, p);
    assert_eq!(ActivityParams::parse(None).unwrap().link(|_| {}), "?");
}

#[test]
fn changesets_and_builders_pages_take_their_own_parameters() {
    let q = commit_params(Some("limit=3&before=-:abc")).unwrap();
    assert_eq!(q.limit, 3);
    assert_eq!(
        q.before,
        Some(CommitCursor {
            commiter_date: None,
            id: "abc".into()
        })
    );
    assert!(commit_params(Some("builder=x")).is_err());
    let b = builder_params(Some("after=m1/linux")).unwrap();
    assert_eq!(b.after.as_deref(), Some("m1/linux"));
    assert!(no_params(Some("x=1")).unwrap_err().0.contains("\"x\""));
    assert!(no_params(None).is_ok());
}

#[test]
fn log_windows_are_bounded() {
    assert_eq!(
        log_params(None).unwrap(),
        LogWindow {
            offset: 0,
            limit: MAX_LOG_WINDOW
        }
    );
    assert_eq!(log_params(Some("offset=10&limit=5")).unwrap().offset, 10);
    assert!(log_params(Some("limit=0")).is_err());
    assert!(log_params(Some("offset=-1")).is_err());
}

#[test]
fn paths_escape_everything_but_the_slashes_of_ids() {
    assert_eq!(path("/builds/", "m 1/42"), "/builds/m%201/42");
    assert_eq!(
        path("/builds/", "\"><img src=x>"),
        "/builds/%22%3E%3Cimg%20src%3Dx%3E"
    );
}
