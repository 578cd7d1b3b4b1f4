//! Configuration: defaults, then a TOML file, then `BERTH_<SECTION>_<KEY>`
//! environment variables, then command-line flags.

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub registry: RegistrySection,
    pub gc: GcSection,
    pub auth: berth_auth::AuthConfig,
    pub tls: crate::tls::TlsConfig,
    pub encryption: crate::encryption::EncryptionConfig,
    pub backup: crate::backup::BackupConfig,
    pub signatures: SignaturesSection,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub shutdown_timeout_secs: u64,
    pub header_read_timeout_secs: u64,
    pub body_idle_timeout_secs: u64,
    pub metrics: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    pub delete_enabled: bool,
    pub upload_ttl_secs: u64,
    pub max_manifest_bytes: usize,
    pub max_page_size: usize,
    pub immutable_tags: Vec<ImmutableTagsRule>,
    pub quotas: Vec<QuotaRule>,
    pub retention: Vec<RetentionRule>,
}

/// `[[registry.immutable_tags]]`: tags that cannot be moved or deleted once pushed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImmutableTagsRule {
    pub repositories: Vec<String>,
    /// Regular expressions matching the whole tag.
    pub tags: Vec<String>,
}

/// `[[registry.quotas]]`: a byte limit for the repositories a glob matches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaRule {
    pub repositories: String,
    pub max_bytes: u64,
}

/// `[[registry.retention]]`: which tags garbage collection removes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    pub repositories: Vec<String>,
    pub keep_last: Option<usize>,
    #[serde(default)]
    pub keep_tags: Vec<String>,
    pub delete_older_than_days: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GcSection {
    pub interval_secs: u64,
    pub grace_secs: u64,
    pub untagged_after_secs: u64,
    pub dry_run: bool,
    pub delete_referrers_with_subject: bool,
}

impl Default for GcSection {
    fn default() -> Self {
        GcSection {
            interval_secs: 3600,
            grace_secs: 3600,
            untagged_after_secs: 0,
            dry_run: false,
            delete_referrers_with_subject: true,
        }
    }
}

/// `[signatures]`: trusted keys and certificate stores, and per-repository
/// verification policies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SignaturesSection {
    /// name = PEM public key file (ECDSA P-256/P-384, Ed25519, RSA).
    pub keys: std::collections::BTreeMap<String, PathBuf>,
    /// name = PEM CA bundle (Notary Project signatures).
    pub trust_stores: std::collections::BTreeMap<String, PathBuf>,
    pub cache_entries: usize,
    pub policies: Vec<SignaturePolicyRule>,
}

impl Default for SignaturesSection {
    fn default() -> Self {
        SignaturesSection {
            keys: Default::default(),
            trust_stores: Default::default(),
            cache_entries: 10_000,
            policies: Vec::new(),
        }
    }
}

/// `[[signatures.policies]]`: how matching repositories treat unsigned content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignaturePolicyRule {
    pub repositories: Vec<String>,
    /// enforce, warn or off.
    pub verify: String,
    /// Names from signatures.keys (empty: every key).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Names from signatures.trust_stores (empty: every store).
    #[serde(default)]
    pub trust_stores: Vec<String>,
    #[serde(default)]
    pub require_signed_tags: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            registry: RegistrySection::default(),
            gc: GcSection::default(),
            auth: berth_auth::AuthConfig::default(),
            tls: crate::tls::TlsConfig::default(),
            encryption: crate::encryption::EncryptionConfig::default(),
            backup: crate::backup::BackupConfig::default(),
            signatures: SignaturesSection::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:5000".into(),
            shutdown_timeout_secs: 30,
            header_read_timeout_secs: 30,
            body_idle_timeout_secs: 60,
            metrics: true,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { data_dir: PathBuf::from("./berth-data") }
    }
}

impl Default for RegistrySection {
    fn default() -> Self {
        RegistrySection {
            delete_enabled: true,
            upload_ttl_secs: 24 * 3600,
            max_manifest_bytes: berth_oci::manifest::MAX_MANIFEST_BYTES,
            max_page_size: 1000,
            immutable_tags: Vec::new(),
            quotas: Vec::new(),
            retention: Vec::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: "text".into() }
    }
}

/// One line of documentation per setting, printed by `berth config defaults`.
const DOCS: &[(&str, &str, &str)] = &[
    ("server", "listen", "Address and port to listen on."),
    ("server", "shutdown_timeout_secs", "On SIGTERM/SIGINT, how long in-flight requests may take to finish."),
    ("server", "header_read_timeout_secs", "Close connections that do not send request headers within this time."),
    ("server", "body_idle_timeout_secs", "Abort a request whose body stalls (no bytes) for this long."),
    ("server", "metrics", "Serve Prometheus metrics at /metrics."),
    ("storage", "data_dir", "Directory for blobs (blobs/), uploads (uploads/) and metadata (metadata.db)."),
    ("registry", "delete_enabled", "Allow DELETE of manifests, tags and blobs (405 UNSUPPORTED when false)."),
    ("registry", "upload_ttl_secs", "Upload sessions idle this long are removed with their data."),
    ("registry", "max_manifest_bytes", "Largest manifest accepted (413 beyond)."),
    ("registry", "max_page_size", "Most tags or repositories returned per page (clients follow the Link header)."),
    ("registry", "immutable_tags", "Tags that cannot be overwritten or deleted once pushed (403 DENIED). Example:\n# [[registry.immutable_tags]]\n# repositories = [\"prod/**\"]\n# tags = [\"v\\\\d+\\\\..*\"]          # regular expressions, matched against the whole tag"),
    ("registry", "quotas", "Byte limits on the distinct blobs linked in matching repositories; a push beyond is refused (403 DENIED). Example:\n# [[registry.quotas]]\n# repositories = \"team/**\"\n# max_bytes = 10737418240"),
    ("registry", "retention", "Tags removed by garbage collection; the first matching policy applies. Example:\n# [[registry.retention]]\n# repositories = [\"ci/**\"]\n# keep_last = 10                   # the newest N tags stay\n# keep_tags = [\"release-.*\"]       # tags matching stay\n# delete_older_than_days = 30      # only older tags go"),
    ("gc", "interval_secs", "Run garbage collection this often while serving (0: only on demand, `berth gc`)."),
    ("gc", "grace_secs", "Blobs pushed, mounted or read (HEAD/GET) in a repository this recently are never collected there."),
    ("gc", "untagged_after_secs", "Collect manifests no tag reaches (directly, as index child or as referrer of a kept subject) once this old; 0: keep them."),
    ("gc", "dry_run", "Scheduled runs only log what they would remove."),
    ("gc", "delete_referrers_with_subject", "Deleting a manifest (API or collection) also deletes its referrers (signatures, SBOMs)."),
    ("auth", "mode", "Authentication: none (open registry), basic (htpasswd users), or token (Docker token protocol; Basic also accepted)."),
    ("auth", "htpasswd", "htpasswd file with bcrypt hashes (`berth user add NAME --file F` or `htpasswd -B`)."),
    ("auth", "realm", "Realm named in Basic challenges."),
    ("auth", "max_failures_per_minute", "Failed logins allowed per user and per client address each minute (then 429)."),
    ("auth", "groups", "Groups: name = [\"user\", ...]."),
    ("auth", "rules", "Access rules; deny unless one allows. Example:\n# [[auth.rules]]\n# repositories = [\"public/**\"]   # globs: * within a component, ** across, {user} = caller\n# actions = [\"pull\"]               # pull, push, delete, admin (all)\n# anonymous = true                # also: users = [\"alice\", \"*\"], groups = [\"ci\"]"),
    ("auth.token", "issuer", "`iss` of issued tokens."),
    ("auth.token", "service", "`aud` of issued tokens and `service` in challenges."),
    ("auth.token", "ttl_secs", "Lifetime of access tokens."),
    ("auth.token", "refresh_ttl_secs", "Lifetime of refresh tokens (kept by `docker login`)."),
    ("auth.token", "signing_key", "PEM P-256 private key; generated as DATA_DIR/auth/token-signing-key.pem when empty."),
    ("auth.token", "realm", "Token endpoint URL in challenges; derived from the request's Host when empty."),
    ("auth.token", "trusted_issuers", "External token servers: [{ issuer = \"...\", public_key = \"key.pem\" }]."),
    ("tls", "cert", "PEM certificate chain; TLS is on when cert and key are set (`berth tls self-signed` makes a pair)."),
    ("tls", "key", "PEM private key."),
    ("tls", "client_ca", "PEM CA bundle: require client certificates signed by it (mTLS)."),
    ("tls", "client_auth", "With client_ca: required or optional."),
    ("tls", "reload_interval_secs", "How often certificate files are checked; changed files are reloaded without restart."),
    ("encryption", "key_file", "Encrypt blobs and manifests at rest with this key (base64, 32 bytes; `berth encryption new-key`). Off when empty."),
    ("encryption", "key", "The key itself, base64: set it as BERTH_ENCRYPTION_KEY rather than in a file you share."),
    ("encryption", "previous_key_files", "Earlier keys: data sealed with them is re-encrypted with the current key in the background."),
    ("backup", "schedule", "Scheduled backups: a cron expression (5 fields, or 6 with seconds first), e.g. \"0 3 * * *\". Off when empty."),
    ("backup", "repo", "Backup repository directory (created with `berth backup init --repo DIR`)."),
    ("backup", "password_file", "File whose first line is the backup repository's password."),
    ("backup", "key_file", "Key file that unlocks the backup repository (instead of password_file)."),
    ("backup", "keep_last", "After each scheduled backup keep the newest N snapshots (0: rule off; all keep_* 0: keep everything)."),
    ("backup", "keep_hourly", "Keep the newest snapshot of each of the last N hours that have one."),
    ("backup", "keep_daily", "Keep the newest snapshot of each of the last N days that have one."),
    ("backup", "keep_weekly", "Keep the newest snapshot of each of the last N ISO weeks that have one."),
    ("backup", "keep_monthly", "Keep the newest snapshot of each of the last N months that have one."),
    ("backup", "prune", "After forgetting snapshots, delete backup data no remaining snapshot needs."),
    ("signatures", "keys", "Trusted public keys for cosign signatures and sigstore bundles: name = \"PEM file\" (ECDSA P-256/P-384, Ed25519, RSA; `berth keys generate` makes a pair). Example:\n# [signatures.keys]\n# release = \"/etc/berth/keys/release.pub\""),
    ("signatures", "trust_stores", "CA certificate bundles for Notary Project (notation) signatures: name = \"PEM file\". Example:\n# [signatures.trust_stores]\n# acme = \"/etc/berth/notation/acme-ca.pem\""),
    ("signatures", "cache_entries", "Most signature verdicts kept in memory (keyed by manifest, trusted set and signature digests, so never stale)."),
    ("signatures", "policies", "Verification by repository glob; the first match applies. verify: enforce (403 DENIED for manifests without a valid signature), warn (serve, log a warning) or off. Example:\n# [[signatures.policies]]\n# repositories = [\"prod/**\"]\n# verify = \"enforce\"\n# keys = [\"release\"]              # default: every key\n# trust_stores = [\"acme\"]         # default: every store\n# require_signed_tags = false      # true: tags may only point at signed content"),
    ("log", "level", "Log filter: error, warn, info, debug, trace, or a tracing directive list."),
    ("log", "format", "Log format: text or json."),
];

impl Config {
    /// Loads from an optional file, then applies environment overrides.
    pub fn load(file: Option<&std::path::Path>) -> anyhow::Result<Config> {
        let mut value = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let _: Config = parse_text(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
                toml::from_str::<toml::Table>(&text)?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut value, std::env::vars())?;
        let config: Config = toml::Value::Table(value).try_into().map_err(|e: toml::de::Error| anyhow!("{e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Semantic checks that types alone do not catch.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.server
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| anyhow!("server.listen: {:?} is not an address:port ({e})", self.server.listen))?;
        // A bare word must be a level: tracing would take a typo ("inof")
        // for a target name and silently log nothing, audit lines included.
        let level = self.log.level.trim();
        if !level.contains(['=', ',', ':']) && !matches!(level, "error" | "warn" | "info" | "debug" | "trace" | "off") {
            bail!("log.level: {level:?} is not error, warn, info, debug, trace or off (or a directive list such as \"info,berth::access=warn\")");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!("log.format: must be \"text\" or \"json\", not {:?}", self.log.format);
        }
        if self.registry.max_page_size == 0 {
            bail!("registry.max_page_size: must be at least 1");
        }
        if self.registry.max_manifest_bytes < 1024 {
            bail!("registry.max_manifest_bytes: must be at least 1024");
        }
        self.policies()?;
        self.signature_settings()?;
        self.tls.validate()?;
        self.backup.validate()?;
        if self.storage.data_dir.as_os_str().is_empty() {
            bail!("storage.data_dir: must not be empty");
        }
        Ok(())
    }

    /// Registry policies (garbage collection, immutable tags, quotas,
    /// retention), with patterns compiled.
    pub fn policies(&self) -> anyhow::Result<berth_registry::Policies> {
        use berth_registry::policy::{self, GcSettings, ImmutableRule, Quota, RetentionPolicy};
        use std::time::Duration;
        let regexes = |what: &str, list: &[String]| -> anyhow::Result<Vec<policy::Regex>> {
            list.iter().map(|t| policy::tag_regex(t).map_err(|e| anyhow!("{what}: {e}"))).collect()
        };
        let mut immutable_tags = Vec::new();
        for r in &self.registry.immutable_tags {
            immutable_tags.push(ImmutableRule {
                repositories: r.repositories.clone(),
                tags: regexes("registry.immutable_tags.tags", &r.tags)?,
            });
        }
        let mut retention = Vec::new();
        for r in &self.registry.retention {
            if r.keep_last.is_none() && r.delete_older_than_days.is_none() {
                bail!("registry.retention: set keep_last, delete_older_than_days or both (for {:?})", r.repositories);
            }
            retention.push(RetentionPolicy {
                repositories: r.repositories.clone(),
                keep_last: r.keep_last,
                keep_tags: regexes("registry.retention.keep_tags", &r.keep_tags)?,
                older_than: r.delete_older_than_days.map(|d| Duration::from_secs(d * 86400)),
            });
        }
        Ok(berth_registry::Policies {
            gc: GcSettings {
                grace: Duration::from_secs(self.gc.grace_secs),
                untagged_after: (self.gc.untagged_after_secs > 0).then(|| Duration::from_secs(self.gc.untagged_after_secs)),
                delete_referrers_with_subject: self.gc.delete_referrers_with_subject,
            },
            immutable_tags,
            quotas: self.registry.quotas.iter().map(|q| Quota { repositories: q.repositories.clone(), max_bytes: q.max_bytes }).collect(),
            retention,
        })
    }

    /// Signature policies with keys and trust stores read from their files.
    pub fn signature_settings(&self) -> anyhow::Result<berth_registry::SignatureSettings> {
        use berth_registry::{SignaturePolicy, SignatureSettings, VerifyMode};
        use berth_sign::{PublicKey, Trust, TrustStore};
        use std::sync::Arc;
        let section = &self.signatures;
        let mut keys = Vec::new();
        for (name, path) in &section.keys {
            let text = std::fs::read(path).with_context(|| format!("signatures.keys.{name}: reading {}", path.display()))?;
            let key = PublicKey::from_pem(name, &text)
                .map_err(|e| anyhow!("signatures.keys.{name}: {}: {e}", path.display()))?;
            keys.push(key);
        }
        let mut stores = Vec::new();
        for (name, path) in &section.trust_stores {
            let text = std::fs::read(path).with_context(|| format!("signatures.trust_stores.{name}: reading {}", path.display()))?;
            let store = TrustStore::from_pem(name, &text)
                .map_err(|e| anyhow!("signatures.trust_stores.{name}: {}: {e}", path.display()))?;
            stores.push(store);
        }
        let mut policies = Vec::new();
        for rule in &section.policies {
            let mode = match rule.verify.as_str() {
                "enforce" => VerifyMode::Enforce,
                "warn" => VerifyMode::Warn,
                "off" => VerifyMode::Off,
                other => bail!("signatures.policies.verify: must be \"enforce\", \"warn\" or \"off\", not {other:?}"),
            };
            for name in &rule.keys {
                if !section.keys.contains_key(name) {
                    bail!("signatures.policies.keys: {name:?} is not a key under [signatures.keys]");
                }
            }
            for name in &rule.trust_stores {
                if !section.trust_stores.contains_key(name) {
                    bail!("signatures.policies.trust_stores: {name:?} is not a store under [signatures.trust_stores]");
                }
            }
            if rule.repositories.is_empty() {
                bail!("signatures.policies.repositories: name at least one repository glob");
            }
            let trust = Trust {
                keys: keys.iter().filter(|k| rule.keys.is_empty() || rule.keys.contains(&k.name)).cloned().collect(),
                stores: stores.iter().filter(|s| rule.trust_stores.is_empty() || rule.trust_stores.contains(&s.name)).cloned().collect(),
            };
            if mode == VerifyMode::Enforce && trust.keys.is_empty() && trust.stores.is_empty() {
                bail!("signatures.policies: verify = \"enforce\" for {:?} but no key or trust store is configured", rule.repositories);
            }
            policies.push(SignaturePolicy {
                repositories: rule.repositories.clone(),
                mode,
                trust: Arc::new(trust),
                require_signed_tags: rule.require_signed_tags,
            });
        }
        Ok(SignatureSettings { policies, all: Arc::new(Trust { keys, stores }), cache_entries: section.cache_entries })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen.parse().expect("validated")
    }

    /// The defaults as a commented TOML document.
    pub fn defaults_toml() -> String {
        let value = toml::Value::try_from(Config::default()).expect("defaults serialize");
        let mut out = String::from(
            "# Berth configuration. Every setting can also be given as an environment\n\
             # variable BERTH_<SECTION>_<KEY>, e.g. BERTH_SERVER_LISTEN=0.0.0.0:5000.\n",
        );
        for (section, entries) in value.as_table().expect("table") {
            render_section(&mut out, section, entries.as_table().expect("section table"));
        }
        out
    }
}

fn doc_for(section: &str, key: &str) -> &'static str {
    DOCS.iter().find(|(s, k, _)| *s == section && *k == key).map(|(_, _, d)| *d).unwrap_or("")
}

fn render_section(out: &mut String, name: &str, table: &toml::Table) {
    out.push_str(&format!("\n[{name}]\n"));
    let mut nested = Vec::new();
    for (key, v) in table {
        if let toml::Value::Table(t) = v {
            if !t.is_empty() || name.contains('.') {
                nested.push((key, t));
                continue;
            }
        }
        for line in doc_for(name, key).lines() {
            let line = line.strip_prefix("# ").unwrap_or(line);
            out.push_str(&format!("# {line}\n"));
        }
        out.push_str(&format!("{key} = {v}\n"));
    }
    for (key, t) in nested {
        render_section(out, &format!("{name}.{key}"), t);
    }
}

/// Parses TOML text into a config, with line/column and key in errors.
pub fn parse_text(text: &str) -> Result<Config, String> {
    match toml::from_str::<Config>(text) {
        Ok(c) => {
            c.validate().map_err(|e| {
                let msg = e.to_string();
                match msg.split_once(':').and_then(|(key, _)| line_of_key(text, key)) {
                    Some(line) => format!("line {line}: {msg}"),
                    None => msg,
                }
            })?;
            Ok(c)
        }
        Err(e) => Err(describe_toml_error(text, &e)),
    }
}

/// The line (1-based) where a dotted key such as `registry.max_page_size`
/// or `registry.immutable_tags.tags` is set in `text`, for errors found
/// after parsing; the first such line when a table array repeats it.
fn line_of_key(text: &str, dotted: &str) -> Option<usize> {
    let dotted = dotted.trim();
    if dotted.is_empty() || dotted.contains(char::is_whitespace) {
        return None;
    }
    let mut section = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            section = header.trim_start_matches('[').split(']').next().unwrap_or("").trim().to_string();
            continue;
        }
        let Some((key, _)) = line.split_once('=') else { continue };
        let key = key.trim().trim_matches('"');
        let full = if section.is_empty() { key.to_string() } else { format!("{section}.{key}") };
        if full == dotted {
            return Some(i + 1);
        }
    }
    None
}

fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let col = span.start - text[..span.start.min(text.len())].rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            // Only the key: the value may be a secret (encryption.key).
            let snippet = text.lines().nth(line - 1).unwrap_or("").trim();
            let snippet = match snippet.split_once('=') {
                Some((key, _)) => format!("{} = …", key.trim()),
                None => snippet.to_string(),
            };
            format!("line {line}, column {col}: {msg} (at `{snippet}`)")
        }
        None => msg,
    }
}

/// Variables named `BERTH_…` that are read elsewhere, not settings.
const NON_SETTING_VARS: &[&str] = &[
    "BERTH_CONFIG",
    "BERTH_PASSWORD",
    "BERTH_BACKUP_PASSWORD",
    "BERTH_BACKUP_TIME",
    "BERTH_BACKUP_ARGON2_MEMORY_KIB",
    "BERTH_BACKUP_ARGON2_PASSES",
    "BERTH_RESTORE_USERNAME",
    "BERTH_RESTORE_PASSWORD",
];

/// Applies `BERTH_<SECTION>_<KEY>` variables (`BERTH_AUTH_TOKEN_TTL_SECS`
/// for `auth.token.ttl_secs`) onto a TOML table, typed like the defaults so
/// `BERTH_REGISTRY_DELETE_ENABLED=false` is a boolean. A `BERTH_` variable
/// that names no setting is an error, as an unknown key in the file is.
fn apply_env(table: &mut toml::Table, vars: impl Iterator<Item = (String, String)>) -> anyhow::Result<()> {
    let defaults = toml::Value::try_from(Config::default())?;
    let env_name = |section: &str, key: &str| format!("BERTH_{}_{}", section.replace('.', "_"), key).to_ascii_uppercase();
    for (name, raw) in vars {
        // BERTH_TEST_*: the test suite's own switches, passed down to servers.
        if !name.starts_with("BERTH_") || name.starts_with("BERTH_TEST_") || NON_SETTING_VARS.contains(&name.as_str()) {
            continue;
        }
        let Some((section, key, _)) = DOCS.iter().find(|(section, key, _)| env_name(section, key) == name) else {
            bail!("{name}: no such setting (variables are BERTH_<SECTION>_<KEY>, e.g. BERTH_SERVER_LISTEN; see `berth config defaults`)");
        };
        let path: Vec<&str> = section.split('.').collect();
        let default = path.iter().try_fold(&defaults, |v, p| v.get(p)).and_then(|t| t.get(key));
        let value = match default {
            Some(toml::Value::Boolean(_)) => toml::Value::Boolean(match raw.as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => bail!("{name}: expected a boolean, got {raw:?}"),
            }),
            Some(toml::Value::Integer(_)) => {
                toml::Value::Integer(raw.parse().map_err(|_| anyhow!("{name}: expected an integer, got {raw:?}"))?)
            }
            Some(toml::Value::Array(_) | toml::Value::Table(_)) => {
                bail!("{name}: {section}.{key} is a list or table: set it in the configuration file")
            }
            _ => toml::Value::String(raw),
        };
        let mut target = &mut *table;
        for p in path {
            target = target
                .entry(p)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| anyhow!("{name}: {section} is not a table"))?;
        }
        target.insert(key.to_string(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_are_documented() {
        let text = Config::defaults_toml();
        assert_eq!(parse_text(&text).unwrap(), Config::default());
        let value = toml::Value::try_from(Config::default()).unwrap();
        fn walk(prefix: &str, t: &toml::Table, count: &mut usize) {
            for (key, v) in t {
                match v {
                    toml::Value::Table(inner) if !inner.is_empty() => walk(&format!("{prefix}.{key}"), inner, count),
                    _ => {
                        assert!(!doc_for(prefix, key).is_empty(), "{prefix}.{key} undocumented");
                        *count += 1;
                    }
                }
            }
        }
        let mut count = 0;
        for (section, entries) in value.as_table().unwrap() {
            walk(section, entries.as_table().unwrap(), &mut count);
        }
        assert_eq!(count, DOCS.len());
    }

    #[test]
    fn errors_name_line_and_key() {
        let err = parse_text("[server]\nlisten = \"x:1\"\n").unwrap_err();
        assert!(err.contains("server.listen"), "{err}");
        let err = parse_text("[registry]\n\ndelete_enabled = \"maybe\"\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        let err = parse_text("[registry]\nbogus = 1\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("bogus"), "{err}");
    }

    #[test]
    fn env_overrides_are_typed() {
        let mut t = toml::Table::new();
        let vars = vec![
            ("BERTH_REGISTRY_DELETE_ENABLED".to_string(), "false".to_string()),
            ("BERTH_SERVER_LISTEN".to_string(), "0.0.0.0:1".to_string()),
            ("BERTH_REGISTRY_UPLOAD_TTL_SECS".to_string(), "5".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        apply_env(&mut t, vars.into_iter()).unwrap();
        let c: Config = toml::Value::Table(t).try_into().unwrap();
        assert!(!c.registry.delete_enabled);
        assert_eq!(c.server.listen, "0.0.0.0:1");
        assert_eq!(c.registry.upload_ttl_secs, 5);
        let mut t = toml::Table::new();
        assert!(apply_env(&mut t, vec![("BERTH_SERVER_METRICS".into(), "perhaps".into())].into_iter()).is_err());
        let err = parse_text("[encryption]\nkey = \"c2VjcmV0\" x\n").unwrap_err();
        assert!(err.contains("line 2") && !err.contains("c2VjcmV0"), "{err}");
        assert!(parse_text("[log]\nlevel = \"inof\"\n").unwrap_err().contains("log.level"));
        parse_text("[log]\nlevel = \"info,berth::access=warn\"\n").unwrap();
        let err = parse_text("[server]\nlisten = \"x\"\n").unwrap_err();
        assert!(err.starts_with("line 2: server.listen"), "{err}");
        let err = parse_text("[log]\nlevel = \"info\"\n\nformat = \"xml\"\n").unwrap_err();
        assert!(err.starts_with("line 4: log.format"), "{err}");
        let err = apply_env(&mut t, vec![("BERTH_REGISTRY_MAX_PAGE_SIZ".into(), "3".into())].into_iter()).unwrap_err();
        assert!(err.to_string().contains("no such setting"), "{err}");
        assert!(apply_env(&mut t, vec![("BERTH_REGISTRY_QUOTAS".into(), "x".into())].into_iter()).is_err());
        apply_env(&mut t, vec![("BERTH_CONFIG".into(), "x.toml".into()), ("BERTH_PASSWORD".into(), "pw".into())].into_iter()).unwrap();
        let mut nested = toml::Table::new();
        apply_env(&mut nested, vec![("BERTH_AUTH_TOKEN_TTL_SECS".into(), "60".into())].into_iter()).unwrap();
        assert_eq!(nested["auth"]["token"]["ttl_secs"].as_integer(), Some(60));
    }
}
