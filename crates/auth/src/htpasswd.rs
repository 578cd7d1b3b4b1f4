//! htpasswd files with bcrypt hashes (what `htpasswd -B` writes), re-read
//! when they change so password changes and removals need no restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Cost used for new hashes: about 50 ms per check on a current core.
pub const BCRYPT_COST: u32 = 10;

/// Longest user name accepted.
pub const MAX_USER_NAME: usize = 64;

/// How often, at most, the file is checked for changes.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Whether `name` is an acceptable user name: 1 to 64 ASCII letters,
/// digits, `.`, `_`, `-` or `@`. Nothing else, so a name can never act as
/// a glob in a policy (`*`, `/`), break the file format (`:`) or a log line.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let ok = (1..=MAX_USER_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid user name {name:?}: use 1 to {MAX_USER_NAME} ASCII letters, digits, '.', '_', '-' or '@'"
        ))
    }
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        let m = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(Stamp { modified: m.modified().ok(), len: m.len(), inode })
    }
}

struct Loaded {
    users: Arc<BTreeMap<String, String>>,
    stamp: Option<Stamp>,
}

/// The users of an htpasswd file, reloaded by [`Htpasswd::reload_if_changed`].
pub struct Htpasswd {
    path: Option<PathBuf>,
    loaded: RwLock<Loaded>,
    last_check: Mutex<Instant>,
    /// Compared against when the user is unknown, so timing does not reveal
    /// which user names exist.
    dummy: String,
}

impl Default for Htpasswd {
    /// No file and no users.
    fn default() -> Self {
        Htpasswd {
            path: None,
            loaded: RwLock::new(Loaded { users: Arc::default(), stamp: None }),
            last_check: Mutex::new(Instant::now()),
            dummy: String::new(),
        }
    }
}

/// Parses htpasswd text; refuses any hash that is not bcrypt and any user
/// name outside [`check_user_name`], naming the line.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut users = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let (user, hash) = line.split_once(':').ok_or_else(|| format!("line {n}: expected `user:hash`"))?;
        check_user_name(user).map_err(|e| format!("line {n}: {e}"))?;
        if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) || hash.len() != 60 {
            return Err(format!(
                "line {n}: user {user:?} does not have a bcrypt hash; only bcrypt is accepted \
                 (create entries with `berth user add` or `htpasswd -B`)"
            ));
        }
        if users.insert(user.to_string(), hash.to_string()).is_some() {
            return Err(format!("line {n}: user {user:?} appears twice"));
        }
    }
    Ok(users)
}

fn read(path: &Path) -> Result<(BTreeMap<String, String>, Stamp), String> {
    let at = |e: String| format!("{}: {e}", path.display());
    // The stamp is taken first: a change racing the read is seen next time.
    let stamp = Stamp::of(path).map_err(|e| at(e.to_string()))?;
    let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
    Ok((parse(&text).map_err(at)?, stamp))
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let (users, stamp) = read(path)?;
        let dummy = bcrypt::hash("not a password", BCRYPT_COST).map_err(|e| e.to_string())?;
        Ok(Htpasswd {
            path: Some(path.to_path_buf()),
            loaded: RwLock::new(Loaded { users: Arc::new(users), stamp: Some(stamp) }),
            last_check: Mutex::new(Instant::now()),
            dummy,
        })
    }

    fn users(&self) -> Arc<BTreeMap<String, String>> {
        self.loaded.read().unwrap().users.clone()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users().contains_key(user)
    }

    /// The user's current bcrypt hash.
    pub fn hash(&self, user: &str) -> Option<String> {
        self.users().get(user).cloned()
    }

    /// Re-reads the file if it changed since it was last read, checking at
    /// most every `min_interval`. Returns whether the users were replaced.
    /// A file that cannot be read or parsed keeps the previous users (and
    /// is logged); it is tried again once it changes again.
    pub fn reload_if_changed(&self, min_interval: Duration) -> bool {
        let Some(path) = &self.path else { return false };
        {
            let mut last = self.last_check.lock().unwrap();
            if last.elapsed() < min_interval {
                return false;
            }
            *last = Instant::now();
        }
        let stamp = Stamp::of(path).ok();
        if stamp.is_some() && stamp == self.loaded.read().unwrap().stamp {
            return false;
        }
        match read(path) {
            Ok((users, stamp)) => {
                tracing::info!(target: "berth::audit", file = %path.display(), users = users.len(), "htpasswd reloaded");
                *self.loaded.write().unwrap() = Loaded { users: Arc::new(users), stamp: Some(stamp) };
                true
            }
            Err(e) => {
                let mut loaded = self.loaded.write().unwrap();
                if loaded.stamp != stamp {
                    tracing::error!(users = loaded.users.len(), "htpasswd not reloaded, keeping the previous users: {e}");
                }
                // Remember this version so it is not re-read (and re-logged) on every use.
                loaded.stamp = stamp;
                false
            }
        }
    }

    /// Checks a password on a blocking thread (bcrypt is slow by design).
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        self.verify_holding(user, password, ()).await
    }

    /// As [`Htpasswd::verify`], holding `slot` (a concurrency permit) until
    /// the bcrypt job itself ends, even if the caller stops waiting.
    pub async fn verify_holding<S: Send + 'static>(&self, user: &str, password: &str, slot: S) -> bool {
        let known = self.hash(user);
        let hash = known.clone().unwrap_or_else(|| self.dummy.clone());
        if hash.is_empty() {
            return false;
        }
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            bcrypt::verify(password, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        ok && known.is_some()
    }
}

/// Adds, replaces or removes a user in an htpasswd file, atomically.
pub fn update_file(path: &Path, user: &str, password: Option<&str>, must_exist: Option<bool>) -> Result<(), String> {
    check_user_name(user)?;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut users = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    match (must_exist, users.contains_key(user)) {
        (Some(true), false) => return Err(format!("no user {user:?} in {}", path.display())),
        (Some(false), true) => return Err(format!("user {user:?} already exists in {}", path.display())),
        _ => {}
    }
    match password {
        Some(p) => {
            if p.is_empty() {
                return Err("empty password".into());
            }
            let hash = bcrypt::hash(p, BCRYPT_COST).map_err(|e| e.to_string())?;
            users.insert(user.to_string(), hash);
        }
        None => {
            users.remove(user);
        }
    }
    let mut out = String::new();
    for (u, h) in &users {
        out.push_str(&format!("{u}:{h}\n"));
    }
    let tmp = path.with_extension("tmp");
    write_private(&tmp, out.as_bytes()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_bcrypt_naming_the_line() {
        let err = parse("# users\nalice:$apr1$abc$def\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("alice"), "{err}");
        assert!(parse("bob:{SHA}abc").is_err());
        assert!(parse("nocolon").unwrap_err().contains("line 1"));
    }

    #[tokio::test]
    async fn add_verify_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        update_file(&path, "alice", Some("s3cret"), Some(false)).unwrap();
        assert!(update_file(&path, "alice", Some("x"), Some(false)).is_err());
        let h = Htpasswd::load(&path).unwrap();
        assert!(h.verify("alice", "s3cret").await);
        assert!(!h.verify("alice", "wrong").await);
        assert!(!h.verify("mallory", "s3cret").await);
        update_file(&path, "alice", None, Some(true)).unwrap();
        assert!(!Htpasswd::load(&path).unwrap().contains("alice"));
    }

    #[test]
    fn user_names_follow_a_safe_grammar() {
        for ok in ["alice", "ci-bot_2", "a.b@example.com", "A", &"x".repeat(64)] {
            assert!(check_user_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "*", "**", "bob/x", "a:b", "a b", "{user}", "é", "a\n", &"x".repeat(65)] {
            assert!(check_user_name(bad).unwrap_err().contains("invalid user name"), "{bad:?}");
        }
        let hash = format!("$2y$04${}", "a".repeat(53));
        let err = parse(&format!("alice:{hash}\n**:{hash}\n")).unwrap_err();
        assert!(err.contains("line 2") && err.contains("\"**\""), "{err}");
        assert!(parse(&format!("bob/x:{hash}")).unwrap_err().contains("line 1"));
        let dir = tempfile::tempdir().unwrap();
        let err = update_file(&dir.path().join("h"), "*", Some("pw"), Some(false)).unwrap_err();
        assert!(err.contains("invalid user name"), "{err}");
        assert!(!dir.path().join("h").exists());
    }

    #[tokio::test]
    async fn reloads_when_the_file_changes_and_keeps_users_when_it_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        update_file(&path, "alice", Some("old"), Some(false)).unwrap();
        update_file(&path, "bob", Some("pw"), Some(false)).unwrap();
        let h = Htpasswd::load(&path).unwrap();
        assert!(!h.reload_if_changed(Duration::ZERO), "unchanged");
        update_file(&path, "alice", Some("new"), Some(true)).unwrap();
        assert!(!h.reload_if_changed(Duration::from_secs(3600)), "checked at most every interval");
        assert!(h.verify("alice", "old").await);
        assert!(h.reload_if_changed(Duration::ZERO));
        assert!(!h.verify("alice", "old").await);
        assert!(h.verify("alice", "new").await);
        update_file(&path, "bob", None, Some(true)).unwrap();
        assert!(h.reload_if_changed(Duration::ZERO));
        assert!(!h.contains("bob"));
        // A broken file keeps the previous users.
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(!h.reload_if_changed(Duration::ZERO));
        assert!(h.verify("alice", "new").await);
        std::fs::remove_file(&path).unwrap();
        assert!(!h.reload_if_changed(Duration::ZERO));
        assert!(h.contains("alice"));
        update_file(&path, "carol", Some("pw"), Some(false)).unwrap();
        assert!(h.reload_if_changed(Duration::ZERO));
        assert!(h.contains("carol") && !h.contains("alice"));
    }

    #[tokio::test]
    async fn reads_htpasswd_b_format() {
        // `$2y$` is what `htpasswd -B` writes.
        let hash = bcrypt::hash("pw", 4).unwrap().replacen("$2b$", "$2y$", 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h");
        std::fs::write(&path, format!("carol:{hash}\n")).unwrap();
        assert!(Htpasswd::load(&path).unwrap().verify("carol", "pw").await);
    }
}
