//! Which changesets are "proper" (a full commit hash), and how a `got_revision` property names one.
//!
//! A build may start at FETCH_HEAD, HEAD, a branch or nothing; only a proper hash is final and only
//! a proper hash links a build into `repository`.

use std::borrow::Cow;
use std::sync::Arc;

use regex::Regex;
use regex_syntax::hir::{Hir, Look};
use serde_json::Value;

/// The longest changeset that can be proper, in bytes.
pub const MAX_HASH_BYTES: usize = 1024;

/// Why a proper-changeset pattern is refused.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("is not a valid regular expression: {0}")]
    Invalid(#[from] regex::Error),
    #[error("takes nothing but the empty string, so no changeset would ever be a commit hash")]
    Empty,
    #[error(
        "takes {0} for a commit hash, so builds started at it would be linked into repository: \
         match only what a commit id looks like (for example r?[0-9]+)"
    )]
    TakesSymbolic(&'static str),
}

/// Decides which changesets are proper commit hashes. Cheap to clone: clones share one compiled
/// pattern and its match caches (a cloned `Regex` would build new caches on its first use).
#[derive(Debug, Clone)]
pub struct ChangesetPolicy {
    proper: Arc<Regex>,
}

impl ChangesetPolicy {
    /// Full git hashes: 40 (SHA-1) or 64 (SHA-256) hex digits.
    pub const DEFAULT_PATTERN: &'static str = "^(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{64})$";

    /// A policy whose proper changesets match `pattern` whole, from their first character to
    /// their last, as if it were written between `^` and `$`: a hash found inside a longer text
    /// (`FETCH_HEAD eb57…`) is no hash. A pattern that takes nothing but the empty string is
    /// refused, and so is one that takes a symbolic revision for a hash (see
    /// [`ChangesetPolicy::takes_symbolic`]).
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        // Anchored on its parsed form rather than by adding `\A(?:` and `)\z` to its text: a
        // stray `)` could make another valid pattern of that, and in verbose mode (`(?x)`) a
        // comment at its end would swallow the `)\z`.
        let parsed = regex_syntax::parse(pattern)
            .map_err(|e| PatternError::Invalid(regex::Error::Syntax(e.to_string())))?;
        // Empty, `()`, `^$` or only a comment: it takes nothing but the empty string, never proper.
        if parsed.properties().maximum_len() == Some(0) {
            return Err(PatternError::Empty);
        }
        let whole = Hir::concat(vec![Hir::look(Look::Start), parsed, Hir::look(Look::End)]);
        let policy = ChangesetPolicy {
            proper: Arc::new(Regex::new(&whole.to_string())?),
        };
        match policy.takes_symbolic() {
            Some(name) => Err(PatternError::TakesSymbolic(name)),
            None => Ok(policy),
        }
    }

    /// Whether `changeset` is a full commit hash. One longer than [`MAX_HASH_BYTES`] never is,
    /// whatever the pattern: it is the `_id` of a commit document, which must leave room for the
    /// builds listed in it.
    pub fn is_proper(&self, changeset: &str) -> bool {
        !changeset.is_empty()
            && changeset.len() <= MAX_HASH_BYTES
            && self.proper.is_match(changeset)
    }

    /// The first symbolic revision the pattern takes for a commit hash, if any: a pattern that
    /// takes one (such as `[A-Z_]+` or `.+`) would link every build started at it into
    /// `repository`, the very thing the proper-changeset rule keeps out.
    fn takes_symbolic(&self) -> Option<&'static str> {
        ["FETCH_HEAD", "HEAD", "ORIG_HEAD"]
            .into_iter()
            .find(|name| self.is_proper(name))
    }

    /// The form a changeset is stored in. A proper one written in hex digits is stored in lower
    /// case, as git writes hashes, so that `0A1B…` and `0a1b…` name one commit (its document in
    /// `repository`, and the builds found by it). Anything else is kept as sent, as is a hash the
    /// pattern would no longer take in lower case.
    pub fn canonical<'a>(&self, changeset: &'a str) -> Cow<'a, str> {
        if changeset.bytes().any(|b| b.is_ascii_uppercase())
            && changeset.bytes().all(|b| b.is_ascii_hexdigit())
            && self.is_proper(changeset)
        {
            let lower = changeset.to_ascii_lowercase();
            if self.is_proper(&lower) {
                return Cow::Owned(lower);
            }
        }
        Cow::Borrowed(changeset)
    }
}

impl Default for ChangesetPolicy {
    fn default() -> Self {
        ChangesetPolicy {
            proper: Arc::new(
                Regex::new(Self::DEFAULT_PATTERN).expect("the default pattern is valid"),
            ),
        }
    }
}

/// The revision a `got_revision` value names for a build of `codebase`.
///
/// Buildbot sets it to a string for single-codebase builds and to `{codebase: revision}` for
/// multi-codebase ones. From a map we take the build's own codebase. A build that names none
/// takes the only entry, else the default ("") codebase. Anything else names nothing: Buildbot
/// fills the map a checkout at a time, and a build of `app` must not take `lib`'s revision, which
/// would be final, before its own arrives.
pub fn got_revision(value: &Value, codebase: Option<&str>) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => {
            let pick = match codebase {
                Some(cb) => map.get(cb),
                None => (map.len() == 1)
                    .then(|| map.values().next())
                    .flatten()
                    .or_else(|| map.get("")),
            };
            pick.and_then(Value::as_str).map(str::to_owned)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHA1: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn a_proper_hash_in_upper_case_is_stored_in_lower_case_and_nothing_else_changes() {
        let p = ChangesetPolicy::default();
        assert_eq!(p.canonical(&SHA1.to_uppercase()), SHA1);
        assert_eq!(p.canonical(SHA1), SHA1);
        for kept in ["FETCH_HEAD", "HEAD", "ABCDEF", "main"] {
            assert_eq!(p.canonical(kept), kept, "not proper: kept as sent");
        }
        // A pattern that takes upper case only keeps it.
        let upper = ChangesetPolicy::new("^[0-9A-F]{40}$").unwrap();
        let hash = SHA1.to_uppercase();
        assert_eq!(upper.canonical(&hash), hash);
        // Not hex digits: a pattern's own spelling is kept.
        let svn = ChangesetPolicy::new("^[rR][0-9]+$").unwrap();
        assert_eq!(svn.canonical("R1234"), "R1234");
    }

    #[test]
    fn only_full_hashes_are_proper_by_default() {
        let p = ChangesetPolicy::default();
        assert!(p.is_proper(SHA1));
        assert!(p.is_proper(&"a".repeat(64)));
        for symbolic in [
            "FETCH_HEAD",
            "HEAD",
            "main",
            "",
            "0123456",
            &SHA1[..39],
            &format!("{SHA1}0"),
        ] {
            assert!(!p.is_proper(symbolic), "{symbolic:?} must not be proper");
        }
    }

    #[test]
    fn the_pattern_is_configurable() {
        let svn = ChangesetPolicy::new("^r?[0-9]+$").unwrap();
        assert!(svn.is_proper("r1234"));
        assert!(!svn.is_proper(SHA1));
        assert!(ChangesetPolicy::new("(").is_err());
    }

    #[test]
    fn a_pattern_that_takes_a_symbolic_revision_for_a_hash_is_refused() {
        let refused = |pattern: &str| match ChangesetPolicy::new(pattern) {
            Err(PatternError::TakesSymbolic(name)) => Some(name),
            _ => None,
        };
        assert_eq!(ChangesetPolicy::default().takes_symbolic(), None);
        assert_eq!(refused("^r?[0-9]+$"), None);
        assert_eq!(refused("[A-Z_]+"), Some("FETCH_HEAD"));
        assert_eq!(refused(".+"), Some("FETCH_HEAD"));
        assert_eq!(refused("^[A-Z]+$"), Some("HEAD"));
        for nothing in ["", "()", "^$", "(?x) # nothing"] {
            let refused = ChangesetPolicy::new(nothing);
            assert!(matches!(refused, Err(PatternError::Empty)), "{nothing:?}");
        }
    }

    /// A pattern matches a changeset whole, written with `^` and `$` or not: a hash inside a
    /// longer text is no hash, nor is a hex word inside `FETCH_HEAD`.
    #[test]
    fn a_pattern_matches_the_whole_changeset() {
        for pattern in ["[0-9a-fA-F]{40}", "(?m)^[0-9a-f]{40}$", "^[0-9a-f]{40}"] {
            let policy = ChangesetPolicy::new(pattern).unwrap();
            assert!(policy.is_proper(SHA1), "{pattern}");
            for taken_before in [
                format!("FETCH_HEAD {SHA1}"),
                format!("FETCH_HEAD\n{SHA1}"),
                format!("{SHA1}\n"),
                format!("{SHA1}0"),
            ] {
                assert!(
                    !policy.is_proper(&taken_before),
                    "{pattern}: {taken_before:?}"
                );
            }
        }
        // A comment of verbose mode runs to the end of the pattern.
        let verbose = ChangesetPolicy::new("(?x) [0-9a-f]{40}  # a SHA-1").unwrap();
        assert!(verbose.is_proper(SHA1) && !verbose.is_proper(&format!("x{SHA1}")));
        let hex = ChangesetPolicy::new("[0-9a-fA-F]+").unwrap();
        assert!(!hex.is_proper("FETCH_HEAD") && hex.is_proper("abc123"));
        // A stray parenthesis is no valid pattern, wrapped or not.
        assert!(ChangesetPolicy::new("a)|(b").is_err());
        // Alternatives are matched whole, each of them.
        let either = ChangesetPolicy::new("r[0-9]+|[0-9a-f]{40}").unwrap();
        assert!(either.is_proper("r12") && !either.is_proper("r12 and more"));
    }

    #[test]
    fn got_revision_maps_pick_the_builds_codebase_or_without_one_the_only_then_the_default() {
        assert_eq!(got_revision(&json!("abc"), None).as_deref(), Some("abc"));
        let multi = json!({"app": "aaa", "lib": "bbb"});
        assert_eq!(got_revision(&multi, Some("lib")).as_deref(), Some("bbb"));
        assert_eq!(got_revision(&multi, None), None);
        assert_eq!(
            got_revision(&json!({"app": "aaa"}), None).as_deref(),
            Some("aaa")
        );
        // Another codebase's revision is not the build's, not even the only one there is yet.
        assert_eq!(got_revision(&json!({"app": "aaa"}), Some("lib")), None);
        assert_eq!(got_revision(&json!({"": "ddd"}), Some("lib")), None);
        assert_eq!(
            got_revision(&json!({"": "ddd", "x": "eee"}), None).as_deref(),
            Some("ddd")
        );
        assert_eq!(got_revision(&json!(42), None), None);
    }
}
