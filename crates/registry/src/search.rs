//! Search, browsing and pull counting in domain terms: what the search
//! index keeps of a pushed manifest (read from the manifest and its image
//! config), query parsing, repository and manifest views for the web
//! interface.

use crate::{now_secs, Registry, RegistryError, Result};
use berth_meta::{PullCount, Referrer, RepoFilter, RepositoryInfo, SearchFields, SearchPage, SearchQuery};
use berth_oci::manifest::{ManifestKind, ParsedManifest};
use berth_oci::{Digest, Reference, RepoName};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest image config read for labels and platform.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Most results per search page.
pub const MAX_SEARCH_PAGE: usize = 100;
/// How often counted pulls are written at most.
const PULL_FLUSH_EVERY: Duration = Duration::from_secs(5);

const CONFIG_TYPES: &[&str] =
    &["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

/// Pulls counted in memory since the last flush.
#[derive(Default)]
pub(crate) struct PullCounter {
    pending: Mutex<(HashMap<(String, String), (u64, i64)>, Option<Instant>)>,
}

/// A parsed search request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedQuery {
    pub terms: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub platforms: Vec<String>,
}

/// Splits `q` into terms and `label:key=value` / `platform:os/arch` filters.
pub fn parse_query(q: &str) -> ParsedQuery {
    let mut out = ParsedQuery::default();
    // Control characters (a NUL would cut SQLite's MATCH text short) are
    // word separators.
    let q: String = q.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    for word in q.split_whitespace().take(16) {
        if let Some(l) = word.strip_prefix("label:") {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            if !k.is_empty() {
                out.labels.push((k.to_string(), v.to_string()));
            }
        } else if let Some(p) = word.strip_prefix("platform:") {
            let p = p.trim_end_matches('/').to_lowercase();
            if !p.is_empty() {
                out.platforms.push(p);
            }
        } else {
            out.terms.push(word.to_lowercase());
        }
    }
    out
}

fn platform_of(os: Option<&str>, arch: Option<&str>, variant: Option<&str>) -> Option<String> {
    let (os, arch) = (os?, arch?);
    if os.is_empty() || arch.is_empty() || os == "unknown" {
        return None;
    }
    Some(match variant.filter(|v| !v.is_empty()) {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    })
}

/// One layer, config or index entry, as shown.
#[derive(Debug, Clone, Serialize)]
pub struct DescriptorView {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    pub platform: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub created: Option<String>,
    pub created_by: Option<String>,
    pub comment: Option<String>,
    pub empty_layer: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReferrerView {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
}

impl From<Referrer> for ReferrerView {
    fn from(r: Referrer) -> Self {
        ReferrerView {
            digest: r.digest.to_string(),
            media_type: r.media_type,
            artifact_type: r.artifact_type,
            size: r.size,
            annotations: r.annotations_json.and_then(|a| serde_json::from_str(&a).ok()).unwrap_or_default(),
        }
    }
}

/// A manifest as the web interface shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestView {
    pub repository: String,
    pub digest: String,
    pub media_type: String,
    pub size: usize,
    pub is_index: bool,
    pub artifact_type: Option<String>,
    pub tags: Vec<String>,
    pub config: Option<DescriptorView>,
    pub layers: Vec<DescriptorView>,
    pub manifests: Vec<DescriptorView>,
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub platform: Option<String>,
    pub created: Option<String>,
    pub history: Vec<HistoryEntry>,
    pub referrers: Vec<ReferrerView>,
    /// Signatures found for this manifest and their verification.
    pub signatures: Option<crate::signatures::SignatureReport>,
    pub subject: Option<String>,
    pub pulls: u64,
    pub last_pull: Option<i64>,
    /// The manifest itself, pretty-printed.
    pub body: String,
}

fn view(d: &berth_oci::manifest::Descriptor) -> DescriptorView {
    let platform = d.platform.as_ref().and_then(|p| {
        platform_of(
            p.get("os").and_then(Value::as_str),
            p.get("architecture").and_then(Value::as_str),
            p.get("variant").and_then(Value::as_str),
        )
    });
    DescriptorView {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size,
        platform,
        annotations: d.annotations.clone().unwrap_or_default(),
    }
}

fn labels_of(config: &Value) -> BTreeMap<String, String> {
    config
        .get("config")
        .and_then(|c| c.get("Labels"))
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

impl Registry {
    /// Reads an image config blob (JSON, at most [`MAX_CONFIG_BYTES`]).
    async fn read_config(&self, parsed: &ParsedManifest) -> Option<Value> {
        let config = parsed.config.as_ref()?;
        if parsed.kind != ManifestKind::Image
            || !CONFIG_TYPES.contains(&config.media_type.as_str())
            || config.size < 0
            || config.size as u64 > MAX_CONFIG_BYTES
        {
            return None;
        }
        let mut stream = self.blobs.read(&config.digest, None).await.ok()?;
        let mut buf = Vec::with_capacity(config.size as usize);
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk.ok()?);
            if buf.len() as u64 > MAX_CONFIG_BYTES {
                return None;
            }
        }
        serde_json::from_slice(&buf).ok()
    }

    /// What the search index keeps of a manifest being pushed.
    pub(crate) async fn search_fields(&self, parsed: &ParsedManifest) -> SearchFields {
        let mut fields = SearchFields::default();
        let mut labels: BTreeMap<String, String> = BTreeMap::new();
        if let Some(config) = self.read_config(parsed).await {
            labels.extend(labels_of(&config));
            let s = |k: &str| config.get(k).and_then(Value::as_str);
            fields.platforms.extend(platform_of(s("os"), s("architecture"), s("variant")));
            fields.created = s("created").map(str::to_string);
        }
        for d in &parsed.manifests {
            if let Some(p) = view(d).platform {
                if !fields.platforms.contains(&p) {
                    fields.platforms.push(p);
                }
            }
        }
        // Annotations win over labels of the same key.
        labels.extend(parsed.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        fields.title = get("org.opencontainers.image.title");
        fields.description = get("org.opencontainers.image.description")
            .or_else(|| get("org.label-schema.description"))
            .or_else(|| get("description"));
        fields.labels = labels.into_iter().filter(|(k, v)| k.len() <= 256 && v.len() <= 4096).take(256).collect();
        fields
    }

    /// Repositories matching `q`, ranked, `page` counted from 1; only
    /// repositories `allow` accepts are counted and returned.
    pub async fn search(&self, q: &str, page: usize, per_page: usize, allow: RepoFilter) -> Result<SearchPage> {
        let parsed = parse_query(q);
        let limit = per_page.clamp(1, MAX_SEARCH_PAGE);
        let query = SearchQuery {
            terms: parsed.terms,
            labels: parsed.labels,
            platforms: parsed.platforms,
            offset: page.max(1).saturating_sub(1).saturating_mul(limit),
            limit,
        };
        Ok(self.meta.search(query, allow).await?)
    }

    /// A repository's tags with sizes, platforms, push and pull times.
    pub async fn repository(&self, repo: &RepoName) -> Result<RepositoryInfo> {
        self.flush_pulls().await?;
        self.meta.repository_info(repo).await?.ok_or(RegistryError::NameUnknown)
    }

    /// A manifest with its config, layers, history, labels and referrers.
    pub async fn manifest_view(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestView> {
        let stored = self.get_manifest(repo, reference).await?;
        let parsed = ParsedManifest::parse(&stored.body, Some(&stored.media_type))
            .or_else(|_| ParsedManifest::parse(&stored.body, None))
            .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
        let config = self.read_config(&parsed).await;
        let s = |k: &str| config.as_ref().and_then(|c| c.get(k)).and_then(Value::as_str);
        let platform = platform_of(s("os"), s("architecture"), s("variant"));
        let created = s("created").map(str::to_string);
        let history = config
            .as_ref()
            .and_then(|c| c.get("history"))
            .and_then(Value::as_array)
            .map(|h| {
                h.iter()
                    .map(|e| {
                        let g = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
                        HistoryEntry {
                            created: g("created"),
                            created_by: g("created_by"),
                            comment: g("comment"),
                            empty_layer: e.get("empty_layer").and_then(Value::as_bool).unwrap_or(false),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let labels = config.as_ref().map(labels_of).unwrap_or_default();
        self.flush_pulls().await?;
        let (pulls, last_pull) = self.meta.pulls_of(repo, &stored.digest).await?;
        let body = serde_json::from_slice::<Value>(&stored.body)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| String::from_utf8_lossy(&stored.body).into_owned());
        Ok(ManifestView {
            repository: repo.to_string(),
            digest: stored.digest.to_string(),
            media_type: stored.media_type,
            size: stored.body.len(),
            is_index: parsed.kind == ManifestKind::Index,
            artifact_type: parsed.artifact_type.clone(),
            tags: self.meta.tags_of(repo, &stored.digest).await?,
            config: parsed.config.as_ref().map(view),
            layers: parsed.layers.iter().map(view).collect(),
            manifests: parsed.manifests.iter().map(view).collect(),
            annotations: parsed.annotations.clone(),
            labels,
            platform,
            created,
            history,
            referrers: self.referrers(repo, &stored.digest, None).await?.into_iter().map(Into::into).collect(),
            signatures: self.signature_report(repo, &stored.digest, &stored.body).await.ok(),
            subject: parsed.subject.as_ref().map(|s| s.digest.to_string()),
            pulls,
            last_pull,
            body,
        })
    }

    /// Counts a pull of `digest` in `repo` in memory; the counts are
    /// written in one batch every few seconds, never once per pull.
    pub fn record_pull(&self, repo: &RepoName, digest: &Digest) {
        let now = now_secs();
        let due = {
            let mut p = self.pulls.pending.lock().unwrap_or_else(|e| e.into_inner());
            let e = p.0.entry((repo.to_string(), digest.to_string())).or_insert((0, now));
            e.0 += 1;
            e.1 = now;
            let since = *p.1.get_or_insert_with(Instant::now);
            since.elapsed() >= PULL_FLUSH_EVERY
        };
        if due {
            let batch = self.take_pulls();
            let meta = self.meta.clone();
            tokio::spawn(async move {
                if let Err(e) = meta.record_pulls(batch).await {
                    tracing::warn!(error = %e, "could not record pull counts");
                }
            });
        }
    }

    fn take_pulls(&self) -> Vec<PullCount> {
        let mut p = self.pulls.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.1 = None;
        p.0.drain().map(|((repo, digest), (count, last))| PullCount { repo, digest, count, last }).collect()
    }

    /// Writes the pulls counted so far (also done periodically, and before
    /// counts are shown).
    pub async fn flush_pulls(&self) -> Result<()> {
        let batch = self.take_pulls();
        Ok(self.meta.record_pulls(batch).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = parse_query("  Nginx label:org.opencontainers.image.vendor=Acme platform:linux/arm64/ alpine");
        assert_eq!(q.terms, ["nginx", "alpine"]);
        assert_eq!(q.labels, [("org.opencontainers.image.vendor".to_string(), "Acme".to_string())]);
        assert_eq!(q.platforms, ["linux/arm64"]);
    }
}
