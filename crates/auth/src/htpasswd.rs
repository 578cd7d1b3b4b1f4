//! htpasswd files with bcrypt hashes (what `htpasswd -B` writes).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Cost used for new hashes: about 50 ms per check on a current core.
pub const BCRYPT_COST: u32 = 10;

#[derive(Default, Clone)]
pub struct Htpasswd {
    users: Arc<BTreeMap<String, String>>,
    /// Compared against when the user is unknown, so timing does not reveal
    /// which user names exist.
    dummy: Arc<String>,
}

/// Parses htpasswd text; refuses any hash that is not bcrypt, naming the line.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut users = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let (user, hash) = line.split_once(':').ok_or_else(|| format!("line {n}: expected `user:hash`"))?;
        if user.is_empty() {
            return Err(format!("line {n}: empty user name"));
        }
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

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let users = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let dummy = bcrypt::hash("not a password", BCRYPT_COST).map_err(|e| e.to_string())?;
        Ok(Htpasswd { users: Arc::new(users), dummy: Arc::new(dummy) })
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Checks a password on a blocking thread (bcrypt is slow by design).
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let known = self.users.get(user).cloned();
        let hash = known.clone().unwrap_or_else(|| self.dummy.to_string());
        if hash.is_empty() {
            return false;
        }
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        ok && known.is_some()
    }
}

/// Adds, replaces or removes a user in an htpasswd file, atomically.
pub fn update_file(path: &Path, user: &str, password: Option<&str>, must_exist: Option<bool>) -> Result<(), String> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_whitespace) {
        return Err(format!("invalid user name {user:?}: no ':' or spaces"));
    }
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
