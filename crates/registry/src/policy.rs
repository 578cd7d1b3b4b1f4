//! Operator policies the registry enforces: garbage-collection settings,
//! immutable tags, quotas and retention. Built from configuration once;
//! patterns are compiled here so a bad one is refused at start-up.

pub use regex::Regex;
use std::time::Duration;

/// How garbage collection behaves.
#[derive(Debug, Clone)]
pub struct GcSettings {
    /// Blob links written, mounted or confirmed more recently than this are
    /// never collected.
    pub grace: Duration,
    /// Collect manifests no tag reaches once they are this old (`None`: never).
    pub untagged_after: Option<Duration>,
    /// Deleting a manifest also deletes the manifests whose subject it is.
    pub delete_referrers_with_subject: bool,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings { grace: Duration::from_secs(3600), untagged_after: None, delete_referrers_with_subject: true }
    }
}

/// Tags that, once pushed, cannot be moved or deleted.
#[derive(Debug, Clone)]
pub struct ImmutableRule {
    pub repositories: Vec<String>,
    pub tags: Vec<Regex>,
}

/// A byte limit on the blobs linked in the repositories a pattern matches.
#[derive(Debug, Clone)]
pub struct Quota {
    pub repositories: String,
    pub max_bytes: u64,
}

/// Which tags of matching repositories garbage collection removes.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    pub repositories: Vec<String>,
    /// Keep the newest N tags (by push time).
    pub keep_last: Option<usize>,
    /// Keep tags matching any of these.
    pub keep_tags: Vec<Regex>,
    /// Only tags older than this may go.
    pub older_than: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
pub struct Policies {
    pub gc: GcSettings,
    pub immutable_tags: Vec<ImmutableRule>,
    pub quotas: Vec<Quota>,
    pub retention: Vec<RetentionPolicy>,
}

/// Compiles a tag pattern; it must match the whole tag.
pub fn tag_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("invalid tag pattern {pattern:?}: {e}"))
}

impl Policies {
    pub fn is_immutable(&self, repo: &str, tag: &str) -> bool {
        self.immutable_tags.iter().any(|r| {
            r.repositories.iter().any(|p| glob_matches(p, repo)) && r.tags.iter().any(|t| t.is_match(tag))
        })
    }

    /// Quotas that apply to `repo`.
    pub fn quotas_for<'a>(&'a self, repo: &'a str) -> impl Iterator<Item = &'a Quota> + 'a {
        self.quotas.iter().filter(move |q| glob_matches(&q.repositories, repo))
    }

    /// Retention policies that apply to `repo`, first match first.
    pub fn retention_for<'a>(&'a self, repo: &'a str) -> impl Iterator<Item = &'a RetentionPolicy> + 'a {
        self.retention.iter().filter(move |p| p.repositories.iter().any(|g| glob_matches(g, repo)))
    }
}

impl RetentionPolicy {
    /// Tags to delete from `tags` (name, push time), evaluated at `now`.
    pub fn expired<'a>(&self, tags: &'a [(String, i64)], now: i64) -> Vec<&'a str> {
        let mut by_age: Vec<&(String, i64)> = tags.iter().collect();
        // Newest first; ties by name so the outcome is deterministic.
        by_age.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut out = Vec::new();
        for (i, (name, at)) in by_age.into_iter().enumerate() {
            if self.keep_last.is_some_and(|n| i < n) {
                continue;
            }
            if self.keep_tags.iter().any(|r| r.is_match(name)) {
                continue;
            }
            if let Some(age) = self.older_than {
                if now - *at < age.as_secs() as i64 {
                    continue;
                }
            }
            if self.keep_last.is_none() && self.older_than.is_none() {
                continue;
            }
            out.push(name.as_str());
        }
        out.sort();
        out
    }
}

/// Repository glob: `*` matches within one path component, `**` across
/// components (`a/**` also matches `a`).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p {
            [] => s.is_empty(),
            [b'/', b'*', b'*', rest @ ..] if s.is_empty() => go(rest, s),
            [b'*', b'*', b'/', rest @ ..] => {
                go(rest, s) || (0..s.len()).any(|i| s[i] == b'/' && go(rest, &s[i + 1..]))
            }
            [b'*', b'*', rest @ ..] => rest.is_empty() || (0..=s.len()).any(|i| go(rest, &s[i..])),
            [b'*', rest @ ..] => {
                for i in 0..=s.len() {
                    if go(rest, &s[i..]) {
                        return true;
                    }
                    if i < s.len() && s[i] == b'/' {
                        return false;
                    }
                }
                false
            }
            [c, rest @ ..] => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("**", "a/b/c"));
        assert!(glob_matches("team/**", "team/x/y"));
        assert!(glob_matches("team/**", "team"));
        assert!(!glob_matches("team/**", "teams/x"));
        assert!(glob_matches("team/*", "team/x"));
        assert!(!glob_matches("team/*", "team/x/y"));
        assert!(glob_matches("a/**/z", "a/b/c/z"));
        assert!(glob_matches("a/**/z", "a/z"));
        assert!(!glob_matches("a/**/z", "a/bz"));
        assert!(glob_matches("app", "app"));
        assert!(!glob_matches("app", "app2"));
    }

    #[test]
    fn retention_keeps_newest_and_matching() {
        let tags: Vec<(String, i64)> =
            [("v1", 100), ("v2", 200), ("v3", 300), ("release-1", 50), ("latest", 400)]
                .iter()
                .map(|(n, t)| (n.to_string(), *t))
                .collect();
        let p = RetentionPolicy {
            repositories: vec!["**".into()],
            keep_last: Some(2),
            keep_tags: vec![tag_regex("release-.*").unwrap()],
            older_than: None,
        };
        assert_eq!(p.expired(&tags, 1000), vec!["v1", "v2"]);
        let p = RetentionPolicy { keep_last: None, older_than: Some(Duration::from_secs(750)), ..p };
        assert_eq!(p.expired(&tags, 1000), vec!["v1", "v2"]);
        let p = RetentionPolicy { keep_last: Some(1), ..p };
        assert_eq!(p.expired(&tags, 1000), vec!["v1", "v2"]);
        let none = RetentionPolicy { keep_last: None, older_than: None, ..p };
        assert!(none.expired(&tags, 1000).is_empty());
    }

    #[test]
    fn immutability_and_quotas_match_patterns() {
        let p = Policies {
            immutable_tags: vec![ImmutableRule { repositories: vec!["prod/**".into()], tags: vec![tag_regex(r"v\d+").unwrap()] }],
            quotas: vec![Quota { repositories: "team/**".into(), max_bytes: 10 }],
            ..Default::default()
        };
        assert!(p.is_immutable("prod/app", "v1"));
        assert!(!p.is_immutable("prod/app", "v1-rc"));
        assert!(!p.is_immutable("dev/app", "v1"));
        assert_eq!(p.quotas_for("team/a").count(), 1);
        assert_eq!(p.quotas_for("other").count(), 0);
    }
}
