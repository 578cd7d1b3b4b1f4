//! Access rules: which callers may do which actions on which repositories.
//! Deny unless a rule allows.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
    Delete,
    /// Every action, everywhere the rule's patterns match.
    #[serde(alias = "*")]
    Admin,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            "admin" | "*" => Some(Action::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Admin => "*",
        }
    }
}

/// One rule. `repositories` are globs: `*` matches within one path
/// component, `**` across components, and `{user}` is the caller's name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub repositories: Vec<String>,
    pub actions: Vec<Action>,
    /// User names; `"*"` means any authenticated user.
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Applies to unauthenticated callers.
    #[serde(default)]
    pub anonymous: bool,
}

pub struct Policy {
    rules: Vec<Rule>,
    /// user → groups
    membership: BTreeMap<String, BTreeSet<String>>,
}

impl Policy {
    pub fn new(rules: &[Rule], groups: &BTreeMap<String, Vec<String>>) -> Result<Policy, String> {
        for (i, r) in rules.iter().enumerate() {
            if r.repositories.is_empty() || r.actions.is_empty() {
                return Err(format!("rule {}: needs repositories and actions", i + 1));
            }
            if r.users.is_empty() && r.groups.is_empty() && !r.anonymous {
                return Err(format!("rule {}: names no users, groups or anonymous, so it applies to nobody", i + 1));
            }
            for g in &r.groups {
                if !groups.contains_key(g) {
                    return Err(format!("rule {}: unknown group {g:?} (define it under [auth.groups])", i + 1));
                }
            }
        }
        let mut membership: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (group, members) in groups {
            for m in members {
                membership.entry(m.clone()).or_default().insert(group.clone());
            }
        }
        Ok(Policy { rules: rules.to_vec(), membership })
    }

    pub fn anonymous_rules(&self) -> bool {
        self.rules.iter().any(|r| r.anonymous)
    }

    /// Whether `user` (None: anonymous) may do `action` on `repo`. An
    /// authenticated user may do at least what anonymous callers may.
    pub fn allows(&self, user: Option<&str>, repo: &str, action: Action) -> bool {
        self.rules.iter().any(|r| {
            let permits = r.actions.iter().any(|a| *a == action || *a == Action::Admin);
            let matches = |user: Option<&str>| r.repositories.iter().any(|p| pattern_matches(p, repo, user));
            permits && ((r.anonymous && matches(None)) || user.is_some_and(|u| self.applies(r, u) && matches(Some(u))))
        })
    }

    /// Whether rule `r` names user `u`, directly, by `"*"` or by a group.
    fn applies(&self, r: &Rule, u: &str) -> bool {
        r.users.iter().any(|x| x == "*" || x == u)
            || r.groups.iter().any(|g| self.membership.get(u).is_some_and(|gs| gs.contains(g)))
    }
}

/// Glob match of a repository name; `{user}` stands for the caller's name,
/// matched literally (a pattern using it never matches anonymous callers).
/// The name `**` (never a valid repository) stands for "every repository",
/// as registry-wide actions (the admin endpoints) ask: only the pattern
/// `**` itself covers it, not a pattern that merely matches the text.
pub fn pattern_matches(pattern: &str, name: &str, user: Option<&str>) -> bool {
    if name == "**" {
        return pattern == "**";
    }
    if pattern.contains(USER) && user.is_none() {
        return false;
    }
    glob(pattern.as_bytes(), name.as_bytes(), user.unwrap_or_default().as_bytes())
}

const USER: &str = "{user}";

fn glob(p: &[u8], s: &[u8], user: &[u8]) -> bool {
    if p.is_empty() {
        return s.is_empty();
    }
    // `{user}` matches exactly the caller's name, never as a pattern.
    if let Some(rest) = p.strip_prefix(USER.as_bytes()) {
        return s.starts_with(user) && glob(rest, &s[user.len()..], user);
    }
    // `x/**` matches `x` itself: the `/**` may match nothing at the end.
    if p.starts_with(b"/**") && s.is_empty() {
        return glob(&p[3..], s, user);
    }
    if p.starts_with(b"**") {
        let rest = &p[2..];
        // `a/**` also matches `a` itself.
        if rest.is_empty() {
            return true;
        }
        return (0..=s.len()).any(|i| glob(rest, &s[i..], user))
            || (rest.starts_with(b"/") && glob(&rest[1..], s, user));
    }
    if p[0] == b'*' {
        let rest = &p[1..];
        for i in 0..=s.len() {
            if glob(rest, &s[i..], user) {
                return true;
            }
            if i < s.len() && s[i] == b'/' {
                break;
            }
        }
        return false;
    }
    !s.is_empty() && p[0] == s[0] && glob(&p[1..], &s[1..], user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_everything_pattern_covers_every_repository() {
        assert!(pattern_matches("**", "**", None));
        for p in ["*", "*/**", "**/*", "*/*", "{user}/**"] {
            assert!(!pattern_matches(p, "**", Some("bob")), "{p}");
        }
    }

    #[test]
    fn globs() {
        assert!(pattern_matches("public/**", "public/a/b", None));
        assert!(pattern_matches("public/**", "public", None));
        assert!(!pattern_matches("public/**", "publicx", None));
        assert!(pattern_matches("team/*", "team/app", None));
        assert!(!pattern_matches("team/*", "team/app/sub", None));
        assert!(pattern_matches("**", "anything/at/all", None));
        assert!(pattern_matches("users/{user}/**", "users/alice/x", Some("alice")));
        assert!(!pattern_matches("users/{user}/**", "users/bob/x", Some("alice")));
        assert!(!pattern_matches("users/{user}/**", "users/bob/x", None));
        assert!(pattern_matches("a/**/c", "a/b/x/c", None));
        assert!(pattern_matches("a/**/c", "a/c", None));
    }

    #[test]
    fn user_names_are_literal_in_patterns() {
        // Names are validated at load time; the matcher must not rely on it.
        for (user, repo) in [("*", "users/bob/x"), ("**", "users/bob/x"), ("bob/*", "users/bob/x/y"), ("b*", "users/bob/x")] {
            assert!(!pattern_matches("users/{user}/**", repo, Some(user)), "{user:?} on {repo}");
            assert!(!pattern_matches("users/{user}", "users/bob", Some(user)), "{user:?}");
        }
        assert!(pattern_matches("users/{user}", "users/*", Some("*")));
        assert!(pattern_matches("users/{user}/**", "users/a.b/x", Some("a.b")));
        assert!(!pattern_matches("users/{user}/**", "users/axb/x", Some("a.b")));
        assert!(pattern_matches("{user}-*/{user}", "al-x/al", Some("al")));
        assert!(!pattern_matches("{user}-*/{user}", "al-x/bo", Some("al")));
    }

    #[test]
    fn users_get_at_least_what_anonymous_callers_get() {
        let rules: Vec<Rule> = serde_json::from_value(serde_json::json!([
            {"repositories": ["public/**"], "actions": ["pull"], "anonymous": true},
            {"repositories": ["team/**"], "actions": ["push"], "users": ["alice"]},
            {"repositories": ["anon/{user}"], "actions": ["pull"], "anonymous": true},
        ]))
        .unwrap();
        let p = Policy::new(&rules, &BTreeMap::new()).unwrap();
        assert!(p.allows(None, "public/x", Action::Pull));
        assert!(p.allows(Some("alice"), "public/x", Action::Pull));
        assert!(p.allows(Some("bob"), "public/x", Action::Pull));
        assert!(!p.allows(Some("bob"), "public/x", Action::Push));
        assert!(p.allows(Some("alice"), "team/x", Action::Push));
        // An anonymous rule is evaluated as for anonymous callers.
        assert!(!p.allows(Some("bob"), "anon/bob", Action::Pull));
    }

    #[test]
    fn rules_deny_by_default() {
        let rules: Vec<Rule> = serde_json::from_value(serde_json::json!([
            {"repositories": ["public/**"], "actions": ["pull"], "anonymous": true, "users": ["*"]},
            {"repositories": ["**"], "actions": ["pull"], "groups": ["ci"]},
            {"repositories": ["**"], "actions": ["*"], "users": ["admin"]},
        ]))
        .unwrap();
        let groups = BTreeMap::from([("ci".to_string(), vec!["bot".to_string()])]);
        let p = Policy::new(&rules, &groups).unwrap();
        assert!(p.allows(None, "public/x", Action::Pull));
        assert!(!p.allows(None, "public/x", Action::Push));
        assert!(!p.allows(None, "private", Action::Pull));
        assert!(p.allows(Some("bot"), "private", Action::Pull));
        assert!(!p.allows(Some("bot"), "private", Action::Push));
        assert!(p.allows(Some("admin"), "x", Action::Delete));
        assert!(!p.allows(Some("stranger"), "private", Action::Pull));
        assert!(Policy::new(&rules, &BTreeMap::new()).is_err());
    }
}
