//! The search index, kept in the same transactions as the rows it
//! describes: one full-text document per repository (name, tags, and the
//! titles, descriptions, labels and platforms of its tagged manifests and
//! their index children), label and platform filter tables, pull counters.
//!
//! Triggers on `tags` and `manifests` record which repositories changed in
//! `search_dirty`; `reindex_dirty` rebuilds their entries before the
//! writing transaction commits. Whatever deletes or tags manifests, the
//! index cannot disagree with what is stored, even after a crash.

use crate::{PullCount, RepoFilter, RepositoryInfo, SearchFields, SearchHit, SearchPage, SearchQuery, TagDetail};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{BTreeSet, HashSet};

/// Longest full-text body kept per repository.
const MAX_BODY: usize = 64 * 1024;
/// Tags reported with each hit.
const HIT_TAGS: usize = 10;

const KEY_END: char = '\u{1f}';
const PAIR_END: char = '\u{1e}';

fn clean(s: &str) -> String {
    s.chars().filter(|c| *c != KEY_END && *c != PAIR_END).collect()
}

fn encode_labels(labels: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in labels {
        out.push_str(&clean(k));
        out.push(KEY_END);
        out.push_str(&clean(v));
        out.push(PAIR_END);
    }
    out
}

fn decode_labels(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split(PAIR_END).filter_map(|p| p.split_once(KEY_END))
}

/// Stores what search keeps of one manifest. With encryption at rest only
/// platforms are kept: titles, descriptions and labels come from sealed
/// content and must not be readable on disk.
pub(crate) fn put_fields(tx: &Connection, repo_id: i64, digest: &str, f: &SearchFields, encrypted: bool) -> rusqlite::Result<()> {
    let platforms = f.platforms.join(" ");
    let (title, description, labels, created) = if encrypted {
        (None, None, None, None)
    } else {
        (f.title.as_deref(), f.description.as_deref(), Some(encode_labels(&f.labels)), f.created.as_deref())
    };
    tx.execute(
        "INSERT OR REPLACE INTO search_manifests(repo_id, digest, title, description, labels, platforms, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![repo_id, digest, title, description, labels, platforms, created],
    )?;
    Ok(())
}

/// Rebuilds the entries of every repository marked as changed.
pub(crate) fn reindex_dirty(tx: &Connection) -> rusqlite::Result<()> {
    let ids: Vec<i64> = {
        let mut stmt = tx.prepare_cached("SELECT repo_id FROM search_dirty")?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        ids
    };
    if ids.is_empty() {
        return Ok(());
    }
    for id in ids {
        reindex(tx, id)?;
    }
    tx.execute("DELETE FROM search_dirty", [])?;
    Ok(())
}

fn reindex(tx: &Connection, id: i64) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM search_docs WHERE rowid = ?1", [id])?;
    tx.execute("DELETE FROM search_labels WHERE repo_id = ?1", [id])?;
    tx.execute("DELETE FROM search_platforms WHERE repo_id = ?1", [id])?;
    tx.execute("DELETE FROM search_repos WHERE repo_id = ?1", [id])?;
    // Listed like the catalog: while the repository holds a manifest.
    let row: Option<(String, i64)> = tx
        .query_row(
            "SELECT r.name, (SELECT COALESCE(MAX(created_at), 0) FROM manifests WHERE repo_id = r.id)
             FROM repositories r WHERE r.id = ?1 AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id)",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((name, mut updated_at)) = row else { return Ok(()) };
    let mut tags = Vec::new();
    {
        let mut stmt = tx.prepare_cached("SELECT name, updated_at FROM tags WHERE repo_id = ?1 ORDER BY updated_at DESC, name")?;
        let mut rows = stmt.query([id])?;
        while let Some(r) = rows.next()? {
            tags.push(r.get::<_, String>(0)?);
            updated_at = updated_at.max(r.get(1)?);
        }
    }
    // Tagged manifests and the children of tagged indexes, newest first.
    let mut stmt = tx.prepare_cached(
        "WITH live(digest, at) AS (
             SELECT digest, MAX(updated_at) FROM tags WHERE repo_id = ?1 GROUP BY digest
             UNION ALL
             SELECT mr.target, t.updated_at FROM manifest_refs mr
             JOIN tags t ON t.repo_id = mr.repo_id AND t.digest = mr.manifest
             WHERE mr.repo_id = ?1 AND mr.kind = 1)
         SELECT s.title, s.description, s.labels, s.platforms FROM live l
         JOIN search_manifests s ON s.repo_id = ?1 AND s.digest = l.digest
         ORDER BY l.at DESC",
    )?;
    let mut rows = stmt.query([id])?;
    let mut description: Option<String> = None;
    let mut title: Option<String> = None;
    let mut text: BTreeSet<String> = BTreeSet::new();
    let mut labels: BTreeSet<(String, String)> = BTreeSet::new();
    let mut platforms: BTreeSet<String> = BTreeSet::new();
    while let Some(r) = rows.next()? {
        let t: Option<String> = r.get(0)?;
        let d: Option<String> = r.get(1)?;
        let l: Option<String> = r.get(2)?;
        let p: Option<String> = r.get(3)?;
        if let Some(t) = t.filter(|t| !t.is_empty()) {
            title.get_or_insert_with(|| t.clone());
            text.insert(t);
        }
        if let Some(d) = d.filter(|d| !d.is_empty()) {
            description.get_or_insert_with(|| d.clone());
            text.insert(d);
        }
        for (k, v) in decode_labels(l.as_deref().unwrap_or("")) {
            text.insert(format!("{k}={v}"));
            labels.insert((k.to_string(), v.to_string()));
        }
        for p in p.as_deref().unwrap_or("").split_whitespace() {
            text.insert(p.to_string());
            platforms.insert(p.to_string());
        }
    }
    let mut body = String::new();
    for t in &text {
        if body.len() + t.len() + 1 > MAX_BODY {
            break;
        }
        body.push_str(t);
        body.push('\n');
    }
    tx.execute(
        "INSERT INTO search_docs(rowid, name, tags, body) VALUES (?1, ?2, ?3, ?4)",
        params![id, name, tags.join(" "), body],
    )?;
    let platform_list: Vec<&str> = platforms.iter().map(String::as_str).collect();
    tx.execute(
        "INSERT INTO search_repos(repo_id, name, tags, description, platforms, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, name, tags.join(" "), description.or(title), platform_list.join(" "), updated_at],
    )?;
    let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO search_labels(key, value, repo_id) VALUES (?1, ?2, ?3)")?;
    for (k, v) in &labels {
        ins.execute(params![k, v, id])?;
    }
    let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO search_platforms(platform, repo_id) VALUES (?1, ?2)")?;
    for p in &platforms {
        ins.execute(params![p, id])?;
    }
    Ok(())
}

/// Quotes a term for an FTS5 query: a phrase, which the trigram tokenizer
/// matches as a substring.
fn phrase(t: &str) -> String {
    format!("\"{}\"", t.replace('"', "\"\""))
}

/// Rank of a repository for the main term: 0 exact name (or last path
/// component), 1 prefix of the name or of a component, 2 substring of the
/// name, 3 a tag contains it, 4 it matched other text.
fn rank(name: &str, tags: impl FnOnce() -> String, t: &str) -> u8 {
    if t.is_empty() {
        return 0;
    }
    if name == t || name.strip_suffix(t).is_some_and(|head| head.ends_with('/')) {
        0
    } else if name.starts_with(t) || name.match_indices(t).any(|(i, _)| name[..i].ends_with('/')) {
        1
    } else if name.contains(t) {
        2
    } else if tags().to_lowercase().split_whitespace().any(|tag| tag.contains(t)) {
        3
    } else {
        4
    }
}

/// Repositories passing every label and platform filter (indexed lookups).
fn filtered_ids(c: &Connection, q: &SearchQuery) -> rusqlite::Result<Option<HashSet<i64>>> {
    let mut set: Option<HashSet<i64>> = None;
    let mut narrow = |ids: HashSet<i64>| {
        set = Some(match set.take() {
            None => ids,
            Some(prev) => prev.intersection(&ids).copied().collect(),
        });
    };
    for (k, v) in &q.labels {
        let mut stmt = c.prepare_cached("SELECT repo_id FROM search_labels WHERE key = ?1 AND value = ?2")?;
        let ids = stmt.query_map(params![k, v], |r| r.get(0))?.collect::<rusqlite::Result<HashSet<i64>>>()?;
        narrow(ids);
    }
    for p in &q.platforms {
        // `linux/arm` also matches `linux/arm/v7`: the range after "linux/arm/".
        let mut stmt = c.prepare_cached(
            "SELECT repo_id FROM search_platforms WHERE platform = ?1
             UNION SELECT repo_id FROM search_platforms WHERE platform > ?2 AND platform < ?3",
        )?;
        let ids = stmt
            .query_map(params![p, format!("{p}/"), format!("{p}0")], |r| r.get(0))?
            .collect::<rusqlite::Result<HashSet<i64>>>()?;
        narrow(ids);
    }
    Ok(set)
}

pub(crate) fn search(c: &Connection, q: &SearchQuery, allow: &RepoFilter) -> rusqlite::Result<SearchPage> {
    let filter = filtered_ids(c, q)?;
    if filter.as_ref().is_some_and(|f| f.is_empty()) {
        return Ok(SearchPage::default());
    }
    let main = q.terms.first().cloned().unwrap_or_default();
    let mut args: Vec<Value> = Vec::new();
    let long: Vec<String> = q.terms.iter().filter(|t| t.chars().count() >= 3).map(|t| phrase(t)).collect();
    // The full-text table holds no content: it yields row ids, names come
    // from `search_repos`.
    let mut sql = if long.is_empty() {
        String::from("SELECT s.repo_id, s.name, s.tags FROM search_repos s WHERE 1")
    } else {
        String::from(
            "SELECT s.repo_id, s.name, s.tags FROM search_docs JOIN search_repos s ON s.repo_id = search_docs.rowid WHERE 1",
        )
    };
    // Terms of three characters or more use the trigram index; shorter
    // ones are checked against names and tags row by row.
    if !long.is_empty() {
        args.push(Value::Text(long.join(" AND ")));
        sql.push_str(&format!(" AND search_docs MATCH ?{}", args.len()));
    }
    for short in q.terms.iter().filter(|t| t.chars().count() < 3) {
        args.push(Value::Text(short.clone()));
        let n = args.len();
        sql.push_str(&format!(" AND (instr(s.name, ?{n}) > 0 OR instr(lower(s.tags), ?{n}) > 0)"));
    }
    let mut matched: Vec<(u8, String, i64)> = Vec::new();
    match &filter {
        // Filters alone: look the few repositories up instead of scanning.
        Some(ids) if q.terms.is_empty() => {
            let mut stmt = c.prepare_cached("SELECT name FROM search_repos WHERE repo_id = ?1")?;
            for id in ids {
                if let Some(name) = stmt.query_row([id], |r| r.get::<_, String>(0)).optional()? {
                    if allow(&name) {
                        matched.push((0, name, *id));
                    }
                }
            }
        }
        _ => {
            let mut stmt = c.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
            while let Some(r) = rows.next()? {
                let id: i64 = r.get(0)?;
                if filter.as_ref().is_some_and(|f| !f.contains(&id)) {
                    continue;
                }
                let name: String = r.get(1)?;
                if !allow(&name) {
                    continue;
                }
                let rank = rank(&name, || r.get::<_, String>(2).unwrap_or_default(), &main);
                matched.push((rank, name, id));
            }
        }
    }
    let total = matched.len();
    let end = q.offset.saturating_add(q.limit).min(total);
    if q.offset < end {
        // Only the requested page needs to be in order.
        matched.select_nth_unstable(end - 1);
        matched.truncate(end);
        matched.sort_unstable();
    }
    let mut hits = Vec::new();
    let mut stmt = c.prepare_cached(
        "SELECT tags, description, platforms, updated_at FROM search_repos WHERE repo_id = ?1",
    )?;
    for (rank, name, id) in matched.into_iter().skip(q.offset).take(q.limit) {
        let (tags, description, platforms, updated_at): (String, Option<String>, Option<String>, i64) =
            stmt.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        hits.push(SearchHit {
            name,
            description,
            tags: tags.split_whitespace().take(HIT_TAGS).map(str::to_string).collect(),
            platforms: platforms.unwrap_or_default().split_whitespace().map(str::to_string).collect(),
            rank,
            updated_at,
        });
    }
    Ok(SearchPage { total, hits })
}

pub(crate) fn repository_info(c: &Connection, repo: &str) -> rusqlite::Result<Option<RepositoryInfo>> {
    let row: Option<(i64, i64, Option<String>)> = c
        .query_row(
            "SELECT r.id, r.created_at, s.description FROM repositories r
             LEFT JOIN search_repos s ON s.repo_id = r.id
             WHERE r.name = ?1 AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id)",
            [repo],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((id, created_at, description)) = row else { return Ok(None) };
    let mut stmt = c.prepare_cached(
        "SELECT t.name, t.digest, t.updated_at, m.media_type,
                m.size + (SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN (
                    SELECT target FROM manifest_refs WHERE repo_id = t.repo_id AND kind = 0 AND (manifest = t.digest
                      OR manifest IN (SELECT target FROM manifest_refs WHERE repo_id = t.repo_id AND manifest = t.digest AND kind = 1)))),
                s.platforms, s.created, COALESCE(p.count, 0), p.last_pull
         FROM tags t
         JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest
         LEFT JOIN search_manifests s ON s.repo_id = t.repo_id AND s.digest = t.digest
         LEFT JOIN pulls p ON p.repo_id = t.repo_id AND p.digest = t.digest
         WHERE t.repo_id = ?1 ORDER BY t.updated_at DESC, t.name",
    )?;
    let mut rows = stmt.query([id])?;
    let mut tags = Vec::new();
    while let Some(r) = rows.next()? {
        let Ok(digest) = r.get::<_, String>(1)?.parse() else { continue };
        tags.push(TagDetail {
            name: r.get(0)?,
            digest,
            pushed_at: r.get(2)?,
            media_type: r.get(3)?,
            size: r.get::<_, i64>(4)? as u64,
            platforms: r.get::<_, Option<String>>(5)?.unwrap_or_default().split_whitespace().map(str::to_string).collect(),
            created: r.get(6)?,
            pulls: r.get::<_, i64>(7)? as u64,
            last_pull: r.get(8)?,
        });
    }
    Ok(Some(RepositoryInfo { name: repo.to_string(), description, created_at, tags }))
}

pub(crate) fn record_pulls(tx: &Connection, pulls: &[PullCount]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO pulls(repo_id, digest, count, last_pull)
         SELECT r.id, ?2, ?3, ?4 FROM repositories r WHERE r.name = ?1
           AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id AND m.digest = ?2)
         ON CONFLICT(repo_id, digest) DO UPDATE SET count = count + excluded.count,
           last_pull = MAX(last_pull, excluded.last_pull)",
    )?;
    for p in pulls {
        stmt.execute(params![p.repo, p.digest, p.count as i64, p.last])?;
    }
    Ok(())
}

pub(crate) fn pulls_of(c: &Connection, repo: &str, digest: &str) -> rusqlite::Result<(u64, Option<i64>)> {
    Ok(c.query_row(
        "SELECT p.count, p.last_pull FROM pulls p JOIN repositories r ON r.id = p.repo_id WHERE r.name = ?1 AND p.digest = ?2",
        params![repo, digest],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
    )
    .optional()?
    .unwrap_or((0, None)))
}

#[cfg(test)]
mod tests {
    use crate::{ManifestRecord, MetadataStore, RepoFilter, SearchFields, SearchQuery, SqliteMetadata};
    use berth_oci::{Digest, RepoName, Tag};
    use bytes::Bytes;
    use std::sync::Arc;
    use std::time::Instant;

    fn all() -> RepoFilter {
        Arc::new(|_: &str| true)
    }

    fn query(terms: &[&str]) -> SearchQuery {
        SearchQuery { terms: terms.iter().map(|t| t.to_string()).collect(), limit: 50, ..Default::default() }
    }

    async fn push(db: &SqliteMetadata, repo: &str, tag: &str, fields: SearchFields) -> Digest {
        let body = format!("{repo}:{tag}:{fields:?}").into_bytes();
        let record = ManifestRecord {
            digest: Digest::sha256_of(&body),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            artifact_type: None,
            body: Bytes::from(body),
            subject: None,
            annotations_json: None,
            blobs: vec![],
            children: vec![],
            search: fields,
        };
        let d = record.digest.clone();
        db.put_manifest(&RepoName::parse(repo).unwrap(), record, Some(&Tag::parse(tag).unwrap())).await.unwrap();
        d
    }

    #[tokio::test]
    async fn ranks_filters_and_follows_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteMetadata::open(dir.path().join("m.db")).unwrap();
        push(&db, "web/nginx-proxy", "1", SearchFields::default()).await;
        push(&db, "nginx", "1", SearchFields { platforms: vec!["linux/arm64".into()], ..Default::default() }).await;
        push(&db, "tools/mynginx", "1", SearchFields::default()).await;
        let d = push(
            &db,
            "tools/web",
            "nginx-compat",
            SearchFields {
                description: Some("A small web server".into()),
                labels: vec![("org.opencontainers.image.vendor".into(), "Acme".into())],
                platforms: vec!["linux/amd64".into(), "linux/arm/v7".into()],
                ..Default::default()
            },
        )
        .await;
        let names = |p: crate::SearchPage| p.hits.into_iter().map(|h| h.name).collect::<Vec<_>>();
        let page = db.search(query(&["nginx"]), all()).await.unwrap();
        assert_eq!(page.total, 4);
        assert_eq!(names(page), ["nginx", "web/nginx-proxy", "tools/mynginx", "tools/web"]);
        assert_eq!(names(db.search(query(&["server"]), all()).await.unwrap()), ["tools/web"]);
        let mut q = query(&[]);
        q.labels.push(("org.opencontainers.image.vendor".into(), "Acme".into()));
        assert_eq!(names(db.search(q, all()).await.unwrap()), ["tools/web"]);
        let mut q = query(&[]);
        q.platforms.push("linux/arm".into());
        assert_eq!(names(db.search(q, all()).await.unwrap()), ["tools/web"]);
        let only_tools: RepoFilter = Arc::new(|n: &str| n.starts_with("tools/"));
        let mut q = query(&["nginx"]);
        q.limit = 1;
        q.offset = 1;
        let page = db.search(q, only_tools).await.unwrap();
        assert_eq!((page.total, names(page)), (2, vec!["tools/web".to_string()]));
        // Deleting the tag drops its labels; deleting the manifest drops the repository.
        db.delete_tag(&RepoName::parse("tools/web").unwrap(), &Tag::parse("nginx-compat").unwrap()).await.unwrap();
        assert!(db.search(query(&["server"]), all()).await.unwrap().hits.is_empty());
        db.delete_manifest(&RepoName::parse("tools/web").unwrap(), &d).await.unwrap();
        assert_eq!(db.search(query(&["nginx"]), all()).await.unwrap().total, 3);
        let info = db.repository_info(&RepoName::parse("nginx").unwrap()).await.unwrap().unwrap();
        assert_eq!(info.tags[0].platforms, ["linux/arm64"]);
    }

    /// Search latency on 100,000 repositories:
    /// `cargo test -p berth-meta --release -- --ignored --nocapture search_latency`
    #[tokio::test(flavor = "multi_thread")]
    #[ignore]
    async fn search_latency() {
        for n in [1_000usize, 100_000] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.db");
            drop(SqliteMetadata::open(&path).unwrap());
            let started = Instant::now();
            {
                let mut c = rusqlite::Connection::open(&path).unwrap();
                c.execute_batch("PRAGMA synchronous=OFF").unwrap();
                let tx = c.transaction().unwrap();
                let words = ["nginx", "redis", "postgres", "python", "node", "golang", "alpine", "busybox", "envoy", "grafana"];
                for i in 0..n {
                    let name = format!("team{}/{}-service-{i}", i % 300, words[i % words.len()]);
                    tx.execute("INSERT INTO repositories(id, name, created_at) VALUES (?1, ?2, 0)", rusqlite::params![i as i64 + 1, name]).unwrap();
                    let digest = format!("sha256:{:064x}", i);
                    tx.execute(
                        "INSERT INTO manifests(repo_id, digest, media_type, size, body, created_at) VALUES (?1, ?2, 'x', 2, x'7b7d', 0)",
                        rusqlite::params![i as i64 + 1, digest],
                    )
                    .unwrap();
                    let fields = SearchFields {
                        description: Some(format!("The {} service number {i} of team {}", words[(i / 7) % words.len()], i % 300)),
                        labels: vec![("org.opencontainers.image.version".into(), format!("1.{}", i % 50))],
                        platforms: vec![["linux/amd64", "linux/arm64"][i % 2].to_string()],
                        ..Default::default()
                    };
                    super::put_fields(&tx, i as i64 + 1, &digest, &fields, false).unwrap();
                    for tag in ["latest", "v1"] {
                        tx.execute("INSERT INTO tags(repo_id, name, digest, updated_at) VALUES (?1, ?2, ?3, 0)", rusqlite::params![i as i64 + 1, tag, digest]).unwrap();
                    }
                }
                super::reindex_dirty(&tx).unwrap();
                tx.commit().unwrap();
            }
            eprintln!("{n} repositories indexed in {:?}", started.elapsed());
            let db = SqliteMetadata::open(&path).unwrap();
            let cases: Vec<(&str, SearchQuery)> = vec![
                ("exact name", query(&["team7/busybox-service-7"])),
                ("rare substring", query(&["service-4242"])),
                ("common word (10%)", query(&["redis"])),
                ("every repository", query(&["service"])),
                ("two terms", query(&["grafana", "team12"])),
                ("short term", query(&["x9"])),
                ("description word", query(&["number 777"])),
                ("label filter", SearchQuery { labels: vec![("org.opencontainers.image.version".into(), "1.7".into())], limit: 25, ..Default::default() }),
                ("platform + term", SearchQuery { terms: vec!["envoy".into()], platforms: vec!["linux/arm64".into()], limit: 25, ..Default::default() }),
            ];
            for (what, q) in cases {
                let mut times = Vec::new();
                let mut total = 0;
                for _ in 0..30 {
                    let t = Instant::now();
                    total = db.search(q.clone(), all()).await.unwrap().total;
                    times.push(t.elapsed());
                }
                times.sort();
                eprintln!("{n:>7} repos  {what:<20} matches {total:>6}  p50 {:>8.2?}  p99 {:>8.2?}", times[15], times[29]);
            }
        }
    }
}
